// Ramping arrival rate in steps, to find the knee: the highest rate whose
// latency still holds. Each step's requests are tagged with the step's rate,
// and each step gets its own thresholds, so the end-of-test summary lists
// the p99 and the failure rate per step: the knee is the last step whose
// thresholds pass (a non-zero exit only means some step was past it).
// `dropped_iterations` growing means k6 ran out of VUs: raise MAX_VUS.
//
//   BASE_URL=http://127.0.0.1:8080 START_RATE=1000 PEAK_RATE=20000 STEPS=10 STEP=20s k6 run benches/k6/ramp.js
//
// Environment (not K6_* names):
//   BASE_URL, URL_PATH, TOKEN, HOST   see lib/target.js
//   START_RATE / PEAK_RATE   first and last step, req/s; default 500 / 10000
//   STEPS                    number of steps, default 8
//   STEP                     how long each step holds its rate, default 15s
//   RAMP                     how long the move to the next rate takes, default 2s
//   VUS / MAX_VUS            default 100 / 5000
//   P99_MS / MAX_ERROR_RATE  per-step thresholds, default 50 / 0.001
import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';
import { env, url, headers } from './lib/target.js';


const start = Number(env('START_RATE', 500));
const peak = Number(env('PEAK_RATE', 10000));
const steps = Math.max(1, Number(env('STEPS', 8)));
const seconds = (d) => {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(d);
  if (!m) throw new Error(`bad duration ${d}`);
  return Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2] || 's'];
};
const step = env('STEP', '15s');
const ramp = env('RAMP', '2s');
const stepS = seconds(step);
const rampS = seconds(ramp);
const rates = Array.from({ length: steps }, (_, i) =>
  Math.round(steps === 1 ? peak : start + ((peak - start) * i) / (steps - 1)));

const thresholds = {};
for (const r of rates) {
  thresholds[`http_req_duration{step:${r}}`] = [`p(99)<${env('P99_MS', 50)}`];
  thresholds[`http_req_failed{step:${r}}`] = [`rate<=${env('MAX_ERROR_RATE', 0.001)}`];
}

export const options = {
  discardResponseBodies: true,
  scenarios: {
    ramp: {
      executor: 'ramping-arrival-rate',
      startRate: start,
      timeUnit: '1s',
      preAllocatedVUs: Number(env('VUS', 100)),
      maxVUs: Number(env('MAX_VUS', 5000)),
      stages: rates.flatMap((r) => [
        { target: r, duration: ramp },
        { target: r, duration: step },
      ]),
    },
  },
  thresholds,
};

export default function () {
  // Which step are we in? Each step is RAMP then STEP long; the ramp towards
  // a step counts as part of it.
  const elapsed = (Date.now() - exec.scenario.startTime) / 1000;
  const i = Math.min(steps - 1, Math.floor(elapsed / (rampS + stepS)));
  const res = http.get(url, { headers, tags: { step: String(rates[i]) } });
  check(res, { 'status is 2xx': (r) => r.status >= 200 && r.status < 300 });
}
