// Steady load while the gateway's config is reloaded again and again; passes
// only if not one request failed. Three scenarios run side by side:
//   load     RATE req/s to BASE_URL + URL_PATH (threshold: 0 failed requests)
//   reload   every RELOAD_EVERY, POST ADMIN_URL/reload (must answer 200)
//   observe  5 times a second, GET BASE_URL + MARKER_PATH and count how often
//            its body changed: proof that the route set really switched
// and, with ADMIN_URL, tollgate_config_reloads_total is read from /metrics
// before and after: at least one successful reload and no failed one.
//
// POST /reload re-reads an unchanged file (it still counts as a reload); for
// the route set to actually change, run it through reload-under-load.sh,
// which rewrites the config file (the marker route's body flips between
// route-set-A and route-set-B) while this script runs; the file watcher picks
// that up as well.
//
//   benches/k6/reload-under-load.sh path/to/tollgate.yaml
//
// Environment (not K6_* names):
//   BASE_URL, URL_PATH, TOKEN, HOST   see lib/target.js
//   RATE           load, req/s, default 500
//   DURATION       default 30s
//   ADMIN_URL      e.g. http://127.0.0.1:9901; unset: no reload scenario, no metrics check
//   RELOAD_EVERY   seconds between POST /reload, default 2
//   MARKER_PATH    path of the marker route, e.g. /__reload_marker; unset: no observe scenario
//   MIN_CHANGES    route-set changes the observer must see, default 2
//   VUS / MAX_VUS  for the load scenario, default 50 / 1000
import http from 'k6/http';
import { check } from 'k6';
import { env, base, url, headers, constantRate } from './lib/target.js';
import { Counter } from 'k6/metrics';

const admin = env('ADMIN_URL', '').replace(/\/$/, '');
const marker = env('MARKER_PATH', '');
const duration = env('DURATION', '30s');

const routeSetChanges = new Counter('route_set_changes');
const reloadsSucceeded = new Counter('config_reloads_succeeded');
const reloadsFailed = new Counter('config_reloads_failed');

const scenarios = {
  load: constantRate(500, '30s', 50, 1000, { exec: 'load' }),
};
const thresholds = {
  'http_req_failed{scenario:load}': ['rate==0'],
  'checks{scenario:load}': ['rate==1'],
};
if (admin) {
  scenarios.reload = {
    executor: 'constant-arrival-rate',
    exec: 'reload',
    rate: 1,
    timeUnit: `${Number(env('RELOAD_EVERY', 2))}s`,
    duration,
    preAllocatedVUs: 1,
    maxVUs: 2,
  };
  thresholds['checks{scenario:reload}'] = ['rate==1'];
  thresholds.config_reloads_succeeded = ['count>=1'];
  thresholds.config_reloads_failed = ['count==0'];
}
if (marker) {
  // One VU, so that "changed" compares consecutive answers.
  scenarios.observe = {
    executor: 'constant-arrival-rate',
    exec: 'observe',
    rate: 5,
    timeUnit: '1s',
    duration,
    preAllocatedVUs: 1,
    maxVUs: 1,
  };
  thresholds['checks{scenario:observe}'] = ['rate==1'];
  thresholds.route_set_changes = [`count>=${Number(env('MIN_CHANGES', 2))}`];
}

export const options = { discardResponseBodies: true, scenarios, thresholds };

function reloadCounts() {
  const res = http.get(`${admin}/metrics`, { responseType: 'text', tags: { name: 'metrics' } });
  const counts = { success: 0, failure: 0 };
  for (const line of (res.body || '').split('\n')) {
    const m = /^tollgate_config_reloads_total\{result="(success|failure)"\}\s+(\S+)/.exec(line);
    if (m) counts[m[1]] = Number(m[2]);
  }
  return counts;
}

export function setup() {
  return admin ? reloadCounts() : null;
}

export function load() {
  const res = http.get(url, { headers });
  check(res, { 'status is 2xx': (r) => r.status >= 200 && r.status < 300 });
}

export function reload() {
  const res = http.post(`${admin}/reload`, null, { responseType: 'text' });
  check(res, { 'POST /reload answered 200': (r) => r.status === 200 });
}

let last = null;
export function observe() {
  const res = http.get(base + marker, { headers, responseType: 'text' });
  check(res, { 'marker route answered 200': (r) => r.status === 200 });
  if (res.status === 200) {
    if (last !== null && res.body !== last) routeSetChanges.add(1);
    last = res.body;
  }
}

export function teardown(before) {
  if (!admin || !before) return;
  const after = reloadCounts();
  reloadsSucceeded.add(after.success - before.success);
  reloadsFailed.add(after.failure - before.failure);
  console.log(`tollgate_config_reloads_total during the test: success +${after.success - before.success}, failure +${after.failure - before.failure}`);
}
