// One key: observations, the one-step-ahead forecast and its 90% interval band, the anomaly
// score on a second axis, incidents shaded with their alert ids, model changes and drift marked.
// New points arrive over server-sent events and are appended without a reload.
"use strict";
Vigil.header("keys");
const $ = id => document.getElementById(id);
const key = decodeURIComponent(location.pathname.split("/ui/keys/")[1] || "");
$("key").textContent = key;
document.title = "Vigil · " + key;

const view = { points: [], incidents: [], changes: [], drifts: [], events: [], latest: null,
               lastId: null, lastEventId: null, source: null, chart: null, range: 0 };
window.vigil = view;  // for people poking around (and the browser test)

// points -> uPlot columns: x, observed, forecast, lower, upper, score. The forecast made at
// point i is for point i+1, so it is drawn one step later; the newest forecast gets a point of
// its own one step past the last observation.
function columns() {
  const pts = view.points;
  const x = [], y = [], f = [], lo = [], hi = [], s = [];
  for (let i = 0; i < pts.length; i++) {
    const prev = i > 0 ? pts[i - 1] : null;
    x.push(pts[i].t); y.push(pts[i].y); s.push(pts[i].s);
    f.push(prev ? prev.f : null); lo.push(prev ? prev.l : null); hi.push(prev ? prev.u : null);
  }
  if (pts.length) {
    const last = pts[pts.length - 1];
    const step = pts.length > 1 ? last.t - pts[pts.length - 2].t : 60;
    x.push(last.t + (step > 0 ? step : 60)); y.push(null); s.push(null);
    f.push(last.f); lo.push(last.l); hi.push(last.u);
  }
  return [x, y, f, lo, hi, s];
}

function overlays(u) {
  const ctx = u.ctx, top = u.bbox.top, height = u.bbox.height;
  const [xmin, xmax] = [u.scales.x.min, u.scales.x.max];
  const px = t => u.valToPos(t, "x", true);
  const lastT = view.points.length ? view.points[view.points.length - 1].t : xmax;
  ctx.save();
  ctx.font = `${Math.round(11 * devicePixelRatio)}px system-ui, sans-serif`;
  let row = 0;
  for (const inc of view.incidents) {
    const start = inc.start, end = inc.end ?? lastT;
    if (start == null || end < xmin || start > xmax) continue;
    const a = px(Math.max(start, xmin)), b = px(Math.min(end, xmax));
    ctx.fillStyle = inc.status === "firing" ? "rgba(217,45,32,0.16)" : "rgba(217,45,32,0.09)";
    ctx.fillRect(a, top, Math.max(2, b - a), height);
    ctx.fillStyle = "#b42318";  // ids of neighbouring incidents on staggered lines
    ctx.fillText(inc.alert_id, a + 3, top + (12 + 13 * (row++ % 3)) * devicePixelRatio);
  }
  ctx.setLineDash([5, 4]);
  for (const c of view.changes) {
    if (c.t < xmin || c.t > xmax) continue;
    const x = px(c.t);
    ctx.strokeStyle = "#7a5af8"; ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
    ctx.fillStyle = "#6941c6"; ctx.fillText("model " + c.version, x + 3, top + height - 6);
  }
  ctx.setLineDash([2, 3]);
  for (const d of view.drifts) {
    if (d.timestamp == null || d.timestamp < xmin || d.timestamp > xmax) continue;
    const x = px(d.timestamp);
    ctx.strokeStyle = "#dc6803"; ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
    ctx.fillStyle = "#b54708"; ctx.fillText("drift " + (d.direction || ""), x + 3, top + 52 * devicePixelRatio);
  }
  ctx.restore();
}

function makeChart() {
  const width = Math.max(400, $("chart").clientWidth - 14);
  const opts = {
    width, height: 380,
    scales: { x: { time: true }, score: { range: [0, 1] } },
    tzDate: ts => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),  // data times are shown in UTC
    series: [
      {},
      { label: "observed", stroke: "#1d2939", width: 1.5 },
      { label: "forecast", stroke: "#2463eb", width: 1.5, dash: [6, 3] },
      { label: "lower 90%", stroke: "rgba(36,99,235,0.35)", width: 1 },
      { label: "upper 90%", stroke: "rgba(36,99,235,0.35)", width: 1 },
      { label: "anomaly score", stroke: "#d92d20", width: 1, scale: "score" },
    ],
    bands: [{ series: [4, 3], fill: "rgba(36,99,235,0.14)" }],
    axes: [{}, { label: "value" }, { scale: "score", side: 1, label: "score", grid: { show: false } }],
    hooks: { draw: [overlays] },
  };
  view.chart = new uPlot(opts, columns(), $("chart"));
}

function derive() {
  view.incidents = foldIncidents(view.events);
  view.drifts = view.events.filter(e => e.kind === "drift");
  const changes = []; let last = null;
  for (const p of view.points) {
    if (p.v && p.v !== last) { if (last !== null) changes.push({ t: p.t, version: p.v }); last = p.v; }
  }
  view.changes = changes;
}

function foldIncidents(events) {
  const spans = new Map();
  for (const e of events) {
    if (e.kind !== "alert" || !e.alert_id) continue;
    if (!spans.has(e.alert_id)) spans.set(e.alert_id, { alert_id: e.alert_id, start: e.start, end: null, status: "firing", severity: e.severity });
    if (e.status === "resolved") { const s = spans.get(e.alert_id); s.status = "resolved"; s.end = e.end; }
  }
  return [...spans.values()];
}

function render() {
  derive();
  const data = columns();
  if (!view.chart) makeChart(); else view.chart.setData(data);
  const last = view.points[view.points.length - 1];
  $("points").textContent = view.points.length;
  if (last) {
    $("last-value").textContent = Vigil.num(last.y, 6);
    $("next-forecast").textContent = `${Vigil.num(last.f, 5)} [${Vigil.num(last.l, 4)}, ${Vigil.num(last.u, 4)}]`;
    $("last-score").textContent = Vigil.num(last.s, 4);
    $("model").textContent = last.v || "–";
    $("last-ts").textContent = Vigil.when(last.t);
  }
  const rows = [
    ...view.incidents.map(i => ({ t: i.start, what: `<span class="pill ${i.status}">${i.status}</span> ${Vigil.esc(i.severity)}`,
      detail: `alert ${Vigil.esc(i.alert_id)}${i.end ? " until " + Vigil.when(i.end) : ""}` })),
    ...view.changes.map(c => ({ t: c.t, what: "model change", detail: Vigil.esc(c.version) })),
    ...view.drifts.map(d => ({ t: d.timestamp, what: "drift", detail: `${Vigil.esc(d.direction)} (${Vigil.esc(d.method)}, ${Vigil.num(d.statistic)})` })),
  ].sort((a, b) => (b.t || 0) - (a.t || 0));
  $("events").querySelector("tbody").innerHTML = rows.map(r =>
    `<tr><td>${Vigil.when(r.t)}</td><td>${r.what}</td><td>${r.detail}</td></tr>`).join("") ||
    `<tr><td colspan="3" class="muted">none kept for this key</td></tr>`;
}

async function load() {
  const params = new URLSearchParams();
  if (view.range > 0 && view.points.length) {
    params.set("since", String(view.points[view.points.length - 1].t - view.range));
  }
  try {
    const data = await Vigil.api(`/api/keys/${encodeURIComponent(key)}/history?${params}`);
    view.points = data.points; view.events = data.events; view.latest = data.latest;
    view.lastId = data.last_id; view.lastEventId = data.last_event_id;
    $("group").textContent = data.group || "–";
    if (!data.points.length) Vigil.say("no history kept for this key yet: waiting for predictions …");
    else Vigil.say("");
    render();
    listen();
  } catch (e) { Vigil.say(e.message, true); }
}

function listen() {
  if (view.source) view.source.close();
  const params = new URLSearchParams();
  if (view.lastId) params.set("after", view.lastId);
  if (view.lastEventId) params.set("events_after", view.lastEventId);
  const source = new EventSource(`/api/keys/${encodeURIComponent(key)}/events?${params}`);
  view.source = source;
  source.onopen = () => { $("live").textContent = "live"; $("live").className = "pill live"; };
  source.onerror = () => { $("live").textContent = "reconnecting"; $("live").className = "pill warning"; };
  source.addEventListener("point", ev => {
    const p = JSON.parse(ev.data);
    view.lastId = p.id;
    view.points.push(p);
    if (view.range > 0) {
      const since = p.t - view.range;
      while (view.points.length && view.points[0].t < since) view.points.shift();
    }
    if (view.points.length > 2000) view.points.shift();
    schedule();
  });
  for (const kind of ["alert", "drift"]) {
    source.addEventListener(kind, ev => { const e = JSON.parse(ev.data); view.events.push(e); view.lastEventId = e.id; schedule(); });
  }
}

let pending = false;
function schedule() {  // many points in one burst: draw once per frame
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; render(); });
}

$("range").onchange = () => {
  view.range = Number($("range").value);
  load();
};
window.addEventListener("resize", () => { if (view.chart) view.chart.setSize({ width: Math.max(400, $("chart").clientWidth - 14), height: 380 }); });
load();
