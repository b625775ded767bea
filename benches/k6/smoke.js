// Constant arrival rate with pass/fail thresholds: "does it hold RATE req/s
// with a p99 under P99_MS and no more than MAX_ERROR_RATE failures?"
// benches/compare.sh uses it for the p99 scenario (2,000 req/s per proxy).
//
//   BASE_URL=http://127.0.0.1:8080 RATE=2000 DURATION=30s k6 run benches/k6/smoke.js
//
// Environment (not K6_* names: k6 reads those as its own options):
//   BASE_URL        target, default http://127.0.0.1:8080
//   URL_PATH        path (and query) requested, default /
//   RATE            requests per second, default 200
//   DURATION        how long, default 30s
//   VUS / MAX_VUS   pre-allocated / maximum virtual users, default 50 / 1000
//   P99_MS          threshold on the 99th percentile, default 50
//   MAX_ERROR_RATE  threshold on failed requests (non-2xx/3xx or network), default 0.001
//   TOKEN           sent as "Authorization: Bearer TOKEN" when set
//   HOST            Host header when set
import http from 'k6/http';
import { check } from 'k6';
import { env, url, headers, constantRate } from './lib/target.js';


export const options = {
  discardResponseBodies: true,
  scenarios: {
    smoke: constantRate(200, '30s', 50, 1000),
  },
  thresholds: {
    http_req_duration: [`p(99)<${env('P99_MS', 50)}`],
    http_req_failed: [`rate<=${env('MAX_ERROR_RATE', 0.001)}`],
  },
};

export default function () {
  const res = http.get(url, { headers });
  check(res, { 'status is 2xx': (r) => r.status >= 200 && r.status < 300 });
}
