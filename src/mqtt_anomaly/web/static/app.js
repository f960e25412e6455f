/* mqtt-anomaly dashboard: fleet, sensor chart, alert feed; live over server-sent events.
   No dependencies. Every server string goes through textContent, never innerHTML. */
"use strict";

const HEALTHS = ["anomalous", "offline", "silent", "ok"];
const FEED_MAX = 300;
const st = {
  sort: "health", desc: false, offset: 0, limit: 100, q: "", health: "",
  sensor: null, asset: null, assetData: null, es: null, timer: null, fleetTimer: null,
  active: new Map(),          // "sensor\u0000detector" → active alert (ack/shelve state)
  feedback: new Map(),        // alert id → operator verdict ("confirmed" | "false_alarm")
  points: [], band: null, marks: [], windowS: 900,
};
const $ = (sel) => document.querySelector(sel);
const key = (s, d) => s + "\u0000" + d;

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

async function api(path, opts) {
  const r = await fetch(path, opts);
  if (!r.ok) throw new Error(`${r.status} ${path}`);
  return r.json();
}

function fmtValue(v) { return v === null || v === undefined ? "—" : v.toFixed(2); }
function fmtAgo(ts) {
  if (!ts) return "never";
  const s = Date.now() / 1000 - ts;
  if (s < 1) return "now";
  if (s < 120) return `${s.toFixed(0)} s ago`;
  if (s < 7200) return `${(s / 60).toFixed(0)} min ago`;
  return new Date(ts * 1000).toLocaleString();
}
function fmtTime(ts) { return ts ? new Date(ts * 1000).toLocaleTimeString() : ""; }

/* ---- fleet ------------------------------------------------------------------------- */
const rows = new Map();   // sensor id → <tr>, reused between refreshes

function renderCounts(counts) {
  const nav = $("#counts");
  nav.replaceChildren(...HEALTHS.map((h) => el("button", {
    class: "bg-" + h, type: "button", dataset: { health: h },
    onclick: () => { $("#health").value = st.health === h ? "" : h; onFilter(); },
  }, `${counts[h] || 0} ${h}`)));
}

function row(s) {
  let tr = rows.get(s.sensor_id);
  if (!tr) {
    tr = el("tr", { onclick: () => { location.hash = "#/sensor/" + encodeURIComponent(s.sensor_id); } },
      el("td"), el("td", {}, el("span")), el("td", { class: "num" }), el("td"), el("td"));
    rows.set(s.sensor_id, tr);
  }
  tr.dataset.sensor = s.sensor_id;
  tr.dataset.health = s.health;
  tr.dataset.unit = s.unit || "";
  const [id, health, value, seen, alerts] = tr.children;
  id.textContent = s.sensor_id;
  health.firstChild.className = "health " + s.health;
  health.firstChild.textContent = s.health;
  value.textContent = fmtValue(s.last_value) + (s.unit ? " " + s.unit : "");
  seen.textContent = fmtAgo(s.last_seen);
  alerts.textContent = s.active_alerts.join(", ");
  return tr;
}

async function loadFleet() {
  const p = new URLSearchParams({ sort: st.sort, desc: st.desc, offset: st.offset, limit: st.limit });
  if (st.q) p.set("q", st.q);
  if (st.health) p.set("health", st.health);
  const page = await api("/api/sensors?" + p);
  renderCounts(page.counts);
  const body = $("#sensors tbody");
  const wanted = page.items.map(row);
  // incremental: move/insert only what changed, drop rows that left the page
  wanted.forEach((tr, i) => { if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null); });
  while (body.children.length > wanted.length) body.lastChild.remove();
  if (rows.size > 4 * st.limit) {
    const keep = new Set(page.items.map((s) => s.sensor_id));
    for (const id of rows.keys()) if (!keep.has(id)) rows.delete(id);
  }
  const last = Math.min(page.offset + page.items.length, page.total);
  $("#page-info").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "no sensors";
  $("#prev").disabled = st.offset === 0;
  $("#next").disabled = last >= page.total;
  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.classList.toggle("sorted", th.dataset.sort === st.sort);
    th.classList.toggle("desc", th.dataset.sort === st.sort && st.desc);
  }
}

/* Stale models: a banner over the fleet naming the most drifted (GET /api/models/health). */
async function loadModelHealth() {
  const page = await api("/api/models/health?stale=true&limit=5");
  const banner = $("#stale-banner");
  banner.hidden = page.stale === 0;
  if (!page.stale) return;
  const named = page.items.map((m) => `${m.sensor_id} (${m.reasons.join(", ")}` +
    (m.drift === null ? ")" : `, drift ${m.drift.toFixed(2)})`));
  const more = page.stale > named.length ? ` and ${page.stale - named.length} more` : "";
  banner.textContent = `⚠ ${page.stale} sensor model${page.stale === 1 ? "" : "s"} look stale: ` +
    named.join(", ") + more;
}

let fleetPending = null;
function scheduleFleet() {
  if (fleetPending) return;
  fleetPending = setTimeout(() => {
    fleetPending = null;
    loadFleet().catch(console.error);
    loadModelHealth().catch(console.error);
    if (!st.sensor && !st.asset) loadAssets().catch(console.error);
  }, 200);
}

function onFilter() {
  st.q = $("#q").value.trim();
  st.health = $("#health").value;
  st.offset = 0;
  scheduleFleet();
}

/* ---- alert feed -------------------------------------------------------------------- */
const alertKey = (a) => a.id || [a.sensor_id, a.detector, a.state, a.alert_ts].join("|");

function alertItem(a) {
  const act = a.state === "raised" ? st.active.get(key(a.sensor_id, a.detector)) : null;
  const current = act && (act.raised_at === null || Math.abs(act.raised_at - a.alert_ts) < 1e-6);
  const li = el("li", {
    class: `${a.state} ${a.severity}`,
    dataset: { sensor: a.sensor_id, detector: a.detector, state: a.state, ts: a.alert_ts, key: alertKey(a) },
  },
  el("div", {}, el("b", {}, a.sensor_id), ` ${a.detector} ${a.state}`,
    a.value !== null && a.value !== undefined ? ` ${a.value.toFixed(1)}` : "",
    a.severity === "critical" && a.state === "raised" ? " — critical" : ""),
  el("div", { class: "meta" }, `${fmtTime(a.alert_ts)} ${a.message || ""}`));
  if (a.suppressed) {
    li.classList.add("suppressed");
    li.dataset.suppressed = a.suppressed;
    li.append(el("div", { class: "why" }, `suppressed — ${a.suppressed}`));
  }
  if (current) {
    li.dataset.active = "1";
    li.append(actions(act));
    li.classList.toggle("shelved", act.shelved);
  }
  if (a.state === "raised" && a.id) {
    li.dataset.id = a.id;
    li.append(feedbackBox(a.id));
  }
  li.addEventListener("click", (e) => {
    if (e.target.tagName !== "BUTTON") location.hash = "#/sensor/" + encodeURIComponent(a.sensor_id);
  });
  return li;
}

function actions(act) {
  const box = el("div", { class: "actions" });
  if (act.acknowledged) box.append(el("span", { class: "acked" }, "acknowledged "));
  else box.append(el("button", { type: "button", class: "ack", onclick: () => alertAction(act, "ack") }, "Acknowledge"));
  if (act.shelved) box.append(el("button", { type: "button", class: "unshelve", onclick: () => alertAction(act, "unshelve") }, `Unshelve (until ${fmtTime(act.shelved_until)})`));
  else box.append(el("button", { type: "button", class: "shelve", onclick: () => alertAction(act, "shelve") }, "Shelve 1 h"));
  return box;
}

/* Operator feedback: the verdict becomes a label for `models evaluate --labels feedback`. */
function feedbackBox(id) {
  const box = el("div", { class: "feedback" });
  const verdict = st.feedback.get(id);
  if (verdict) {
    box.append(el("span", { class: "verdict" }, verdict === "confirmed" ? "confirmed" : "false alarm"));
    return box;
  }
  box.append(
    el("button", { type: "button", class: "fb-confirmed", onclick: () => sendFeedback(id, "confirmed") }, "Confirm"),
    el("button", { type: "button", class: "fb-false", onclick: () => sendFeedback(id, "false_alarm") }, "False alarm"));
  return box;
}

async function sendFeedback(id, verdict) {
  const fb = await api(`/api/alerts/${encodeURIComponent(id)}/feedback`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ verdict }) });
  onFeedback(fb);
}

function onFeedback(fb) {
  st.feedback.set(fb.alert_id, fb.verdict);
  for (const li of document.querySelectorAll("#alerts li[data-id]")) {
    if (li.dataset.id === fb.alert_id) li.querySelector(".feedback").replaceWith(feedbackBox(fb.alert_id));
  }
}

async function alertAction(act, what) {
  const base = `/api/alerts/${encodeURIComponent(act.sensor_id)}/${encodeURIComponent(act.detector)}`;
  const opts = what === "ack" ? { method: "POST" }
    : what === "shelve" ? { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ seconds: 3600 }) }
    : { method: "DELETE" };
  const updated = await api(base + (what === "ack" ? "/ack" : "/shelve"), opts);
  onAlertState(updated);
}

function onAlertState(act) {
  st.active.set(key(act.sensor_id, act.detector), act);
  for (const li of document.querySelectorAll("#alerts li[data-active='1']")) {
    if (li.dataset.sensor === act.sensor_id && li.dataset.detector === act.detector) {
      li.querySelector(".actions").replaceWith(actions(act));
      li.classList.toggle("shelved", act.shelved);
    }
  }
  applyShelvedFilter();
}

function applyShelvedFilter() {
  const hide = $("#hide-shelved").checked;
  for (const li of document.querySelectorAll("#alerts li.shelved")) li.hidden = hide;
  for (const li of document.querySelectorAll("#alerts li:not(.shelved)")) li.hidden = false;
}

function addAlert(a) {
  const k = key(a.sensor_id, a.detector);
  if (a.state === "raised") {
    st.active.set(k, { sensor_id: a.sensor_id, detector: a.detector, severity: a.severity,
      raised_at: a.alert_ts, acknowledged: false, shelved: false, shelved_until: null });
  } else {
    st.active.delete(k);
    for (const li of document.querySelectorAll("#alerts li[data-active='1']")) {
      if (li.dataset.sensor === a.sensor_id && li.dataset.detector === a.detector) {
        delete li.dataset.active;
        li.classList.remove("shelved");
        li.querySelector(".actions")?.remove();
      }
    }
  }
  const list = $("#alerts");
  const item = alertItem(a);
  item.dataset.live = "1";  // from the event stream: kept if a feed load in flight misses it
  list.prepend(item);
  while (list.children.length > FEED_MAX) list.lastChild.remove();
  if (st.sensor === a.sensor_id && a.state === "raised") { st.marks.push(a); draw(); }
}

async function loadFeed() {
  const [active, recent] = await Promise.all([api("/api/alerts/active"), api("/api/alerts?limit=100")]);
  st.active = new Map(active.map((a) => [key(a.sensor_id, a.detector), a]));
  const given = await api("/api/feedback?limit=10000").catch(() => []);  // 409: no store keeps it
  st.feedback = new Map(given.map((f) => [f.alert_id, f.verdict]));
  // alerts streamed while these requests were answered may be newer than the list they got
  const listed = new Set(recent.map(alertKey));
  const newest = recent.length ? recent[0].alert_ts : -Infinity;
  const streamed = [...document.querySelectorAll("#alerts li[data-live='1']")]
    .filter((li) => !listed.has(li.dataset.key) && Number(li.dataset.ts) >= newest);
  $("#alerts").replaceChildren(...streamed, ...recent.map(alertItem));
  applyShelvedFilter();
}

/* ---- assets ------------------------------------------------------------------------- */
const COLORS = ["#5c6bc0", "#26a69a", "#ef6c00", "#8d6e63", "#ab47bc", "#c62828", "#00838f",
  "#9e9d24", "#6d4c41", "#1565c0"];

function leading(contrib, n) {
  return Object.entries(contrib).sort((a, b) => b[1] - a[1]).slice(0, n).filter((kv) => kv[1] > 0);
}

async function loadAssets() {
  let assets = [];
  try { assets = await api("/api/assets"); } catch (e) { return; }
  $("#assets").hidden = !!st.sensor || !!st.asset || assets.length === 0;
  $("#asset-table tbody").replaceChildren(...assets.map((a) => el("tr", {
    dataset: { asset: a.id, phase: a.phase, alarm: a.alarm ? "1" : "0" },
    onclick: () => { location.hash = "#/asset/" + encodeURIComponent(a.id); },
  }, el("td", {}, a.id), el("td", {}, el("span", { class: "phase " + a.phase }, a.phase)),
    el("td", { class: "num" }, String(a.sensors.length)), el("td", {}, a.alarm ? "alarm" : ""),
    el("td", {}, leading(a.contributions, 3).map(([s, x]) => `${s} ${Math.round(x * 100)}%`).join(", ")))));
}

async function loadAsset() {
  const id = st.asset;
  if (!id) return;
  const enc = encodeURIComponent(id).replace(/%2F/g, "/");
  const since = Date.now() / 1000 - st.windowS;
  try {
    const [a, hist] = await Promise.all([
      api(`/api/assets/${enc}`), api(`/api/assets/${enc}/readings?start=${since}&buckets=300`),
    ]);
    if (id !== st.asset) return;
    st.assetData = { asset: a, series: hist.series };
  } catch (e) {
    st.assetData = null;
    $("#asset-phase").textContent = "unknown asset";
  }
  showAsset();
}

function showAsset() {
  const d = st.assetData;
  if (!d) return;
  const a = d.asset;
  const ph = $("#asset-phase");
  ph.className = "phase " + a.phase; ph.textContent = a.phase; ph.dataset.phase = a.phase;
  $("#asset-alarm").textContent = a.alarm ? "alarm" : "";
  $("#bars").replaceChildren(...a.sensors.map((sid) => {
    const x = a.contributions[sid] || 0;
    return el("div", { class: "bar", dataset: { sensor: sid, share: x.toFixed(4) } },
      el("span", {}, sid), el("div", { class: "fill", style: `width:${(x * 100).toFixed(1)}%` }),
      el("span", { class: "num" }, `${Math.round(x * 100)}%`));
  }));
  $("#asset-legend").replaceChildren(...d.series.map((s, i) =>
    el("span", { style: `color:${COLORS[i % COLORS.length]}` }, "— " + s.name)));
  drawAsset();
}

function drawAsset() {
  const c = $("#asset-chart");
  const d = st.assetData;
  if (!c || $("#asset").hidden || !d) return;
  const w = c.clientWidth || 900, h = c.clientHeight || 320;
  const dpr = window.devicePixelRatio || 1;
  if (c.width !== w * dpr) { c.width = w * dpr; c.height = h * dpr; }
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const all = d.series.flatMap((s) => s.buckets.map((b) => b.ts));
  const t0 = Math.min(...all), t1 = Math.max(...all);
  let points = 0;
  d.series.forEach((s, i) => {
    const vals = s.buckets.map((b) => b.mean);
    if (!vals.length) return;
    const lo = Math.min(...vals), hi = Math.max(...vals), span = hi - lo || 1;
    g.strokeStyle = COLORS[i % COLORS.length];
    g.beginPath();
    s.buckets.forEach((b, j) => {
      const x = 10 + (w - 20) * (t1 > t0 ? (b.ts - t0) / (t1 - t0) : 0.5);
      const y = h - 12 - (h - 24) * ((b.mean - lo) / span);
      if (j) g.lineTo(x, y); else g.moveTo(x, y);
    });
    g.stroke();
    points += vals.length;
  });
  c.dataset.series = String(d.series.filter((s) => s.buckets.length).length);
  c.dataset.points = String(points);
}

/* ---- maintenance windows ---------------------------------------------------------- */
function windowWhen(w) {
  if (w.at !== null) return `${w.days.length ? w.days.join(",") : "daily"} ${w.at} for ${Math.round(w.duration / 60)} min (${w.timezone})`;
  return `${new Date(w.start).toLocaleString()} → ${new Date(w.end).toLocaleString()}`;
}

function windowItem(w) {
  const who = [...w.sensors, ...w.assets.map((a) => "asset " + a), ...w.groups.map((g) => "group " + g)];
  const li = el("li", { class: w.open ? "open" : "", dataset: { window: w.id, source: w.source, open: w.open ? "1" : "0" } },
    el("b", {}, w.reason || w.id), ` ${who.join(", ") || "all sensors"}`,
    el("div", { class: "meta" }, windowWhen(w)));
  if (w.source === "api") {
    li.prepend(el("button", { type: "button", class: "remove", onclick: () => removeWindow(w.id) }, "Remove"));
  }
  return li;
}

async function loadWindows() {
  const windows = await api("/api/maintenance");
  $("#windows").replaceChildren(...windows.map(windowItem));
}

async function removeWindow(id) {
  const r = await fetch(`/api/maintenance/${encodeURIComponent(id)}`, { method: "DELETE" });
  if (!r.ok && r.status !== 404) throw new Error(`${r.status} remove ${id}`);
  await loadWindows();
}

async function addWindow(e) {
  e.preventDefault();
  const now = new Date();
  const minutes = +$("#win-minutes").value;
  const body = {
    sensors: $("#win-sensors").value.split(/[\s,]+/).filter(Boolean),
    reason: $("#win-reason").value,
    start: now.toISOString(),
    end: new Date(now.getTime() + minutes * 60000).toISOString(),
  };
  const r = await fetch("/api/maintenance", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (!r.ok) {
    const detail = await r.json().catch(() => ({}));
    $("#win-error").textContent = typeof detail.detail === "string" ? detail.detail : `error ${r.status}`;
    return;
  }
  $("#win-error").textContent = "";
  $("#window-form").reset();
  await loadWindows();
}

/* ---- sensor view ------------------------------------------------------------------- */
/* ---- configuration and shadow candidate ---------------------------------------------- */
const SHADOW_ROWS = 20;

async function loadShadow() {
  let status, report;
  try { [status, report] = await Promise.all([api("/api/status"), api("/api/shadow")]); }
  catch (e) { return; }
  const model = status.model_version ? `, model ${status.model_version}` : "";
  $("#config-version").textContent = `configuration ${status.config_version}${model}`;
  $("#shadow").hidden = !report.enabled;
  if (!report.enabled) return;
  const t = report.totals;
  $("#shadow-label").textContent = report.label;
  $("#shadow-summary").textContent =
    `${report.detectors.shadow.join(", ")}: both ${t.both}, live only ${t.live_only}, ` +
    `shadow only ${t.shadow_only} (±${report.tolerance} seqs)`;
  const rows = [...report.sensors].sort((a, b) =>
    (b.live_only + b.shadow_only) - (a.live_only + a.shadow_only) || b.both - a.both);
  $("#shadow-table tbody").replaceChildren(...rows.slice(0, SHADOW_ROWS).map((r) => el("tr", {
    dataset: { sensor: r.sensor_id, detector: r.detector },
    onclick: () => { location.hash = "#/sensor/" + encodeURIComponent(r.sensor_id); },
  }, el("td", {}, r.sensor_id), el("td", {}, r.detector), el("td", { class: "num" }, String(r.both)),
    el("td", { class: "num" }, String(r.live_only)), el("td", { class: "num" }, String(r.shadow_only)))));
}

async function loadSensor() {
  const id = st.sensor;
  if (!id) return;
  const enc = encodeURIComponent(id);
  const since = Date.now() / 1000 - st.windowS;
  try {
    const [s, hist, alerts] = await Promise.all([
      api(`/api/sensors/${enc}`),
      api(`/api/sensors/${enc}/readings?start=${since}&buckets=600`),
      api(`/api/alerts?sensor=${enc}&state=raised&since=${since}&limit=500`),
    ]);
    if (id !== st.sensor) return;
    showSensorState(s);
    st.points = hist.buckets.map((b) => ({ ts: b.ts, v: b.mean, lo: b.min, hi: b.max }));
    st.marks = alerts;
  } catch (e) {
    $("#sensor-value").textContent = "unknown sensor (no reading yet)";
    st.points = []; st.marks = []; st.band = null;
  }
  draw();
}

function showSensorState(s) {
  const h = $("#sensor-health");
  h.className = "health " + s.health;
  h.textContent = s.health;
  h.dataset.health = s.health;
  const unit = s.unit ? " " + s.unit : "";
  $("#sensor-value").textContent = `${fmtValue(s.last_value)}${unit} · ${fmtAgo(s.last_seen)}`;
  st.band = s.band;
}

async function refreshSensor() {
  if (!st.sensor) return;
  try { showSensorState(await api(`/api/sensors/${encodeURIComponent(st.sensor)}`)); draw(); } catch (e) { /* not seen yet */ }
}

function onReading(r) {
  if (r.sensor_id !== st.sensor) return;
  st.points.push({ ts: r.ts, v: r.value, lo: r.value, hi: r.value });
  const cut = Date.now() / 1000 - st.windowS;
  while (st.points.length && st.points[0].ts < cut) st.points.shift();
  if (st.points.length > 5000) st.points.splice(0, st.points.length - 5000);
  $("#sensor-value").textContent = `${fmtValue(r.value)} · now`;
  draw();
}

function draw() {
  const c = $("#chart");
  if (!c || $("#sensor").hidden) return;
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth || 900, h = c.clientHeight || 320;
  if (c.width !== w * dpr) { c.width = w * dpr; c.height = h * dpr; }
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const now = Date.now() / 1000, t0 = now - st.windowS;
  const pad = { l: 48, r: 10, t: 10, b: 22 };
  const vals = st.points.flatMap((p) => [p.lo, p.hi]);
  const band = st.band || {};
  for (const x of [band.low, band.high, band.threshold]) if (x !== null && x !== undefined) vals.push(x);
  for (const m of st.marks) if (m.value !== null) vals.push(m.value);
  let lo = Math.min(...vals), hi = Math.max(...vals);
  if (!isFinite(lo)) { lo = 0; hi = 1; }
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const span = hi - lo; lo -= span * 0.05; hi += span * 0.05;
  const X = (t) => pad.l + (t - t0) / (now - t0) * (w - pad.l - pad.r);
  const Y = (v) => h - pad.b - (v - lo) / (hi - lo) * (h - pad.t - pad.b);
  g.font = "11px system-ui"; g.fillStyle = "#757575"; g.strokeStyle = "#eeeeee";
  for (let i = 0; i <= 4; i++) {
    const v = lo + (hi - lo) * i / 4, y = Y(v);
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(w - pad.r, y); g.stroke();
    g.fillText(v.toFixed(1), 4, y + 4);
  }
  g.fillText(fmtTime(t0), pad.l, h - 6);
  g.fillText(fmtTime(now), w - pad.r - 60, h - 6);
  if (band.low !== null && band.low !== undefined && band.high !== null) {
    g.fillStyle = "rgba(25, 118, 210, .15)";
    g.fillRect(pad.l, Y(band.high), w - pad.l - pad.r, Y(band.low) - Y(band.high));
  }
  if (band.threshold !== null && band.threshold !== undefined) {
    g.strokeStyle = "#c62828"; g.setLineDash([6, 4]);
    g.beginPath(); g.moveTo(pad.l, Y(band.threshold)); g.lineTo(w - pad.r, Y(band.threshold)); g.stroke();
    g.setLineDash([]);
  }
  g.strokeStyle = "rgba(25, 118, 210, .35)";
  for (const p of st.points) if (p.hi > p.lo) { g.beginPath(); g.moveTo(X(p.ts), Y(p.lo)); g.lineTo(X(p.ts), Y(p.hi)); g.stroke(); }
  g.strokeStyle = "#1976d2"; g.lineWidth = 1.5; g.beginPath();
  st.points.forEach((p, i) => (i ? g.lineTo(X(p.ts), Y(p.v)) : g.moveTo(X(p.ts), Y(p.v))));
  g.stroke(); g.lineWidth = 1;
  g.fillStyle = "#c62828";
  for (const m of st.marks) {
    const t = m.reading_ts || m.alert_ts;
    if (t < t0) continue;
    const y = m.value !== null ? Y(m.value) : pad.t + 6;
    g.beginPath(); g.arc(X(t), y, 4, 0, 2 * Math.PI); g.fill();
  }
  c.dataset.points = String(st.points.length);
  c.dataset.marks = String(st.marks.length);
}

/* ---- live events and routing ------------------------------------------------------- */
function connect() {
  if (st.es) st.es.close();
  const url = "/api/events" + (st.sensor ? "?sensor=" + encodeURIComponent(st.sensor) : "");
  const es = new EventSource(url);
  st.es = es;
  const live = $("#live");
  let opened = false;
  es.addEventListener("hello", () => {
    live.className = "live on"; live.textContent = "live";
    if (opened) { loadFeed().catch(console.error); scheduleFleet(); }  // a reconnect: catch up
    opened = true;
  });
  es.onerror = () => {
    live.className = "live off"; live.textContent = "reconnecting";
    // a refused stream (503: every slot taken, or 429) is not retried by the browser itself
    if (es.readyState === EventSource.CLOSED && st.es === es) setTimeout(connect, 5000);
  };
  es.addEventListener("alert", (e) => { addAlert(JSON.parse(e.data)); scheduleFleet(); });
  es.addEventListener("health", (e) => {
    const d = JSON.parse(e.data);
    const tr = rows.get(d.sensor_id);
    if (tr) row({ ...rowData(tr), health: d.health });
    if (d.sensor_id === st.sensor) refreshSensor();
    scheduleFleet();
  });
  es.addEventListener("sensors", scheduleFleet);
  es.addEventListener("alert-state", (e) => onAlertState(JSON.parse(e.data)));
  es.addEventListener("feedback", (e) => onFeedback(JSON.parse(e.data)));
  es.addEventListener("reading", (e) => onReading(JSON.parse(e.data)));
  es.addEventListener("overflow", () => { es.close(); setTimeout(connect, 1000); });
}

function rowData(tr) {
  const [id, , value, , alerts] = tr.children;
  const v = parseFloat(value.textContent);
  return { sensor_id: id.textContent, last_value: isNaN(v) ? null : v, unit: tr.dataset.unit || null,
    last_seen: null, active_alerts: alerts.textContent ? alerts.textContent.split(", ") : [] };
}

function route() {
  const m = location.hash.match(/^#\/sensor\/(.+)$/);
  const sensor = m ? decodeURIComponent(m[1]) : null;
  const am = location.hash.match(/^#\/asset\/(.+)$/);
  st.asset = am ? decodeURIComponent(am[1]) : null;
  const changed = sensor !== st.sensor;
  st.sensor = sensor;
  $("#fleet").hidden = !!sensor || !!st.asset;
  $("#sensor").hidden = !sensor;
  $("#asset").hidden = !st.asset;
  $("#assets").hidden = true;
  clearInterval(st.timer);
  if (st.asset) {
    $("#asset-title").textContent = st.asset;
    st.assetData = null;
    loadAsset();
    st.timer = setInterval(loadAsset, 2000);
  } else if (sensor) {
    $("#sensor-title").textContent = sensor;
    st.points = []; st.marks = []; st.band = null;
    loadSensor();
    st.timer = setInterval(refreshSensor, 2000);
  } else {
    scheduleFleet();
  }
  if (changed || !st.es) connect();
}

function init() {
  $("#q").addEventListener("input", onFilter);
  $("#health").addEventListener("change", onFilter);
  $("#prev").addEventListener("click", () => { st.offset = Math.max(0, st.offset - st.limit); scheduleFleet(); });
  $("#next").addEventListener("click", () => { st.offset += st.limit; scheduleFleet(); });
  $("#window").addEventListener("change", (e) => { st.windowS = +e.target.value; loadSensor(); });
  $("#hide-shelved").addEventListener("change", applyShelvedFilter);
  for (const th of document.querySelectorAll("th[data-sort]")) {
    th.addEventListener("click", () => {
      st.desc = st.sort === th.dataset.sort ? !st.desc : false;
      st.sort = th.dataset.sort;
      scheduleFleet();
    });
  }
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", draw);
  window.addEventListener("resize", drawAsset);
  st.fleetTimer = setInterval(scheduleFleet, 3000);  // counts in the header, last-seen ages
  loadFeed().catch(console.error);
  $("#window-form").addEventListener("submit", (e) => addWindow(e).catch(console.error));
  loadWindows().catch(console.error);
  setInterval(() => loadWindows().catch(console.error), 30000);  // windows open and close
  loadShadow().catch(console.error);
  setInterval(() => loadShadow().catch(console.error), 5000);  // agreement, after a reload
  route();
}

init();
