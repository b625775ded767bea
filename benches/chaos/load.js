// The steady load of the chaos suite (benches/chaos/run.py) and of the soak
// (benches/soak.sh): a constant arrival rate over a mix of the routes of
// benches/chaos/chaos.yaml. Each request carries its own id in its path and
// in X-Request-Id, so the gateway's access log, its warnings and the
// upstreams' logs can be matched to it.
//
// Environment (not K6_* names):
//   BASE_URL   default http://127.0.0.1:18480
//   RATE / DURATION / VUS / MAX_VUS   default 200 / 24s / 50 / 1000
//   MIX        kind:weight,...  default api:45,post:10,rl:20,jwt:25,slow:0
//              api  GET  /api/r/ID      upstream `app` (retries, health checks, breakers)
//              post POST /api/r/ID      1 KiB body, not retried (not idempotent)
//              rl   GET  /rl/r/ID       the Redis rate limit (on_store_error: allow)
//              jwt  GET  /jwt/r/ID      the JWKS-backed JWT policy, tokens from TOKENS
//              slow GET  /slow/r/ID     SLOW_MS long answers, no retries (SIGTERM test)
//   SIZE       response body bytes asked of the upstream, default 1024
//   SLOW_MS    default 1000
//   TOKENS     a JSON file with a list of tokens (benches/chaos/mkkeys.py)
//   RUN        prefix of the request ids, default r
//   LOG        1: one JSON line per request on the console (run with
//              --console-output FILE --log-format raw); fail: only for the
//              requests that did not get a whole 2xx answer; 0: none
//   WINDOW_S   >0: tag requests with their window (win=N, N = seconds since
//              start / WINDOW_S) and report each window's request count,
//              failure rate and latencies in the summary
//   SUMMARY    where handleSummary writes the summary JSON (default: none)
//
// A line: {"i":id,"k":kind,"t":start epoch ms,"d":ms,"s":status,"e":k6 error
// code,"em":k6 error,"c":gateway error code (JSON body),"g":X-Chaos-Target,
// "ok":body length as the upstream meant it (2xx only)}.
import http from 'k6/http';
import exec from 'k6/execution';

const env = (name, dflt) => (__ENV[name] !== undefined && __ENV[name] !== '' ? __ENV[name] : dflt);
const base = env('BASE_URL', 'http://127.0.0.1:18480').replace(/\/$/, '');
const size = Number(env('SIZE', 1024));
const slowMs = Number(env('SLOW_MS', 1000));
const run = env('RUN', 'r');
const log = env('LOG', '1');
const windowS = Number(env('WINDOW_S', 0));
const duration = env('DURATION', '24s');
const tokens = env('TOKENS', '') ? JSON.parse(open(env('TOKENS', ''))) : [];
const postBody = 'p'.repeat(1024);

const mix = [];
let total = 0;
for (const part of env('MIX', 'api:45,post:10,rl:20,jwt:25,slow:0').split(',')) {
  const [kind, w] = part.split(':');
  if (Number(w) > 0) {
    total += Number(w);
    mix.push([kind, total]);
  }
}

function seconds(d) {
  const m = /^(\d+)(ms|s|m|h)$/.exec(d);
  if (!m) return 0;
  return Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2]];
}

const thresholds = {};
if (windowS > 0) {
  const windows = Math.ceil(seconds(duration) / windowS);
  for (let w = 0; w < windows; w++) {
    thresholds[`http_req_duration{win:${w}}`] = ['max>=0'];
    thresholds[`http_reqs{win:${w}}`] = ['count>=0'];
    thresholds[`http_req_failed{win:${w}}`] = ['rate>=0'];
  }
}

export const options = {
  discardResponseBodies: false,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
  thresholds,
  scenarios: {
    load: {
      executor: 'constant-arrival-rate',
      rate: Number(env('RATE', 200)),
      timeUnit: '1s',
      duration,
      preAllocatedVUs: Number(env('VUS', 50)),
      maxVUs: Number(env('MAX_VUS', 1000)),
      gracefulStop: '15s',
    },
  },
};

export default function () {
  const r = Math.random() * total;
  const kind = mix.find(([, upto]) => r < upto)[0];
  const id = `${run}-${exec.vu.idInTest}-${exec.vu.iterationInInstance}`;
  const headers = { 'X-Request-Id': id };
  let method = 'GET';
  let body = null;
  let path;
  switch (kind) {
    case 'post':
      method = 'POST';
      body = postBody;
      headers['Content-Type'] = 'text/plain';
      path = `/api/r/${id}?size=${size}`;
      break;
    case 'rl':
      path = `/rl/r/${id}?size=${size}`;
      break;
    case 'jwt':
      headers.Authorization = `Bearer ${tokens[Math.floor(Math.random() * tokens.length)]}`;
      path = `/jwt/r/${id}?size=${size}`;
      break;
    case 'slow':
      path = `/slow/r/${id}?size=${size}&delay=${slowMs}`;
      break;
    default:
      path = `/api/r/${id}?size=${size}`;
  }
  const tags = { name: kind };
  if (windowS > 0) tags.win = String(Math.floor((Date.now() - exec.scenario.startTime) / 1000 / windowS));
  const t = Date.now();
  const res = http.request(method, base + path, body, { headers, tags, timeout: '15s', responseType: 'text' });
  if (log === '0') return;
  const line = { i: id, k: kind, t, d: Math.round(res.timings.duration), s: res.status };
  if (res.error_code) {
    line.e = res.error_code;
    line.em = res.error;
  }
  if (res.status >= 200 && res.status < 300) {
    const want = res.headers['X-Chaos-Len'];
    line.g = res.headers['X-Chaos-Target'] || null;
    line.ok = want !== undefined && res.body !== null && res.body.length === Number(want);
  } else if (res.status > 0 && res.body && String(res.headers['Content-Type'] || '').startsWith('application/json')) {
    try {
      line.c = JSON.parse(res.body).error;
    } catch (_) {
      line.c = 'unparsable';
    }
  }
  if (log === 'fail' && line.s >= 200 && line.s < 300 && line.ok) return;
  console.log(JSON.stringify(line));
}

export function handleSummary(data) {
  const out = {};
  if (env('SUMMARY', '')) out[env('SUMMARY', '')] = JSON.stringify(data);
  return out;
}
