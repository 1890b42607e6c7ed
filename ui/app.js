// imagelb dashboard: polls the stats API of the mount it is served from
// (/imagelb/stats on the admin endpoint, /api/v1/stats on a site) and draws
// services, containers and small charts. No external resources.
"use strict";

const statsURL = new URL("../stats", location.href).pathname;
const servicesURL = new URL("../services", location.href).pathname;
const HISTORY = 60; // points kept per chart
const history = new Map(); // key -> {rps: [], inflight: [], p50: []}
let last = null; // previous stats, to compute request rates

document.getElementById("source").textContent = statsURL;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children.flat()) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function push(key, field, value) {
  if (!history.has(key)) history.set(key, { rps: [], inflight: [], p50: [] });
  const h = history.get(key)[field];
  h.push(value);
  if (h.length > HISTORY) h.shift();
  return h;
}

function spark(values, color) {
  const c = el("canvas", { width: 120, height: 28 });
  const g = c.getContext("2d");
  const max = Math.max(1, ...values);
  g.strokeStyle = color; g.lineWidth = 1.5; g.beginPath();
  values.forEach((v, i) => {
    const x = (i / (HISTORY - 1)) * 119, y = 27 - (v / max) * 25;
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
  return c;
}

const fmt = (n, d = 0) => (n === null || n === undefined) ? "–" : Number(n).toFixed(d);

function rate(key, total, dt) {
  if (!last || dt <= 0) return 0;
  const prev = last.get(key);
  return prev === undefined ? 0 : Math.max(0, (total - prev) / dt);
}

async function refresh() {
  try {
    const [statsResp, svcResp] = await Promise.all([fetch(statsURL), fetch(servicesURL)]);
    if (!statsResp.ok || !svcResp.ok) throw new Error(`stats: ${statsResp.status}, services: ${svcResp.status}`);
    const stats = await statsResp.json();
    const list = await svcResp.json();
    render(stats, list);
    document.getElementById("error").hidden = true;
  } catch (err) {
    const e = document.getElementById("error");
    e.textContent = "cannot load statistics: " + err.message;
    e.hidden = false;
  }
}

function render(stats, list) {
  const now = performance.now() / 1000;
  const dt = last ? now - last.at : 0;
  const totals = new Map();
  const names = new Map(list.services.map(s => [s.image_id, s]));

  document.getElementById("summary").replaceChildren(
    el("span", {}, "services ", el("b", { id: "services-count" }, stats.services.length)),
    el("span", {}, "requests ", el("b", { id: "total-requests" }, stats.total_requests)),
    el("span", {}, "failed ", el("b", {}, stats.failed_requests)),
    el("span", {}, "in flight ", el("b", {}, stats.active_connections)),
    el("span", {}, "uptime ", el("b", {}, fmt(stats.uptime_seconds) + " s")));

  const main = document.getElementById("services");
  main.replaceChildren(...stats.services.map(s => {
    const skey = "s" + s.image_id;
    totals.set(skey, s.total_requests);
    const srps = rate(skey, s.total_requests, dt);
    const info = names.get(s.image_id) || {};
    const rows = s.containers.map(c => {
      const key = skey + "/" + c.container_id;
      totals.set(key, c.total_requests);
      const r = rate(key, c.total_requests, dt);
      const detail = (info.containers || []).find(x => x.container_id === c.container_id) || {};
      return el("tr", { "data-container": c.container_id },
        el("td", {}, c.container_id),
        el("td", {}, detail.host ? `${detail.host}:${detail.port}` : ""),
        el("td", {}, el("span", { class: "status " + c.status }, c.status),
          c.ejected ? el("span", { class: "status ejected", title: `ejected ${c.ejections}×` }, "ejected") : "",
          detail.zone ? el("small", {}, " " + detail.zone) : ""),
        el("td", {}, detail.weight ?? ""),
        el("td", { class: "requests" }, c.total_requests),
        el("td", {}, c.failed_requests),
        el("td", {}, fmt(r, 1), " ", spark(push(key, "rps", r), "#2563eb")),
        el("td", {}, c.active_connections, " ", spark(push(key, "inflight", c.active_connections), "#d97706")),
        el("td", {}, fmt(c.latency_ms.p50, 2), " / ", fmt(c.latency_ms.p95, 2), " / ", fmt(c.latency_ms.p99, 2), " ",
          spark(push(key, "p50", c.latency_ms.p50 || 0), "#16a34a")));
    });
    return el("section", { class: "service", "data-image": s.image_id },
      el("h2", {}, s.image_name, el("small", {}, `image ${s.image_id} · ${s.algorithm}` +
        (info.external_port ? ` · port ${info.external_port}` : ""))),
      el("div", { class: "figures" },
        "requests ", el("b", { class: "service-requests" }, s.total_requests), " · failed ", el("b", {}, s.failed_requests),
        " · in flight ", el("b", {}, s.active_connections), " · ", el("b", {}, fmt(srps, 1)), " req/s now · ",
        el("b", {}, fmt(s.requests_per_second, 2)), " req/s over the last minute · healthy ",
        el("b", {}, `${s.healthy_containers}/${s.containers.length}`),
        s.rate_limited_requests ? [" · rate limited ", el("b", {}, s.rate_limited_requests)] : "",
        s.shed_requests ? [" · shed ", el("b", {}, s.shed_requests)] : "",
        s.retries_denied ? [" · retries denied ", el("b", {}, s.retries_denied)] : ""),
      el("table", {},
        el("thead", {}, el("tr", {}, ...["container", "address", "status", "weight", "requests", "failed",
          "req/s", "in flight", "latency ms p50 / p95 / p99"].map(h => el("th", {}, h)))),
        el("tbody", {}, ...rows)));
  }));
  totals.at = now;
  last = totals;
  document.getElementById("updated").textContent = "Last update " + new Date().toLocaleTimeString() + ".";
}

refresh();
setInterval(refresh, 2000);
