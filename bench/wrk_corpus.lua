-- wrk script for the closed-loop sweeps (run by bench/wrkrun.py, not by hand).
-- Usage: wrk -s wrk_corpus.lua URL -- BODIES_FILE
-- Cycles through one JSON body per line of BODIES_FILE, counts responses per HTTP
-- status per thread, and prints one JSON line (between markers) from done().

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

bodies = {}
counter = 0
statuses = {}

function init(args)
  local path = args[1]
  local f = assert(io.open(path, "r"))
  for line in f:lines() do
    if #line > 0 then
      bodies[#bodies + 1] = line
    end
  end
  f:close()
  assert(#bodies > 0, "no bodies in " .. path)
  -- Each thread starts at a different place so threads do not send identical batches.
  counter = (tid or 0) * 97
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = bodies[(counter % #bodies) + 1]
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    for status, n in pairs(counts) do
      merged[status] = (merged[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(merged) do
    parts[#parts + 1] = string.format('"%d": %d', status, n)
  end
  local pct = {}
  for _, p in ipairs({50, 75, 90, 99, 99.9}) do
    pct[#pct + 1] = string.format('"%s": %d', tostring(p), latency:percentile(p))
  end
  local e = summary.errors
  io.write("BENCH_WRK_JSON_BEGIN\n")
  io.write(string.format(
    '{"duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "max": %d, "mean": %.1f, "stdev": %.1f, "percentiles": {%s}}, ' ..
    '"statuses": {%s}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(pct, ", "),
    table.concat(parts, ", ")))
  io.write("BENCH_WRK_JSON_END\n")
end
