-- Shared by the wrk scripts in benches/: builds the POST and prints one JSON line of
-- results from wrk's done() hook (run.py parses the line starting with "WRKJSON ").
--
-- Script arguments (after `--` on the wrk command line): BODY_BYTES [PATH] [EXTRA_HEADER]
-- e.g.  wrk -t1 -c64 -d5s -s benches/post.lua http://127.0.0.1:19080 -- 256 /topics/bench

local M = {}

function M.build(args, extra_header)
  -- BENCH_RAW_REQUEST=<file>: that file is the whole request as sent (a chunked REST v3
  -- stream, which wrk.format cannot build).
  local raw = os.getenv("BENCH_RAW_REQUEST")
  if raw then
    local f = assert(io.open(raw, "rb"))
    local req = f:read("*a")
    f:close()
    return req
  end
  local size = tonumber(args[1] or "256")
  local path = args[2] or "/"
  local body = string.rep("x", size)
  local headers = {
    ["Content-Type"] = "application/octet-stream",
  }
  -- run.py --gzip: a gzip body it wrote (LuaJIT has no zlib), sent as Content-Encoding.
  local gz = os.getenv("BENCH_GZIP_BODY")
  if gz then
    local f = assert(io.open(gz, "rb"))
    body = f:read("*a")
    f:close()
    headers["Content-Encoding"] = "gzip"
  end
  -- BENCH_BODY_FILE=<file>: that file's bytes as the body (a JSON object, NDJSON lines),
  -- with BENCH_CONTENT_TYPE if set.
  local bf = os.getenv("BENCH_BODY_FILE")
  if bf then
    local f = assert(io.open(bf, "rb"))
    body = f:read("*a")
    f:close()
  end
  local ct = os.getenv("BENCH_CONTENT_TYPE")
  if ct then
    headers["Content-Type"] = ct
  end
  if extra_header then
    headers[extra_header[1]] = extra_header[2]
  end
  -- BENCH_AUTH=<token>: every request carries `Authorization: Bearer <token>` (tenants,
  -- JWT); a server without authentication ignores it, so both sides get the same bytes.
  local auth = os.getenv("BENCH_AUTH")
  if auth then
    headers["Authorization"] = "Bearer " .. auth
  end
  -- BENCH_HEADER="Name: value": one more header (say, one that forward_headers copies).
  local extra = os.getenv("BENCH_HEADER")
  if extra then
    local n, v = extra:match("^([^:]+):%s*(.*)$")
    headers[n] = v
  end
  -- wrk.format adds Host and Content-Length.
  return wrk.format("POST", path, headers, body)
end

-- done() runs once after the run, with every thread's statistics merged.
function M.done(summary, latency, requests)
  local e = summary.errors
  local p = function(q) return latency:percentile(q) end
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,' ..
    '"non_2xx":%d,"lat_mean_us":%.1f,"lat_p50_us":%d,"lat_p90_us":%d,' ..
    '"lat_p99_us":%d,"lat_p999_us":%d,"lat_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency.mean, p(50), p(90), p(99), p(99.9), latency.max))
end

return M
