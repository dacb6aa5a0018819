-- One POST per request on keep-alive connections. Args: BODY_BYTES [PATH]
package.path = package.path .. ";" .. (debug.getinfo(1, "S").source:match("@(.*/)") or "./") .. "?.lua"
local common = require("common")
local req

function init(args)
  req = common.build(args)
end

function request()
  return req
end

done = common.done
