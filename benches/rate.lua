-- A paced load: each connection waits DELAY_MS after every answer before its next POST
-- (wrk's delay() hook), so C connections offer about C x 1000 / (DELAY_MS + latency)
-- requests per second whatever the server could take: the moderate loads most servers
-- run at, where CPU per request is highest. Args: BODY_BYTES PATH DELAY_MS
package.path = package.path .. ";" .. (debug.getinfo(1, "S").source:match("@(.*/)") or "./") .. "?.lua"
local common = require("common")
local req, pause

function init(args)
  req = common.build(args)
  pause = tonumber(args[3] or "10")
end

function request()
  return req
end

function delay()
  return pause
end

done = common.done
