-- One POST per connection: `Connection: close`, so the server closes after answering and
-- wrk reconnects. Measures accept + connection setup/teardown. Args: BODY_BYTES [PATH]
package.path = package.path .. ";" .. (debug.getinfo(1, "S").source:match("@(.*/)") or "./") .. "?.lua"
local common = require("common")
local req

function init(args)
  req = common.build(args, { "Connection", "close" })
end

function request()
  return req
end

done = common.done
