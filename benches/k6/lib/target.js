// What every script in benches/k6 reads from the environment to reach its
// target (not K6_* names, which k6 takes as its own options):
//   BASE_URL  default http://127.0.0.1:8080
//   URL_PATH  default /
//   TOKEN     sent as "Authorization: Bearer TOKEN" when set
//   HOST      Host header when set

/** The environment variable `name`, or `dflt` when it is unset or empty. */
export const env = (name, dflt) =>
  __ENV[name] !== undefined && __ENV[name] !== '' ? __ENV[name] : dflt;

export const base = env('BASE_URL', 'http://127.0.0.1:8080').replace(/\/$/, '');
export const url = base + env('URL_PATH', '/');

export const headers = {};
if (env('TOKEN', '')) headers.Authorization = `Bearer ${env('TOKEN', '')}`;
if (env('HOST', '')) headers.Host = env('HOST', '');

/**
 * A constant-arrival-rate scenario at RATE req/s for DURATION, with VUS
 * pre-allocated and at most MAX_VUS virtual users; the arguments are the
 * defaults, `extra` is merged in (e.g. `exec`).
 */
export function constantRate(rate, duration, vus, maxVus, extra = {}) {
  return {
    executor: 'constant-arrival-rate',
    rate: Number(env('RATE', rate)),
    timeUnit: '1s',
    duration: env('DURATION', duration),
    preAllocatedVUs: Number(env('VUS', vus)),
    maxVUs: Number(env('MAX_VUS', maxVus)),
    ...extra,
  };
}
