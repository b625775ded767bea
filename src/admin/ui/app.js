// The tollgate dashboard. It reads the admin API every few seconds and draws
// what it says; it sends nothing but GETs. Every value from the API goes into
// the page as text, never as markup.
'use strict';

const params = new URLSearchParams(location.search);
const REFRESH_MS = Math.max(500, Number(params.get('refresh') || 2) * 1000);
const SAMPLES = 60;
const TOKEN_KEY = 'tollgate.admin.token';

// Per route: the previous counter readings and the series drawn from them.
const history = new Map();
let previousAt = null;
let refreshes = 0;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

class Unauthorized extends Error {}

async function get(path, as) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = 'Bearer ' + token;
  const r = await fetch(path, { headers, cache: 'no-store' });
  if (r.status === 401) throw new Unauthorized();
  if (as === 'json-any') return { status: r.status, body: await r.json() };
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return as === 'text' ? r.text() : r.json();
}

// --- Prometheus text format --------------------------------------------------

function parseMetrics(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const brace = line.indexOf('{');
    const space = line.lastIndexOf(' ');
    let name;
    const labels = {};
    if (brace !== -1 && brace < space) {
      name = line.slice(0, brace);
      const end = line.lastIndexOf('}');
      parseLabels(line.slice(brace + 1, end), labels);
    } else {
      name = line.slice(0, line.indexOf(' '));
    }
    const value = Number(line.slice(space + 1));
    samples.push({ name, labels, value });
  }
  return samples;
}

function parseLabels(s, out) {
  let i = 0;
  while (i < s.length) {
    const eq = s.indexOf('=', i);
    if (eq === -1) break;
    const key = s.slice(i, eq).replace(/^[\s,]+/, '');
    let j = eq + 2; // past ="
    let v = '';
    while (j < s.length && s[j] !== '"') {
      if (s[j] === '\\' && j + 1 < s.length) {
        const n = s[j + 1];
        v += n === 'n' ? '\n' : n;
        j += 2;
      } else {
        v += s[j++];
      }
    }
    out[key] = v;
    i = j + 1;
  }
}

// What each route has counted so far, from one scrape.
function routeCounters(samples) {
  const routes = new Map();
  const of = (name) => {
    if (!routes.has(name)) routes.set(name, { requests: 0, errors: 0, limited: 0, buckets: new Map() });
    return routes.get(name);
  };
  for (const s of samples) {
    const route = s.labels.route;
    if (route === undefined) continue;
    if (s.name === 'tollgate_requests_total') {
      const r = of(route);
      r.requests += s.value;
      if (Number(s.labels.status) >= 500) r.errors += s.value;
    } else if (s.name === 'tollgate_rate_limited_total') {
      of(route).limited += s.value;
    } else if (s.name === 'tollgate_request_duration_seconds_bucket') {
      const b = of(route).buckets;
      b.set(s.labels.le, (b.get(s.labels.le) || 0) + s.value);
    }
  }
  return routes;
}

// The 99th percentile of the requests between two scrapes, interpolated
// within its bucket as Prometheus's histogram_quantile does.
function p99(before, after) {
  const bounds = [...after.keys()]
    .map((le) => ({ le, bound: le === '+Inf' ? Infinity : Number(le) }))
    .sort((a, b) => a.bound - b.bound);
  const counts = bounds.map(({ le }) => (after.get(le) || 0) - ((before && before.get(le)) || 0));
  const total = counts.length ? counts[counts.length - 1] : 0;
  if (total <= 0) return null;
  const rank = 0.99 * total;
  for (let i = 0; i < bounds.length; i++) {
    if (counts[i] >= rank) {
      const upper = bounds[i].bound;
      const lower = i === 0 ? 0 : bounds[i - 1].bound;
      const below = i === 0 ? 0 : counts[i - 1];
      if (upper === Infinity) return lower;
      const inBucket = counts[i] - below;
      return inBucket > 0 ? lower + ((upper - lower) * (rank - below)) / inBucket : upper;
    }
  }
  return null;
}

function record(name, now, elapsed) {
  let h = history.get(name);
  if (!h) {
    h = { last: null, rps: [], errors: [], p99: [], limited: [] };
    history.set(name, h);
  }
  const push = (series, v) => {
    series.push(v);
    if (series.length > SAMPLES) series.shift();
  };
  if (h.last && elapsed > 0) {
    const requests = Math.max(0, now.requests - h.last.requests);
    const errors = Math.max(0, now.errors - h.last.errors);
    push(h.rps, requests / elapsed);
    push(h.errors, requests > 0 ? (100 * errors) / requests : 0);
    push(h.p99, p99(h.last.buckets, now.buckets));
    push(h.limited, Math.max(0, now.limited - h.last.limited) / elapsed);
  }
  h.last = now;
  return h;
}

// --- drawing -------------------------------------------------------------------

const SVG = 'http://www.w3.org/2000/svg';

function sparkline(series, format, cls) {
  const w = 120;
  const h = 28;
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  svg.setAttribute('class', 'spark ' + (cls || ''));
  const values = series.filter((v) => v !== null);
  const max = Math.max(...values, 0) || 1;
  const step = w / (SAMPLES - 1);
  const offset = SAMPLES - series.length;
  const points = [];
  series.forEach((v, i) => {
    if (v === null) return;
    points.push(`${((offset + i) * step).toFixed(1)},${(h - 2 - (v / max) * (h - 4)).toFixed(1)}`);
  });
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', points.join(' '));
  svg.append(line);
  const last = series.length ? series[series.length - 1] : null;
  const wrap = el('div', { class: 'metric' }, svg, el('span', { class: 'value' }, last === null ? '–' : format(last)));
  return wrap;
}

const fmtRate = (v) => (v >= 100 ? v.toFixed(0) : v.toFixed(1));
const fmtPct = (v) => v.toFixed(1) + '%';
const fmtSeconds = (v) => (v >= 1 ? v.toFixed(2) + ' s' : (v * 1000).toFixed(v < 0.01 ? 2 : 0) + ' ms');

function describeMatch(m) {
  const parts = [];
  if (m.path) parts.push(`path = ${m.path}`);
  if (m.path_prefix) parts.push(`prefix ${m.path_prefix}`);
  if (m.path_regex) parts.push(`regex ${m.path_regex}`);
  if (m.hosts) parts.push(`host ${m.hosts.join(' | ')}`);
  if (m.methods) parts.push(m.methods.join(' | '));
  for (const [k, v] of Object.entries(m.headers || {})) parts.push(`header ${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`);
  for (const [k, v] of Object.entries(m.query || {})) parts.push(`query ${k}=${v}`);
  for (const [k, v] of Object.entries(m.cookies || {})) parts.push(`cookie ${k}=${v}`);
  return parts;
}

function describePolicies(r) {
  const parts = [];
  for (const a of r.auth || []) parts.push(`auth ${a}`);
  if (r.require_claims) parts.push(`claims ${Object.keys(r.require_claims).join(', ')}`);
  for (const l of r.rate_limit || []) parts.push(`rate limit ${l}`);
  if (r.cors) parts.push(`cors ${r.cors}`);
  if (r.ip_allow) parts.push(`allow ${r.ip_allow.join(', ')}`);
  if (r.ip_deny) parts.push(`deny ${r.ip_deny.join(', ')}`);
  if (r.idempotency) parts.push(`idempotency ${r.idempotency}`);
  if (r.compress) parts.push(`compress ${r.compress.join(', ')}`);
  if (r.mirror) parts.push(`mirror → ${r.mirror.upstream}`);
  return parts;
}

function describeTarget(r) {
  if (r.respond) return `respond ${r.respond.status}`;
  if (r.redirect) return `redirect ${r.redirect.status}`;
  if (typeof r.upstream === 'string') return r.upstream;
  if (r.upstream && r.upstream.split) {
    return r.upstream.split.map((s) => `${s.upstream} (${s.weight})`).join(' / ');
  }
  return '–';
}

const list = (items) => el('ul', { class: 'plain' }, items.map((i) => el('li', {}, i)));

function drawRoutes(routes) {
  const body = $('routes').querySelector('tbody');
  const rows = routes.map((r) => {
    const h = history.get(r.name) || { rps: [], errors: [], p99: [], limited: [] };
    const limited = h.limited.length ? h.limited[h.limited.length - 1] : null;
    return el('tr', { 'data-route': r.name },
      el('th', { scope: 'row' }, r.name),
      el('td', {}, list(describeMatch(r.match || {}))),
      el('td', {}, list(describePolicies(r))),
      el('td', {}, describeTarget(r)),
      el('td', {}, sparkline(h.rps, fmtRate)),
      el('td', {}, sparkline(h.errors, fmtPct, 'errors')),
      el('td', {}, sparkline(h.p99, fmtSeconds)),
      el('td', { class: 'num' + (limited ? ' limited' : '') }, limited === null ? '–' : fmtRate(limited)));
  });
  body.replaceChildren(...rows);
}

function targetState(t) {
  if (!t.healthy) return 'down';
  if (t.circuit === 'open') return 'open';
  if (t.ejected) return 'ejected';
  if (t.circuit === 'half_open' || t.retry_after_ms || t.slow_start_percent !== null) return 'recovering';
  return 'up';
}

function drawUpstreams(report) {
  const blocks = report.upstreams.map((u) => {
    const features = [
      u.health_check && 'health checks', u.circuit_breaker && 'circuit breaker',
      u.outlier && 'passive health', u.retries && 'retries',
      u.max_concurrent_requests !== null && `bulkhead ${u.max_concurrent_requests}`,
    ].filter(Boolean).join(' · ');
    const rows = u.targets.map((t) => {
      const state = targetState(t);
      const notes = [];
      if (t.ejected) notes.push(`ejected (${t.ejected.reason}) ${Math.ceil(t.ejected.remaining_ms / 1000)} s`);
      if (t.retry_after_ms) notes.push(`Retry-After ${Math.ceil(t.retry_after_ms / 1000)} s`);
      if (t.slow_start_percent !== null) notes.push(`slow start ${t.slow_start_percent}%`);
      return el('tr', { class: 'target ' + state, 'data-target': t.target, 'data-state': state },
        el('td', {}, t.target), el('td', {}, t.from), el('td', { class: 'num' }, t.weight),
        el('td', { class: 'state' }, state), el('td', {}, t.circuit),
        el('td', { class: 'num' }, t.in_flight), el('td', { class: 'num' }, t.requests),
        el('td', { class: 'num' }, t.failures), el('td', {}, notes.join(', ')));
    });
    const discovery = (u.discovery || []).map((d) =>
      el('p', { class: d.error ? 'note bad' : 'note' },
        `${d.source}: ${d.addresses.length} address(es)` + (d.error ? ` — ${d.error}` : '')));
    return el('article', { class: 'upstream', 'data-upstream': u.name },
      el('h3', {}, u.name, el('span', { class: 'features' }, features), el('span', { class: 'in-flight' }, `${u.in_flight} in flight`)),
      discovery,
      u.targets.length === 0 ? el('p', { class: 'note bad' }, 'no targets') :
        el('table', { class: 'targets' },
          el('thead', {}, el('tr', {}, ['target', 'from', 'weight', 'state', 'circuit', 'in flight', 'requests', 'failures', ''].map((c) => el('th', {}, c)))),
          el('tbody', {}, rows)));
  });
  $('upstreams').replaceChildren(...blocks);
}

function show(value) {
  return value === null || value === undefined ? '—' : typeof value === 'string' ? value : JSON.stringify(value);
}

function drawReloads(reloads) {
  const items = reloads.map((r) => {
    const summary = el('summary', {},
      el('time', {}, r.at), ' ', el('span', { class: 'badge ' + r.result }, r.result), ' ',
      r.trigger, ' ', r.from_version ? `${r.from_version} → ${r.version}` : r.version);
    const body = [];
    const c = r.changes;
    for (const [kind, names] of [['added', c.added], ['removed', c.removed], ['changed', c.changed]]) {
      if (names.length) body.push(el('p', { class: kind }, `${kind}: ${names.join(', ')}`));
    }
    if (r.diff.length) {
      body.push(el('table', { class: 'diff' },
        el('tbody', {}, r.diff.map((d) => el('tr', {},
          el('td', { class: 'path' }, d.path), el('td', { class: 'before' }, show(d.before)),
          el('td', { class: 'after' }, show(d.after)))))));
      if (r.diff_truncated) body.push(el('p', { class: 'note' }, 'more settings changed than are listed'));
    }
    for (const e of r.errors) body.push(el('p', { class: 'note bad' }, e));
    if (!body.length) body.push(el('p', { class: 'note' }, r.trigger === 'start' ? 'the version the process started with' : 'no change'));
    return el('li', { class: r.result }, el('details', {}, summary, body));
  });
  $('reloads').replaceChildren(...items);
}

// --- the loop ------------------------------------------------------------------

// While the token form is up, nothing is fetched: each refused fetch would
// only be another 401.
let waitingForToken = false;

function needToken() {
  waitingForToken = true;
  $('main').hidden = true;
  $('login').hidden = false;
  $('token').focus();
}

async function refresh() {
  try {
    const [config, upstreams, metrics, reloads] = await Promise.all([
      get('/config'), get('/upstreams'), get('/metrics', 'text'), get('/reloads'),
    ]);
    const at = performance.now();
    const elapsed = previousAt === null ? 0 : (at - previousAt) / 1000;
    previousAt = at;
    const counters = routeCounters(parseMetrics(metrics));
    for (const r of config.config.routes) {
      record(r.name, counters.get(r.name) || { requests: 0, errors: 0, limited: 0, buckets: new Map() }, elapsed);
    }
    $('version').textContent = config.version;
    $('loaded-at').textContent = config.loaded_at;
    $('source').textContent = config.source;
    drawRoutes(config.config.routes);
    drawUpstreams(upstreams);
    drawReloads(reloads.reloads);
    $('updated').textContent = new Date().toLocaleTimeString();
    $('problem').hidden = true;
    $('login').hidden = true;
    $('main').hidden = false;
  } catch (e) {
    if (e instanceof Unauthorized) {
      sessionStorage.removeItem(TOKEN_KEY);
      needToken();
    } else {
      $('problem').textContent = `the admin API did not answer: ${e.message}`;
      $('problem').hidden = false;
    }
  } finally {
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
  }
}

async function loop() {
  if (!waitingForToken) await refresh();
  setTimeout(loop, REFRESH_MS);
}

$('login').addEventListener('submit', (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $('token').value.trim());
  $('token').value = '';
  waitingForToken = false;
  refresh();
});

$('explain').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const q = new URLSearchParams();
  q.set('path', form.get('path'));
  q.set('method', form.get('method') || 'GET');
  if (form.get('host')) q.set('host', form.get('host'));
  for (const line of String(form.get('headers')).split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) q.append('header.' + line.slice(0, colon).trim(), line.slice(colon + 1).trim());
  }
  const out = $('explained');
  try {
    const { status, body } = await get('/explain?' + q.toString(), 'json-any');
    const lines = [];
    if (status !== 200) {
      lines.push(el('p', { class: 'note bad' }, body.message || `HTTP ${status}`));
    } else if (body.rejected) {
      lines.push(el('p', { class: 'note bad' }, `refused before routing: ${body.rejected.status} ${body.rejected.message}`));
    } else if (body.route) {
      lines.push(el('p', { class: 'verdict' }, 'route ', el('strong', { 'data-explained-route': body.route.name }, body.route.name),
        ` (matched ${body.request.match_path})`));
    } else {
      lines.push(el('p', { class: 'verdict' }, 'no route matches: 404'));
    }
    if (body.near_misses && body.near_misses.length) {
      lines.push(list(body.near_misses.map((m) => `${m.route}: ${m.reason}`)));
    }
    lines.push(el('details', {}, el('summary', {}, 'the whole answer'), el('pre', {}, JSON.stringify(body, null, 2))));
    out.replaceChildren(...lines);
    out.dataset.explainedPath = form.get('path');
  } catch (e) {
    if (e instanceof Unauthorized) needToken();
    else out.replaceChildren(el('p', { class: 'note bad' }, e.message));
  }
});

// The page says whether the admin API wants a token, so the first visit asks
// for it instead of drawing a burst of 401s.
if (document.body.dataset.token === 'required' && !sessionStorage.getItem(TOKEN_KEY)) needToken();
loop();
