/* pulse board: renders the state documents of /events (server-sent events). No framework, no network
   beyond this server. Every text from the data goes in through textContent, never as HTML. */
"use strict";

const EVENT_COLORS = { play: "#34d399", pause: "#fbbf24", finish: "#7c9cff", click: "#f472b6" };
const SPARE_COLORS = ["#22d3ee", "#a3e635", "#fb923c", "#c084fc", "#94a3b8"];
const TYPE_ORDER = ["podcast", "newsletter", "video"];
const SVG = "http://www.w3.org/2000/svg";
let previousTop = [];

function $(id) { return document.getElementById(id); }
function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}
function fmtInt(n) { return n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US"); }
function fmtRate(n) { return n === null || n === undefined ? "–" : (n >= 100 ? fmtInt(n) : n.toFixed(1)); }
function fmtDuration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 3600) return Math.floor(s / 60) + " m " + String(Math.floor(s % 60)).padStart(2, "0") + " s";
  return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " m";
}
function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}
function colorOf(type, index) { return EVENT_COLORS[type] || SPARE_COLORS[index % SPARE_COLORS.length]; }
function replace(node, children) { node.replaceChildren(...children); }

function renderFreshness(board) {
  const pill = $("freshness");
  if (!board || board.freshness_s === null || board.freshness_s === undefined) {
    pill.textContent = "no events counted yet";
    pill.className = "pill warn";
    return;
  }
  const f = board.freshness_s;
  pill.textContent = "newest event " + fmtDuration(f) + " ago";
  pill.className = "pill " + (f < 5 ? "ok" : f < 60 ? "warn" : "bad");
}

function renderChart(series) {
  const box = $("chart");
  const width = Math.max(280, box.clientWidth || 600), height = box.clientHeight || 220;
  const pad = { l: 44, r: 8, t: 10, b: 24 };
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
  const legend = $("chart-legend");
  if (!series || !series.points.length) { replace(box, [root]); replace(legend, []); return; }
  const types = series.types;
  const totals = series.points.map(p => types.reduce((a, t) => a + (p.counts[t] || 0), 0));
  const max = Math.max(1, ...totals);
  const step = niceStep(max / 4);
  const top = Math.ceil(max / step) * step;
  const plotW = width - pad.l - pad.r, plotH = height - pad.t - pad.b;
  const y = v => pad.t + plotH - (v / top) * plotH;
  const axis = svg("g", { class: "axis" });
  for (let v = 0; v <= top + 1e-9; v += step) {
    axis.append(svg("line", { class: "grid-line", x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v) }));
    const label = svg("text", { x: pad.l - 6, y: y(v) + 4, "text-anchor": "end" });
    label.textContent = fmtInt(v);
    axis.append(label);
  }
  const n = series.points.length, slot = plotW / n, barW = Math.max(1, slot * 0.78);
  const bars = svg("g", {});
  series.points.forEach((p, i) => {
    let base = 0;
    types.forEach((t, j) => {
      const v = p.counts[t] || 0;
      if (!v) return;
      const rect = svg("rect", { x: pad.l + i * slot + (slot - barW) / 2, y: y(base + v), width: barW,
        height: Math.max(0.5, y(base) - y(base + v)), fill: colorOf(t, j), rx: Math.min(2, barW / 4) });
      const tip = svg("title", {});
      tip.textContent = `${new Date(p.t * 1000).toLocaleTimeString()} · ${t}: ${fmtInt(v)}`;
      rect.append(tip);
      bars.append(rect);
      base += v;
    });
  });
  // Time labels: minutes before now, every 2 minutes (every 5 in a narrow window).
  const now = series.points[n - 1].t + series.bucket_s;
  const every = width < 520 ? 300 : 120;
  for (let back = 0; back <= series.window_s; back += every) {
    const t = now - back, i = (t - series.points[0].t) / series.bucket_s;
    if (i < 0) break;
    const label = svg("text", { x: pad.l + Math.min(n, i) * slot, y: height - 6, "text-anchor": back === 0 ? "end" : "middle" });
    label.textContent = back === 0 ? "now" : `−${back / 60} min`;
    axis.append(label);
  }
  root.append(axis, bars);
  replace(box, [root]);
  replace(legend, types.map((t, j) => { const s = el("span", {}, t); s.style.setProperty("--c", colorOf(t, j)); return s; }));
  const total = totals.reduce((a, b) => a + b, 0);
  $("chart-total").textContent = `${fmtInt(total)} events counted in the window, per ${series.bucket_s} s`;
}
function niceStep(raw) {
  const mag = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1))));
  for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * mag) return m * mag;
  return 10 * mag;
}

function badge(type) { return el("span", { class: "badge " + (TYPE_ORDER.includes(type) ? type : "none") }, type || "?"); }

function renderTop(board) {
  const body = $("top-table").querySelector("tbody");
  const rows = board ? board.top : [];
  $("top-empty").hidden = rows.length > 0;
  $("members").textContent = board ? `${fmtInt(board.members)} content in the window` : "";
  const max = rows.length ? Math.max(...rows.map(r => r.seconds), 1e-9) : 1;
  const before = new Set(previousTop);
  replace(body, rows.map((r, i) => {
    const tr = el("tr", { "data-content-id": r.content_id });
    if (previousTop.length && !before.has(r.content_id)) tr.className = "new";
    const known = TYPE_ORDER.includes(r.content_type) ? r.content_type : "none";
    const title = el("td", { class: "title t-" + known, title: `${r.title} (${r.content_type || "no type"})` });
    const fill = el("span", { class: "fill" });
    fill.style.width = (100 * r.seconds / max).toFixed(1) + "%";
    title.append(fill, el("span", { class: "t" }, r.title));
    const type = el("td", { class: "type" });
    type.append(badge(r.content_type));
    tr.append(el("td", { class: "num muted" }, i + 1), title, type, el("td", { class: "num" }, fmtDuration(r.seconds)),
      el("td", { class: "num ev" }, fmtInt(r.events)));
    return tr;
  }));
  previousTop = rows.map(r => r.content_id);
}

function renderByType(board) {
  const box = $("by-type");
  const types = board ? Object.keys(board.by_type).sort((a, b) => TYPE_ORDER.indexOf(a) - TYPE_ORDER.indexOf(b)) : [];
  replace(box, types.map(t => {
    const div = el("div");
    const h = el("h3");
    h.append(badge(t));
    const rows = board.by_type[t];
    const list = el("ol");
    if (!rows.length) list.append(el("li", { class: "muted" }, "nothing in the window"));
    rows.slice(0, 5).forEach(r => {
      const li = el("li", { title: r.title });
      li.append(el("span", { class: "t" }, r.title), el("span", { class: "v" }, fmtDuration(r.seconds)));
      list.append(li);
    });
    div.append(h, list);
    return div;
  }));
}

function renderBars(id, pairs, colorFn) {
  const list = $(id);
  const max = pairs.length ? Math.max(...pairs.map(p => p[1]), 1) : 1;
  if (!pairs.length) { replace(list, [el("li", { class: "muted" }, "nothing in the window")]); return; }
  replace(list, pairs.map(([name, n], i) => {
    const li = el("li", { title: name });
    const track = el("span", { class: "track" });
    const bar = el("i");
    bar.style.width = (100 * n / max).toFixed(1) + "%";
    if (colorFn) bar.style.background = colorFn(name, i);
    track.append(bar);
    li.append(el("span", { class: "name" }, name), track, el("span", { class: "n" }, fmtInt(n)));
    return li;
  }));
}

function fact(dl, label, value, cls) {
  dl.append(el("dt", {}, label));
  const dd = el("dd", cls ? { class: cls } : {}, value);
  dl.append(dd);
}

function renderPipeline(state) {
  const status = state.status, rates = state.rates || { sinks: {} };
  const dl = $("pipeline"), health = $("health"), body = $("sinks").querySelector("tbody"), runs = $("runs");
  replace(dl, []);
  if (!status) {
    health.textContent = state.errors && state.errors.postgres ? "unknown" : "board only";
    health.className = "pill warn";
    fact(dl, "status", state.errors && state.errors.postgres ? "PostgreSQL unreachable" : "not read (--no-status)");
    replace(body, []);
    replace(runs, []);
    return;
  }
  health.textContent = status.healthy ? "healthy" : "unhealthy";
  health.className = "pill " + (status.healthy ? "ok" : "bad");
  const slot = status.slot, rt = status.runtime;
  if (slot) {
    const walCls = ["unreserved", "lost"].includes(slot.wal_status) ? "bad-text" : slot.wal_status === "extended" ? "warn-text" : "";
    fact(dl, "slot", `${slot.name} · ${slot.active ? "active" : "inactive"} · wal ${slot.wal_status || "–"}`, walCls || (slot.active ? "" : "warn-text"));
    fact(dl, "slot lag", `${fmtBytes(slot.lag_bytes || 0)}${rt ? " · " + fmtDuration(rt.lag_seconds) : ""}`);
    fact(dl, "retained WAL", fmtBytes(slot.retained_bytes) + (slot.safe_wal_size === null || slot.safe_wal_size === undefined
      ? " · no limit" : " · " + fmtBytes(slot.safe_wal_size) + " before loss"));
  } else {
    fact(dl, "slot", "missing", "bad-text");
  }
  if (rt) {
    fact(dl, "events in", `${fmtRate(rates.in)}/s · ${fmtInt(rt.events_in)} since start`);
    fact(dl, "report", `pid ${rt.pid} · ${fmtDuration(rt.age_s)} ago · ${fmtInt(rt.pending_txns)} txns pending`);
  }
  const sinks = rt ? Object.entries(rt.sinks || {}) : [];
  replace(body, sinks.map(([name, s]) => {
    const d = s.details || {};
    const tr = el("tr", { "data-sink": name, title: s.last_error ? "last error: " + s.last_error : `durable ${s.durable}` });
    const lag = s.lag_seconds;
    const nameCell = el("td", { class: s.last_error ? "bad-text" : "" }, name);
    nameCell.append(el("div", { class: "pos mono muted", title: "durable position (LSN#sequence)" }, s.durable));
    tr.append(nameCell,
      el("td", { class: "num" }, fmtRate(rates.sinks ? rates.sinks[name] : null)),
      el("td", { class: "num" + (lag > 5 ? " warn-text" : "") }, lag === undefined ? "–" : fmtDuration(lag)),
      el("td", { class: "num" }, fmtInt(s.queue_events)),
      el("td", { class: "num" }, d.backlog === undefined ? "–" : fmtInt(d.backlog) + (d.backlog ? " · " + fmtDuration(d.backlog_oldest_s) : "")),
      el("td", { class: "num" + (d.dead_lettered ? " bad-text" : "") }, d.dead_lettered === undefined ? "–" : fmtInt(d.dead_lettered)));
    return tr;
  }));
  const items = [];
  const snap = status.snapshot;
  if (snap && snap.state !== "done") items.push(["initial snapshot", snap]);
  (status.backfills || []).filter(b => b.kind !== "snapshot" && ["pending", "running"].includes(b.state))
    .forEach(b => items.push(["backfill " + b.run_id, b]));
  replace(runs, items.map(([label, r]) => {
    const total = r.total_estimate || 0;
    const ratio = total ? Math.min(1, r.rows_read / total) : (r.state === "done" ? 1 : 0);
    const div = el("div", { class: "run" });
    const head = el("div", { class: "label" });
    head.append(el("span", {}, `${label} · ${r.state}`), el("span", { class: "muted" }, `${fmtInt(r.rows_read)} / ${fmtInt(total)} rows · ${(100 * ratio).toFixed(0)}%`));
    const bar = el("div", { class: "progress" });
    const fill = el("i");
    fill.style.width = (100 * ratio).toFixed(1) + "%";
    bar.append(fill);
    div.append(head, bar);
    return div;
  }));
}

function renderAlerts(state) {
  const out = [];
  for (const [what, error] of Object.entries(state.errors || {})) out.push(["bad", `${what}: ${error}`]);
  if (state.status) for (const p of state.status.problems || []) out.push(["bad", p]);
  const b = state.board;
  if (b && !b.complete) out.push(["warn", `The board is warming up: it is exact from ${new Date(b.complete_from * 1000).toLocaleTimeString()} (or rebuild it: pulse backfill --sinks redis).`]);
  replace($("alerts"), out.map(([cls, text]) => el("div", { class: "alert " + cls }, text)));
}

function renderFoot(board) {
  if (!board) { $("foot").textContent = ""; return; }
  const s = board.stats || {};
  $("foot").textContent = `Not counted: late ${fmtInt(s.late || 0)}, future-dated (held until their time) ${fmtInt(s.future || 0)}, uncorrectable ` +
    `${fmtInt(s.uncorrectable || 0)} · last write ${fmtDuration(board.last_write_s)} ago · position ${board.position || "–"}`;
  $("board-key").textContent = board.keys ? board.keys.top : "";
  const w = board.series ? board.series.window_s : 600;
  $("window-label").textContent = w % 60 === 0 ? `${w / 60} minutes` : `${w} s`;
}

function render(state) {
  window.pulseBoard.state = state;
  window.pulseBoard.renders += 1;
  const board = state.board;
  renderFreshness(board);
  renderAlerts(state);
  renderChart(board ? board.series : null);
  renderTop(board);
  renderByType(board);
  renderBars("devices", board ? board.devices : []);
  renderBars("event-types", board ? board.event_types : [], (name, i) => colorOf(name, i));
  renderPipeline(state);
  renderFoot(board);
}

function connect() {
  const conn = $("conn"), text = $("conn-text");
  const source = new EventSource("/events");
  source.addEventListener("open", () => { conn.className = "conn live"; text.textContent = "live"; });
  source.addEventListener("state", e => { conn.className = "conn live"; text.textContent = "live"; render(JSON.parse(e.data)); });
  source.addEventListener("error", () => { conn.className = "conn down"; text.textContent = "reconnecting"; });
}

window.pulseBoard = { state: null, renders: 0 };
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => { if (window.pulseBoard.state) render(window.pulseBoard.state); }, 150);
});
document.addEventListener("DOMContentLoaded", connect);
