// imagelb dashboard: polls the management API of the mount it is served from
// (/imagelb/... on the admin endpoint, /api/v1/... on a site), and never
// downloads the whole registry, so it works at 100,000 images. Every poll
// asks only for what is on screen:
//   - the registry's totals and the top images, from one-page answers of
//     the stats API (sort=requests, sort=failed_requests, status=unhealthy),
//     which carry the registry-wide totals on every page;
//   - the page of the images table on screen (limit, and the next page's URL
//     from the Link header), filtered by a status, a name prefix (q) or an
//     image id (the search box);
//   - the page of the port mappings on screen;
//   - the cards of the images shown in detail (services/{id} and
//     stats?image_id=N for the containers, usage?image_id=N every 10 s for
//     the last hour): the images picked in the tables or found by the search
//     (kept in the address, #images=1,2), or every image of a registry of at
//     most ALL_CARDS images.
// It polls every 2 s while the tab is visible; while it is hidden, or the
// server fails, it polls less and less often.
// No external resources, no inline code, text only through text nodes.
"use strict";

const apiURL = path => new URL("../" + path, location.href).pathname;
const statsURL = apiURL("stats");
const servicesURL = apiURL("services");
const portsURL = apiURL("port-mappings");
const usageURL = apiURL("usage");
const POLL_MS = 2000;
const HIDDEN_MAX_MS = 60000; // a hidden tab polls at most this rarely
const ERROR_MAX_MS = 30000; // a failing server is asked at most this rarely
const USAGE_MS = 10000; // the ledger's buckets are per minute: asking more often shows nothing new
const HOUR_MS = 3600 * 1000;
const WINDOW_S = 60; // time span of the charts
const TOP = 5; // images in each top list
const PAGE = 25; // images per page of the images table
const PORTS_PAGE = 10; // port mappings per page
const ALL_CARDS = 10; // a registry of at most this many images shows every image's card
const history = new Map(); // container key -> {rps: [[t, v]], inflight: [...], p50: [...]}
let last = null; // previous request totals, to compute request rates
let clockOffset = 0; // the server's clock minus ours (ms), when they disagree by more than 2 s
let hour = null; // the last hour's usage (hourOf), null until it is loaded
let hourError = null; // why the last usage request failed, null when it did not
let hourAt = -Infinity; // when usage was last asked for (performance.now, ms)
let hourKey = ""; // the usage queries of the cards it was asked for
let usageStep = "1m"; // "" once the ledger refused 1m (its buckets are longer): its own step then

document.getElementById("source").textContent = [statsURL, servicesURL, portsURL, usageURL].join(", ");

const SVG = "http://www.w3.org/2000/svg";

function build(e, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.setAttribute("class", v); else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === "") continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const el = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
const svg = (tag, attrs, ...children) => build(document.createElementNS(SVG, tag), attrs, children);

// morph makes the live node a look like the freshly built node b, keeping
// the elements that are already there (so a tooltip or a text selection
// survives the refresh every 2 s).
function morph(a, b) {
  if (a.nodeType !== b.nodeType || a.nodeName !== b.nodeName || a.namespaceURI !== b.namespaceURI) {
    a.replaceWith(b);
    return;
  }
  if (a.nodeType !== Node.ELEMENT_NODE) {
    if (a.nodeValue !== b.nodeValue) a.nodeValue = b.nodeValue;
    return;
  }
  for (const { name } of [...a.attributes]) if (!b.hasAttribute(name)) a.removeAttribute(name);
  for (const { name, value } of [...b.attributes]) if (a.getAttribute(name) !== value) a.setAttribute(name, value);
  morphChildren(a, [...b.childNodes]);
}

function morphChildren(parent, children) {
  const old = [...parent.childNodes];
  children.forEach((c, i) => { if (i < old.length) morph(old[i], c); else parent.append(c); });
  for (let i = children.length; i < old.length; i++) old[i].remove();
}

// asList accepts a bare array and the older wrapped forms
// ({"services": [...], "total": n}, {"port_mappings": [...]}).
const asList = x => Array.isArray(x) ? x : ((x && (x.services || x.port_mappings)) || []);

const isSet = v => v !== null && v !== undefined;
const fmt = (n, d = 0) => isSet(n) ? Number(n).toFixed(d) : "–";
// fmt1 shows a pushed number with at most one decimal, without assuming a unit.
const fmt1 = n => Number.isFinite(Number(n)) ? Number(n).toLocaleString(undefined, { maximumFractionDigits: 1 }) : String(n);

// fetchJSON gets a JSON answer with its Date header and the URL of the
// next page, when the answer is one page of a list (RFC 8288 Link).
async function fetchJSON(url) {
  const resp = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
  if (!resp.ok) throw Object.assign(new Error(`${url}: HTTP ${resp.status}`), { status: resp.status });
  return { body: await resp.json(), date: resp.headers.get("Date"), next: nextLink(resp.headers.get("Link"), resp.url) };
}

// nextLink is the target of rel="next" in a Link header, as a path and
// query of this origin (null when there is none).
function nextLink(header, base) {
  for (const part of String(header || "").split(/,(?=\s*<)/)) {
    const m = part.match(/^\s*<([^>]*)>(.*)$/);
    if (!m || !/;\s*rel="?([^";]*\s)?next(\s[^";]*)?"?\s*(;|$)/i.test(m[2])) continue;
    const u = new URL(m[1], base || location.href);
    if (u.origin === location.origin) return u.pathname + u.search;
  }
  return null;
}

// syncClock estimates how far the server's clock is from the browser's,
// from the Date header (1 s resolution), so that "12 s ago" is right when
// the dashboard is opened on another machine.
function syncClock(header) {
  const server = Date.parse(header || "");
  if (Number.isNaN(server)) return;
  const off = server + 500 - Date.now();
  clockOffset = Math.abs(off) > 2000 ? off : 0;
}

function ago(iso) {
  const s = Math.max(0, Math.round((Date.now() + clockOffset - Date.parse(iso)) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 48 * 3600) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function checkedAt(iso) {
  if (!iso || Number.isNaN(Date.parse(iso))) return el("span", { class: "muted" }, "never");
  const abs = new Date(iso).toLocaleString(undefined, { year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short" });
  return el("time", { class: "checked", datetime: iso, title: "last health check " + abs }, ago(iso));
}

function push(key, field, t, value) {
  if (!history.has(key)) history.set(key, { rps: [], inflight: [], p50: [] });
  const h = history.get(key)[field];
  h.push([t, value]);
  while (h.length && h[0][0] < t - WINDOW_S) h.shift();
  return h;
}

// niceCeil rounds up to 1, 2, 2.5 or 5 times a power of ten (1 for 0).
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) {
    const n = Number((m * p).toPrecision(3));
    if (v <= n) return n;
  }
  return 10 * p;
}

function fmtAxis(v) {
  if (v >= 1e6) return Number((v / 1e6).toPrecision(3)) + "M";
  if (v >= 1e3) return Number((v / 1e3).toPrecision(3)) + "k";
  return String(Number(v.toPrecision(3)));
}

// fmtBytes shows a byte count in SI units with at most one decimal:
// 999 B, 1.2 kB, 25 MB.
const byteUnits = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
function fmtBytes(n) {
  let v = Math.max(0, Number(n) || 0), i = 0;
  while (i < byteUnits.length - 1 && Number(v.toFixed(1)) >= 1000) { v /= 1000; i++; }
  return `${i ? Number(v.toFixed(1)) : Math.round(v)} ${byteUnits[i]}`;
}

// frame is a chart's SVG, w wide with the y axis l from the left: its
// label (aria-label and title), the y range (0 and top) and the time span
// (span ago to now) on the axes, and the content drawn in it.
const CW = 164, CH = 50, CL = 30, CR = 4, CT = 6, CB = 14;
function frame(cls, w, l, label, top, span, content) {
  const ph = CH - CT - CB;
  return svg("svg", { class: cls, width: w, height: CH, viewBox: `0 0 ${w} ${CH}`, role: "img", "aria-label": label },
    svg("title", {}, label),
    svg("line", { class: "grid", x1: l, y1: CT, x2: w - CR, y2: CT }),
    svg("line", { class: "axis", x1: l, y1: CT + ph, x2: w - CR, y2: CT + ph }),
    svg("line", { class: "axis", x1: l, y1: CT, x2: l, y2: CT + ph }),
    svg("text", { class: "tick y-max", x: l - 4, y: CT + 4, "text-anchor": "end" }, top),
    svg("text", { class: "tick", x: l - 4, y: CT + ph + 3, "text-anchor": "end" }, "0"),
    svg("text", { class: "tick span", x: l, y: CH - 3 }, span),
    svg("text", { class: "tick", x: w - CR, y: CH - 3, "text-anchor": "end" }, "now"),
    content);
}

// chart draws the points ([time s, value or null]) of the last WINDOW_S
// seconds as an SVG line chart with its y range (0 and the top) and its
// time span on the axes; a null value is a gap.
function chart(points, now, kind, what) {
  const values = points.map(p => p[1]).filter(isSet);
  const max = niceCeil(Math.max(0, ...values));
  const pw = CW - CL - CR, ph = CH - CT - CB;
  const x = t => (CL + pw * Math.min(1, Math.max(0, 1 - (now - t) / WINDOW_S))).toFixed(1);
  const y = v => (CT + ph * (1 - Math.min(v, max) / max)).toFixed(1);
  const lines = [];
  let run = [];
  const flush = () => {
    if (run.length === 1) lines.push(svg("circle", { class: "line " + kind, cx: x(run[0][0]), cy: y(run[0][1]), r: 2 }));
    else if (run.length > 1) lines.push(svg("polyline", { class: "line " + kind, points: run.map(p => x(p[0]) + "," + y(p[1])).join(" ") }));
    run = [];
  };
  for (const p of points) { if (isSet(p[1])) run.push(p); else flush(); }
  flush();
  const label = `${what}, last ${WINDOW_S} s, axis 0 to ${fmtAxis(max)}`;
  return frame("chart", CW, CL, label, fmtAxis(max), `${WINDOW_S} s ago`, lines);
}

// goDuration is a Go duration ("1m0s", "1h0m0s", "30s") in ms (0 if it is none).
function goDuration(s) {
  const unit = { h: 3600e3, m: 60e3, s: 1e3, ms: 1, us: 1e-3, "µs": 1e-3, ns: 1e-6 };
  let ms = 0;
  for (const [, n, u] of String(s || "").matchAll(/([0-9.]+)(h|ms|m|s|us|µs|ns)/g)) ms += Number(n) * unit[u];
  return ms;
}

// hourOf turns a usage report into the last hour's steps: the 60 minutes
// (steps of the report) ending at its end, each image's usage per step
// (0 where the report has no bucket) and their sums. A bucket before them
// (the minute that began just over an hour ago) is left out of both.
function hourOf(report) {
  const stepMs = goDuration(report.step) || 60e3;
  const n = Math.max(1, Math.round(HOUR_MS / stepMs));
  const end = Date.parse(report.to), start = end - n * stepMs;
  const images = new Map();
  for (const im of report.images || []) {
    const u = { requests: 0, bytesIn: 0, bytesOut: 0, steps: Array.from({ length: n }, () => ({ requests: 0, bytesIn: 0, bytesOut: 0 })) };
    for (const b of im.buckets || []) {
      const i = Math.floor((Date.parse(b.start) - start) / stepMs);
      if (!(i >= 0 && i < n)) continue;
      const s = u.steps[i];
      s.requests += b.requests || 0; s.bytesIn += b.bytes_in || 0; s.bytesOut += b.bytes_out || 0;
      u.requests += b.requests || 0; u.bytesIn += b.bytes_in || 0; u.bytesOut += b.bytes_out || 0;
    }
    images.set(im.image_id, u);
  }
  return { start, stepMs, n, minutes: Math.round(n * stepMs / 60e3), images };
}

// fetchUsage asks the ledger for the last hour by minutes, of the images
// the query names (image_id=N, or limit=N for the first N). A ledger whose
// buckets are longer than a minute refuses the step (400): then it is
// asked for its own.
async function fetchUsage(query) {
  const from = new Date(Date.now() + clockOffset - HOUR_MS).toISOString();
  const url = step => `${usageURL}?${query}&from=${encodeURIComponent(from)}` + (step ? `&step=${step}` : "");
  try {
    return (await fetchJSON(url(usageStep))).body;
  } catch (err) {
    if (!usageStep || err.status !== 400) throw err;
    const body = (await fetchJSON(url(""))).body;
    if (goDuration(body.step) > 60e3) usageStep = "";
    return body;
  }
}

// loadHour refreshes the last hour's usage of the images with a card when
// it is USAGE_MS old or the cards changed. When it cannot, the last one
// stays, and hourError says why.
async function loadHour(queries) {
  const t = performance.now(), key = queries.join(" ");
  if (t - hourAt < USAGE_MS && key === hourKey) return;
  hourAt = t;
  hourKey = key;
  try {
    const hours = (await Promise.all(queries.map(fetchUsage))).map(hourOf);
    hour = hours[0] || null;
    for (const h of hours.slice(1)) for (const [id, u] of h.images) hour.images.set(id, u);
    hourError = null;
  } catch (err) {
    hourError = err.status ? `HTTP ${err.status}` : err.message;
  }
}

const HW = 224, HL = 40; // the hour's charts: 60 bars of 3 px

function clock(ms) {
  return new Date(ms).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

// requestsChart draws the requests of each step of the hour as bars.
function requestsChart(u) {
  const max = niceCeil(Math.max(0, ...u.steps.map(s => s.requests)));
  const pw = HW - HL - CR, ph = CH - CT - CB, bw = pw / hour.n;
  const bars = u.steps.flatMap((s, i) => {
    if (!s.requests) return [];
    const h = Math.max(1, ph * Math.min(s.requests, max) / max);
    return [svg("rect", { class: "bar requests", x: (HL + i * bw).toFixed(1), y: (CT + ph - h).toFixed(1),
      width: Math.max(1, bw - 0.6).toFixed(1), height: h.toFixed(1) },
    svg("title", {}, `${clock(hour.start + i * hour.stepMs)}: ${s.requests} requests, ${fmtBytes(s.bytesIn)} in, ${fmtBytes(s.bytesOut)} out`))];
  });
  const label = `requests per ${stepName()}, last ${hour.minutes} min, axis 0 to ${fmtAxis(max)}: ${u.requests} requests`;
  return frame("chart usage-requests", HW, HL, label, fmtAxis(max), `${hour.minutes} min ago`, bars);
}

// bytesChart draws the body bytes in and out of each step of the hour as two lines.
function bytesChart(u) {
  const max = niceCeil(Math.max(0, ...u.steps.map(s => Math.max(s.bytesIn, s.bytesOut))));
  const pw = HW - HL - CR, ph = CH - CT - CB, bw = pw / hour.n;
  const line = (kind, f) => {
    const pts = u.steps.map((s, i) => (HL + (i + 0.5) * bw).toFixed(1) + "," + (CT + ph * (1 - Math.min(s[f], max) / max)).toFixed(1));
    return svg("polyline", { class: "line " + kind, points: pts.join(" ") });
  };
  const label = `bytes in and out per ${stepName()}, last ${hour.minutes} min, axis 0 to ${fmtBytes(max)}: ` +
    `${fmtBytes(u.bytesIn)} in, ${fmtBytes(u.bytesOut)} out`;
  return frame("chart usage-bytes", HW, HL, label, fmtBytes(max), `${hour.minutes} min ago`,
    [line("bytes-in", "bytesIn"), line("bytes-out", "bytesOut")]);
}

function stepName() {
  return hour.stepMs === 60e3 ? "minute" : `${fmtAxis(hour.stepMs / 60e3)} min`;
}

const noUsage = n => ({ requests: 0, bytesIn: 0, bytesOut: 0, steps: Array.from({ length: n }, () => ({ requests: 0, bytesIn: 0, bytesOut: 0 })) });

// hourBlock is an image's last hour from the ledger: the totals as text
// (exact byte counts in the titles) and the two charts.
function hourBlock(id) {
  if (!hour) {
    return el("div", { class: "hour", "data-hour": id }, el("span", { class: "muted" },
      hourError ? `last hour: usage not available (${hourError})` : "last hour: loading…"));
  }
  const u = hour.images.get(id) || noUsage(hour.n);
  return el("div", { class: "hour", "data-hour": id },
    el("div", { class: "hour-figures" }, "last hour: ", el("b", { class: "hour-requests" }, u.requests), " requests · ",
      el("b", { class: "hour-in", title: `${u.bytesIn} bytes` }, fmtBytes(u.bytesIn)), " ", el("span", { class: "key bytes-in" }, "in"), " · ",
      el("b", { class: "hour-out", title: `${u.bytesOut} bytes` }, fmtBytes(u.bytesOut)), " ", el("span", { class: "key bytes-out" }, "out"),
      hourError ? el("span", { class: "stale", title: "the last usage request failed: " + hourError }, ` (not updated: ${hourError})`) : ""),
    el("div", { class: "hour-charts" }, requestsChart(u), bytesChart(u)));
}

function rate(key, total, dt) {
  if (!last || dt <= 0) return 0;
  const prev = last.get(key);
  return prev === undefined ? 0 : Math.max(0, (total - prev) / dt);
}

// pairs joins two lists by key: the entries of a in order, then those only in b.
function pairs(a, b, key) {
  const byKey = new Map(b.map(x => [x[key], x]));
  const out = a.map(x => [x, byKey.get(x[key]) || {}]);
  const seen = new Set(a.map(x => x[key]));
  for (const y of b) if (!seen.has(y[key])) out.push([{}, y]);
  return out;
}

const usageFields = [["cpu", "cpu_usage"], ["mem", "memory_usage"], ["disk", "disk_usage"]];

function usage(c) {
  const set = usageFields.filter(([, f]) => isSet(c[f]));
  if (!set.length) return el("span", { class: "muted" }, "–");
  return set.map(([label, f]) => el("div", { class: "usage", title: `${f} as pushed by the orchestrator` },
    label + " ", el("b", {}, fmt1(c[f]))));
}

const columns = ["container", "status", "weight", "requests", "failed", "usage", "last check",
  "req/s now · last min", "in flight", "latency ms p50/p95/p99"];

function containerRows(skey, info, st, now, dt, totals, seen) {
  return pairs(info.containers || [], st.containers || [], "container_id").flatMap(([d, c]) => {
    const id = d.container_id ?? c.container_id;
    const key = skey + "/" + id;
    seen.add(key);
    const total = c.total_requests ?? d.total_requests ?? 0;
    totals.set(key, total);
    const r = rate(key, total, dt);
    const inflight = c.active_connections ?? d.active_connections ?? 0;
    const lat = c.latency_ms || {};
    const status = d.status ?? c.status ?? "unknown";
    const row = el("tr", { "data-container": id },
      el("td", {}, el("div", { class: "cid" }, id),
        d.name && d.name !== id ? el("small", {}, d.name) : "",
        d.host ? el("small", { class: "addr" }, `${d.host}:${d.port}`) : ""),
      el("td", {}, el("span", { class: "status " + status }, status),
        (c.ejected || d.ejected) ? el("span", { class: "status ejected", title: `ejected ${c.ejections ?? "?"}×` }, "ejected") : "",
        d.zone ? el("small", {}, " " + d.zone) : ""),
      el("td", {}, d.weight ?? ""),
      el("td", { class: "requests" }, total),
      el("td", {}, c.failed_requests ?? d.failed_requests ?? 0),
      el("td", { class: "usage-cell" }, usage(d)),
      el("td", {}, checkedAt(d.last_health_check)),
      el("td", {}, el("div", {}, el("b", {}, fmt(r, 1)), " · ", fmt(c.requests_per_second ?? d.requests_per_second, 2)),
        chart(push(key, "rps", now, r), now, "rps", "requests per second")),
      el("td", {}, el("div", {}, el("b", {}, inflight)),
        chart(push(key, "inflight", now, inflight), now, "inflight", "requests in flight")),
      el("td", {}, el("div", {}, fmt(lat.p50, 2), " / ", fmt(lat.p95, 2), " / ", fmt(lat.p99, 2)),
        chart(push(key, "p50", now, isSet(lat.p50) ? lat.p50 : null), now, "p50", "latency p50 (ms)")));
    if (!isSet(d.last_health_error)) return [row];
    return [row, el("tr", { class: "health-error-row", "data-container-error": id },
      el("td", {}), el("td", { colspan: columns.length - 1 },
        el("span", { class: "health-error" }, "health check error: ", el("span", { class: "health-error-text" }, d.last_health_error))))];
  });
}


// A pager is a paged list on screen: the URL of the page shown, those of
// the pages before it (to go back) and the next page's, from the answer's
// Link header (null on the last page).
class Pager {
  constructor(first) { this.reset(first); }
  reset(first) { this.url = first; this.back = []; this.next = null; }
  forward() { if (this.next) { this.back.push(this.url); this.url = this.next; this.next = null; } }
  backward() { if (this.back.length) { this.url = this.back.pop(); this.next = null; } }
  get number() { return this.back.length + 1; }
}

const STATUSES = ["healthy", "unhealthy", "starting", "draining", "unknown"];
const SORTS = [["image_id", "image id"], ["requests", "requests"], ["requests_per_second", "req/s"], ["failed_requests", "failures"]];
const filter = { status: "", sort: "image_id", q: "", imageID: "" }; // of the images table

// tableURL is the first page of the images table under the filter: one
// image when the search found its id.
function tableURL() {
  const p = new URLSearchParams();
  if (filter.imageID) {
    p.set("image_id", filter.imageID);
    return `${statsURL}?${p}`;
  }
  p.set("limit", PAGE);
  if (filter.sort !== "image_id") p.set("sort", filter.sort);
  if (filter.status) p.set("status", filter.status);
  if (filter.q) p.set("q", filter.q);
  return `${statsURL}?${p}`;
}
const images = new Pager(tableURL());
const ports = new Pager(`${portsURL}?limit=${PORTS_PAGE}`);

function setFilter(change) {
  Object.assign(filter, change);
  images.reset(tableURL());
  refresh();
}

// selected lists the images shown in detail. They are kept in the address
// (#images=7,12), so a reload or a link shows them again.
function selected() {
  const m = location.hash.match(/^#images=([0-9,]+)$/);
  return m ? [...new Set(m[1].split(",").filter(Boolean))] : [];
}

// pick shows image id in detail (first), or hides it again.
function pick(id, show = true) {
  const ids = selected().filter(x => x !== String(id));
  if (show) ids.unshift(String(id));
  location.hash = ids.length ? "images=" + ids.join(",") : "";
  bringIntoView = show ? String(id) : null;
}
let bringIntoView = null; // the card to bring into view once it is drawn

// orNone is a list's answer, or an empty one when the image asked for is
// not (or no longer) registered.
const orNone = p => p.catch(err => {
  if (err.status === 404) return { body: { services: [] }, next: null, missing: true };
  throw err;
});

// loadCards fetches what the cards show: every image of a small registry
// in two answers, or each picked image's service and statistics.
async function loadCards(total) {
  if (total <= ALL_CARDS) {
    const [stats, services] = await Promise.all([`${statsURL}?limit=${ALL_CARDS}`, `${servicesURL}?limit=${ALL_CARDS}`].map(fetchJSON));
    const cards = pairs(asList(services.body), stats.body.services || [], "image_id");
    // these images' usage: the ledger keeps removed images too, so its
    // first page need not hold them
    await loadHour(cards.map(([info, s]) => `image_id=${info.image_id ?? s.image_id}`));
    return cards.map(([info, s]) => [info, s, false]);
  }
  const ids = selected();
  const cards = await Promise.all(ids.map(async id => {
    const [svc, st] = await Promise.all([orNone(fetchJSON(`${servicesURL}/${id}`)), orNone(fetchJSON(`${statsURL}?image_id=${id}`))]);
    if (svc.missing) return [{ image_id: Number(id), missing: true }, {}, true];
    return [svc.body, (st.body.services || [])[0] || {}, true];
  }));
  await loadHour(ids.map(id => `image_id=${id}`));
  return cards;
}

let busy = false, again = false, timer = 0, hiddenDelay = POLL_MS, errorDelay = 0;

// refresh polls what is on screen and draws it; a call while one runs
// makes it run once more afterwards.
async function refresh() {
  if (busy) { again = true; return; }
  busy = true;
  clearTimeout(timer);
  const errorBox = document.getElementById("error");
  let failed = false;
  try {
    const [busiest, failing, unhealthy, page, portPage] = await Promise.all([
      fetchJSON(`${statsURL}?limit=${TOP}&sort=requests`),
      fetchJSON(`${statsURL}?limit=${TOP}&sort=failed_requests`),
      fetchJSON(`${statsURL}?limit=${TOP}&status=unhealthy`),
      orNone(fetchJSON(images.url)),
      fetchJSON(ports.url)]);
    syncClock(busiest.date);
    images.next = page.next;
    ports.next = portPage.next;
    const head = busiest.body;
    const total = head.user_services?.total_services ?? (head.services || []).length;
    const cards = await loadCards(total);
    renderSummary(head, total);
    renderTops(busiest.body.services, failing.body.services, unhealthy.body.services);
    renderTable(page);
    renderPorts(asList(portPage.body));
    renderCards(cards);
    errorBox.hidden = true;
  } catch (err) {
    failed = true;
    errorBox.textContent = "cannot load the dashboard's data: " + err.message;
    errorBox.hidden = false;
  } finally {
    busy = false;
    if (again) {
      again = false;
      refresh();
    } else {
      schedule(failed);
    }
  }
}

// schedule plans the next poll: every POLL_MS while the tab is visible and
// the server answers; twice as long after each poll while it is hidden (up
// to HIDDEN_MAX_MS) or failing (up to ERROR_MAX_MS).
function schedule(failed) {
  clearTimeout(timer);
  errorDelay = failed ? Math.min(ERROR_MAX_MS, Math.max(POLL_MS, errorDelay * 2)) : 0;
  hiddenDelay = document.hidden ? Math.min(HIDDEN_MAX_MS, hiddenDelay * 2) : POLL_MS;
  timer = setTimeout(refresh, Math.max(errorDelay, hiddenDelay));
}

const num = n => isSet(n) ? Number(n).toLocaleString("en-US") : "–";

function renderSummary(head, total) {
  const u = head.user_services || {};
  morphChildren(document.getElementById("summary"), [
    el("span", {}, "images ", el("b", { id: "services-count" }, total)),
    isSet(u.total_containers) ? el("span", {}, "containers ", el("b", { id: "containers-count" }, u.total_containers),
      " · healthy ", el("b", {}, u.healthy_containers)) : "",
    el("span", {}, "requests ", el("b", { id: "total-requests" }, u.total_requests ?? head.total_requests)),
    el("span", {}, "failed ", el("b", {}, head.failed_requests)),
    el("span", {}, "in flight ", el("b", {}, head.active_connections)),
    el("span", {}, "uptime ", el("b", {}, fmt(head.uptime_seconds) + " s"))]);
  const by = head.containers_by_status || {};
  morphChildren(document.getElementById("by-status"), Object.keys(by).length ? [
    el("span", { class: "muted" }, "containers by status:"),
    ...STATUSES.filter(s => by[s]).concat(Object.keys(by).filter(s => !STATUSES.includes(s))).map(s =>
      el("button", { type: "button", class: "status " + s + (filter.status === s ? " on" : ""), "data-status": s,
        title: `list the images with a container ${s}` }, `${s} ${num(by[s])}`))] : []);
}

// imageLink shows an image's id and name; a click shows it in detail.
const imageLink = s => el("a", { href: `#images=${s.image_id}`, class: "image-link", "data-pick": s.image_id },
  el("b", {}, s.image_id), " ", s.image_name ?? "");

const healthyOf = s => `${s.healthy_containers ?? "–"}/${(s.containers || []).length}`;
const hasStatus = (s, status) => (s.containers || []).some(c => c.status === status);

// renderTops draws the three short lists: unhealthy images first, then the
// busiest and those with the most failures (only images that have some).
function renderTops(busiest, failing, unhealthy) {
  const top = (id, list, none, figure) => {
    morphChildren(document.getElementById(id), list.length ? list.slice(0, TOP).map(s =>
      el("tr", { "data-image": s.image_id }, el("td", {}, imageLink(s)), el("td", { class: "figure" }, figure(s)))) :
      [el("tr", { class: "none" }, el("td", { class: "muted" }, none))]);
  };
  top("top-unhealthy", (unhealthy || []).filter(s => hasStatus(s, "unhealthy")), "no unhealthy container",
    s => ["healthy ", el("b", {}, healthyOf(s))]);
  top("top-requests", (busiest || []).filter(s => s.total_requests > 0), "no traffic yet",
    s => [el("b", { class: "top-requests" }, num(s.total_requests)), " requests · ", el("b", {}, fmt(s.requests_per_second, 2)), " req/s"]);
  top("top-failed", (failing || []).filter(s => s.failed_requests > 0), "no failed request",
    s => [el("b", {}, num(s.failed_requests)), " failed of ", num(s.total_requests)]);
}

function renderTable(page) {
  const list = page.body.services || [];
  const from = (images.number - 1) * PAGE;
  morphChildren(document.getElementById("image-rows"), list.map(s =>
    el("tr", { "data-image": s.image_id, class: hasStatus(s, "unhealthy") ? "sick" : null },
      el("td", {}, imageLink(s)),
      el("td", {}, s.algorithm),
      el("td", {}, healthyOf(s)),
      el("td", {}, num(s.total_requests)),
      el("td", {}, num(s.failed_requests)),
      el("td", {}, fmt(s.requests_per_second, 2)),
      el("td", {}, num(s.active_connections)))));
  const what = filter.imageID ? `image ${filter.imageID}` :
    [filter.q ? `names starting with “${filter.q}”` : "", filter.status ? `a container ${filter.status}` : ""].filter(Boolean).join(", ");
  document.getElementById("image-filter").textContent = what ? "· " + what : "";
  document.getElementById("clear-filter").hidden = !what;
  document.getElementById("no-images").hidden = list.length !== 0;
  document.getElementById("no-images").textContent = page.missing || filter.imageID ? `No image ${filter.imageID} is registered.` : "No image matches.";
  document.getElementById("page-info").textContent = list.length ? `${from + 1}–${from + list.length}` : "";
  document.getElementById("prev-page").disabled = images.back.length === 0;
  document.getElementById("next-page").disabled = !images.next;
}

function renderPorts(list) {
  morphChildren(document.getElementById("port-rows"), list.map(p =>
    el("tr", { "data-port": p.external_port },
      el("td", { class: "port" }, p.external_port),
      el("td", {}, el("a", { href: `#images=${p.image_id}`, "data-pick": p.image_id }, p.image_id)),
      el("td", {}, p.image_name ?? ""),
      el("td", {}, p.container_count ?? "–"),
      el("td", {}, p.total_requests ?? "–"))));
  const none = list.length === 0 && ports.number === 1;
  document.getElementById("port-mappings").hidden = none;
  document.getElementById("no-ports").hidden = !none;
  document.getElementById("ports-pager").hidden = ports.number === 1 && !ports.next;
  document.getElementById("ports-prev").disabled = ports.back.length === 0;
  document.getElementById("ports-next").disabled = !ports.next;
}

function renderCards(cards) {
  const now = performance.now() / 1000;
  const dt = last ? now - last.at : 0;
  const totals = new Map();
  const seen = new Set();
  morphChildren(document.getElementById("services"), cards.map(([info, s, closable]) => {
    const id = info.image_id ?? s.image_id;
    const close = closable ? el("button", { type: "button", class: "close", "data-unpick": id, title: "hide this image", "aria-label": "hide image " + id }, "×") : "";
    if (info.missing) {
      return el("section", { class: "card service", "data-image": id },
        el("h2", {}, `image ${id}`, close), el("p", { class: "muted" }, `Image ${id} is not registered.`));
    }
    const skey = "s" + id;
    const total = s.total_requests ?? info.total_requests ?? 0;
    totals.set(skey, total);
    const srps = rate(skey, total, dt);
    const count = (info.containers || s.containers || []).length;
    return el("section", { class: "card service", "data-image": id },
      el("h2", {}, info.image_name ?? s.image_name, el("small", {}, `image ${id} · ${info.algorithm ?? s.algorithm}` +
        (isSet(info.external_port) ? ` · port ${info.external_port}` : "") + (info.static ? " · static" : "")), close),
      el("div", { class: "figures" },
        "requests ", el("b", { class: "service-requests" }, total), " · failed ", el("b", {}, s.failed_requests ?? info.failed_requests),
        " · in flight ", el("b", {}, s.active_connections ?? info.active_connections), " · ", el("b", {}, fmt(srps, 1)), " req/s now · ",
        el("b", {}, fmt(s.requests_per_second ?? info.requests_per_second, 2)), " req/s over the last minute · healthy ",
        el("b", {}, `${info.healthy_containers ?? s.healthy_containers}/${count}`),
        s.rate_limited_requests ? [" · rate limited ", el("b", {}, s.rate_limited_requests)] : "",
        s.shed_requests ? [" · shed ", el("b", {}, s.shed_requests)] : "",
        s.retries_denied ? [" · retries denied ", el("b", {}, s.retries_denied)] : "",
        info.on_demand ? [" · on demand, waiting ", el("b", { class: "service-waiting" }, info.waiting ?? 0)] : "",
        info.rollout ? [" · rollout to image ", el("b", {}, info.rollout.canary_image_id), ": ",
          el("b", { class: "service-rollout" }, `${info.rollout.state.replace("_", " ")}, step ${info.rollout.step}/${info.rollout.steps}, ${info.rollout.percent}%`)] : ""),
      hourBlock(id),
      el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, columns.map(h => el("th", {}, h)))),
        el("tbody", {}, containerRows(skey, info, s, now, dt, totals, seen)))));
  }));
  for (const key of history.keys()) if (!seen.has(key)) history.delete(key); // removed containers, hidden cards
  totals.at = now;
  last = totals;
  document.getElementById("updated").textContent = "Last update " + new Date().toLocaleTimeString() + ".";
  if (bringIntoView) {
    document.querySelector(`#services [data-image="${bringIntoView}"]`)?.scrollIntoView({ block: "nearest" });
    bringIntoView = null;
  }
}

// search finds an image by its id (exact: the table shows it and its card
// opens) or by a prefix of its name (the table lists the matches).
async function search(text) {
  const v = text.trim();
  const note = document.getElementById("search-note");
  note.textContent = "";
  if (/^[0-9]+$/.test(v)) {
    try {
      const svc = (await fetchJSON(`${servicesURL}/${v}`)).body;
      setFilter({ imageID: String(svc.image_id), q: "", status: "" });
      pick(svc.image_id);
      return;
    } catch (err) {
      if (err.status !== 404 && err.status !== 422) {
        note.textContent = "cannot search: " + err.message;
        return;
      }
      note.textContent = `No image ${v}; images whose name starts with “${v}”:`;
    }
  }
  setFilter({ imageID: "", q: v });
}

function setup() {
  const statusSelect = document.getElementById("status-filter");
  statusSelect.append(el("option", { value: "" }, "any status"), ...STATUSES.map(s => el("option", { value: s }, "a container " + s)));
  statusSelect.addEventListener("change", () => setFilter({ status: statusSelect.value, imageID: "" }));
  const sortSelect = document.getElementById("sort");
  sortSelect.append(...SORTS.map(([v, label]) => el("option", { value: v }, "by " + label)));
  sortSelect.addEventListener("change", () => setFilter({ sort: sortSelect.value }));
  document.getElementById("search").addEventListener("submit", ev => {
    ev.preventDefault();
    search(document.getElementById("search-input").value);
  });
  document.getElementById("clear-filter").addEventListener("click", () => {
    document.getElementById("search-input").value = "";
    document.getElementById("search-note").textContent = "";
    statusSelect.value = "";
    setFilter({ imageID: "", q: "", status: "" });
  });
  document.getElementById("prev-page").addEventListener("click", () => { images.backward(); refresh(); });
  document.getElementById("next-page").addEventListener("click", () => { images.forward(); refresh(); });
  document.getElementById("ports-prev").addEventListener("click", () => { ports.backward(); refresh(); });
  document.getElementById("ports-next").addEventListener("click", () => { ports.forward(); refresh(); });
  document.addEventListener("click", ev => {
    const link = ev.target.closest("[data-pick], [data-unpick], [data-status]");
    if (!link) return;
    ev.preventDefault();
    if (link.dataset.pick) pick(link.dataset.pick);
    else if (link.dataset.unpick) pick(link.dataset.unpick, false);
    else {
      const s = filter.status === link.dataset.status ? "" : link.dataset.status;
      statusSelect.value = s;
      setFilter({ status: s, imageID: "" });
    }
  });
  window.addEventListener("hashchange", refresh);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      hiddenDelay = POLL_MS;
      refresh();
    }
  });
}

setup();
refresh();
