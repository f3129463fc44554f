-- wrk script for tests/bench/http_publish.sh: POST /pub with a fixed payload.
--
--   HTTP_PUB_SIZE   payload bytes (default 64; the body is that many 'x')
--   HTTP_PUB_AUTH   the whole Authorization header value, e.g. "Basic <jwt>" (default none)
--   HTTP_PUB_JSON   file the summary is written to as one JSON line (default: stdout only)
--
-- The URL given to wrk carries the query: /pub?clientid=bench&topic=bench/http&qos=0.

local size = tonumber(os.getenv("HTTP_PUB_SIZE") or "64")
local auth = os.getenv("HTTP_PUB_AUTH")

wrk.method = "POST"
wrk.body = string.rep("x", size)
wrk.headers["Content-Type"] = "application/octet-stream"
if auth ~= nil and auth ~= "" then
   wrk.headers["Authorization"] = auth
end

function done(summary, latency, requests)
   local e = summary.errors
   local line = string.format(
      '{"requests":%d,"duration_us":%d,"bytes":%d,"requests_per_sec":%.1f,' ..
      '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,' ..
      '"timeouts":%d,"latency_us":{"mean":%.1f,"stdev":%.1f,"p50":%d,"p75":%d,"p90":%d,' ..
      '"p99":%d,"p999":%d,"max":%d}}',
      summary.requests, summary.duration, summary.bytes,
      summary.requests / (summary.duration / 1e6),
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.stdev, latency:percentile(50), latency:percentile(75),
      latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max)
   io.write("JSON " .. line .. "\n")
   local path = os.getenv("HTTP_PUB_JSON")
   if path ~= nil and path ~= "" then
      local f = assert(io.open(path, "w"))
      f:write(line .. "\n")
      f:close()
   end
end
