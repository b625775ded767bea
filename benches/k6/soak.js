// Long steady load with thresholds: memory leaks, slow drifts, connection
// churn and periodic stalls show up here rather than in a 30-second run.
// Watch the gateway's RSS and /metrics meanwhile.
//
//   BASE_URL=http://127.0.0.1:8080 RATE=500 DURATION=2h k6 run benches/k6/soak.js
//
// Environment (not K6_* names):
//   BASE_URL, URL_PATH, TOKEN, HOST   as in smoke.js
//   RATE       requests per second, default 300
//   DURATION   default 30m
//   VUS / MAX_VUS   default 50 / 2000
//   P95_MS / P99_MS   latency thresholds, default 25 / 100
//   MAX_ERROR_RATE    default 0.0001
import http from 'k6/http';
import { check } from 'k6';
import { env, url, headers, constantRate } from './lib/target.js';


export const options = {
  discardResponseBodies: true,
  scenarios: {
    soak: constantRate(300, '30m', 50, 2000),
  },
  thresholds: {
    http_req_duration: [`p(95)<${env('P95_MS', 25)}`, `p(99)<${env('P99_MS', 100)}`],
    http_req_failed: [`rate<=${env('MAX_ERROR_RATE', 0.0001)}`],
    // The arrival rate must be kept up: dropped iterations mean the target
    // (or k6) could not keep pace.
    dropped_iterations: ['count==0'],
    checks: [`rate>=${1 - Number(env('MAX_ERROR_RATE', 0.0001))}`],
  },
};

export default function () {
  const res = http.get(url, { headers });
  check(res, { 'status is 2xx': (r) => r.status >= 200 && r.status < 300 });
}
