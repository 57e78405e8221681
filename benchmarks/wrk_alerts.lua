-- wrk script of benchmarks/side_by_side.py: every request POSTs a unique Falco alert (its output text, the
-- deduplication key, carries the thread and request numbers), and done() prints one line of figures.
-- Usage: wrk -s benchmarks/wrk_alerts.lua URL -- HEAD TAIL   (body = HEAD .. "<thread>-<n>" .. TAIL)

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

function init(args)
  head, tail = args[1], args[2]
  sent = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  sent = sent + 1
  return wrk.format(nil, nil, nil, head .. thread_no .. "-" .. sent .. tail)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "wrk_result requests=%d duration_us=%d status_errors=%d connect_errors=%d read_errors=%d "
      .. "write_errors=%d timeouts=%d p50_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
