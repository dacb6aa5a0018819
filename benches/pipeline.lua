-- 16 POSTs written back to back per round trip (HTTP/1.1 pipelining). wrk counts every
-- response, but records one latency sample per batch of 16. Args: BODY_BYTES [PATH] [DEPTH]
package.path = package.path .. ";" .. (debug.getinfo(1, "S").source:match("@(.*/)") or "./") .. "?.lua"
local common = require("common")
local req

function init(args)
  local one = common.build(args)
  -- wrk finds the pipeline depth by counting the requests in this string.
  req = string.rep(one, tonumber(args[3] or "16"))
end

function request()
  return req
end

done = common.done
