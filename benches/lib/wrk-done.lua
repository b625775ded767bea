-- Appended to every wrk script by benches/compare.sh: one line that the script
-- parses (wrk reports latencies in microseconds; printed here in ms).
done = function(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d secs=%.3f rps=%.1f p50_ms=%.3f p99_ms=%.3f sock_errors=%d non2xx=%d bytes=%d\n",
    summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.connect + e.read + e.write + e.timeout, e.status, summary.bytes))
end
