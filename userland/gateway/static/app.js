// The llmos dashboard: reads /dashboard/events (server-sent events, read with fetch so that an
// API key can go in the Authorization header), draws the process table, the KV block map and two
// time series, and posts admin actions. Plain JS and SVG: the page loads nothing from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const HISTORY = 120;                       // points kept per time series (one per second)
let key = localStorage.getItem("llmos-key") || "";
let last = null;                           // the previous state, for rates
const series = { tput: [], ttft: [], itl: [] };

function headers() {
  const h = { "Content-Type": "application/json" };
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function askKey() {
  $("keyform").hidden = false;
  $("status").textContent = "API key needed";
}

$("keyform").addEventListener("submit", (e) => {
  e.preventDefault();
  key = $("key").value.trim();
  localStorage.setItem("llmos-key", key);
  $("keyform").hidden = true;
  connect();
});

async function connect() {
  let res;
  try {
    res = await fetch("/dashboard/events", { headers: headers() });
  } catch (err) {
    return retry();
  }
  if (res.status === 401) return askKey();
  if (!res.ok || !res.body) return retry();
  $("status").textContent = "live";
  $("status").className = "status live";
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read().catch(() => ({ done: true }));
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const ev = /^event: (\w+)/m.exec(block);
      const data = /^data: (.*)$/m.exec(block);
      if (ev && data && ev[1] === "state") render(JSON.parse(data[1]));
    }
  }
  retry();
}

function retry() {
  $("status").textContent = "offline";
  $("status").className = "status";
  setTimeout(connect, 2000);
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function colour(pid) {
  return `hsl(${(pid * 137.508) % 360}, 60%, 55%)`;
}

function render(s) {
  const now = performance.now() / 1000;
  $("model").textContent = `${s.model} on ${s.device} · you: ${s.you}${s.admin ? " (admin)" : ""}`;
  const prev = last && new Map(last.s.procs.map((p) => [p.pid, p.tokens]));
  const dt = last ? now - last.t : 0;
  renderProcs(s, prev, dt);
  renderKV(s);
  if (last && dt > 0) {
    series.tput.push(Math.max(0, (s.engine.tokens - last.s.engine.tokens) / dt));
    const mean = (h) => {
      let sum = 0, count = 0;
      for (const u of Object.values(s.users)) { sum += u[h].sum; count += u[h].count; }
      return count ? (1000 * sum) / count : 0;
    };
    series.ttft.push(mean("ttft"));
    series.itl.push(mean("itl"));
    for (const k of Object.keys(series)) if (series[k].length > HISTORY) series[k].shift();
    chart($("tput"), [[series.tput, "#2a6"]]);
    chart($("lat"), [[series.ttft, "#36c"], [series.itl, "#c63"]]);
  }
  last = { s, t: now };
}

function renderProcs(s, prev, dt) {
  const body = $("procs").tBodies[0];
  body.replaceChildren();
  const counts = {};
  for (const p of s.procs) {
    counts[p.state] = (counts[p.state] || 0) + 1;
    const rate = prev && prev.has(p.pid) && dt > 0 ? (p.tokens - prev.get(p.pid)) / dt : 0;
    const tr = el("tr", { "data-pid": p.pid, class: p.state });
    const cells = [[p.pid, "num"], [p.owner, ""], [p.state + (p.swapped ? " (swapped)" : ""), "state"],
      [p.nice, "num"], [p.prompt_tokens, "num"], [p.tokens, "num"], [rate.toFixed(1), "num"],
      [p.blocks, "num"], [p.command, "command"]];
    for (const [text, cls] of cells) tr.append(el("td", { class: cls }, String(text)));
    const act = el("td", { class: "actions" });
    if (p.state !== "ZOMBIE") {
      const sigs = p.state === "STOPPED" ? ["CONT", "KILL"] : ["STOP", "KILL"];
      for (const sig of sigs) {
        const b = el("button", { "data-action": sig, "data-pid": p.pid, title: "send SIG" + sig }, sig.toLowerCase());
        b.addEventListener("click", () => post("/dashboard/signal", { pid: p.pid, signal: sig }));
        act.append(b);
      }
      const n = el("input", { type: "number", min: -20, max: 19, value: p.nice, "data-pid": p.pid, title: "renice" });
      n.addEventListener("change", () => post("/dashboard/nice", { pid: p.pid, nice: parseInt(n.value, 10) }));
      act.append(n);
    }
    tr.append(act);
    body.append(tr);
  }
  $("summary").textContent = Object.entries(counts).map(([k, v]) => `${v} ${k.toLowerCase()}`).join(" · ");
}

function renderKV(s) {
  const svg = $("kvmap");
  const total = s.kv.total, cell = 12, cols = Math.max(16, Math.floor((svg.clientWidth || 800) / cell));
  const rows = Math.ceil(total / cols);
  svg.setAttribute("viewBox", `0 0 ${cols * cell} ${rows * cell}`);
  svg.style.height = `${Math.max(cell, rows * cell)}px`;
  const owner = new Array(total).fill(null);
  for (const [pid, ids] of Object.entries(s.blocks.held)) {
    for (const b of ids) owner[b] = owner[b] === null ? Number(pid) : -1;     // -1: shared (fork)
  }
  const cached = new Set(s.blocks.cached);
  svg.replaceChildren();
  for (let b = 0; b < total; b++) {
    const r = document.createElementNS(SVG, "rect");
    r.setAttribute("x", (b % cols) * cell + 1);
    r.setAttribute("y", Math.floor(b / cols) * cell + 1);
    r.setAttribute("width", cell - 2);
    r.setAttribute("height", cell - 2);
    const o = owner[b];
    r.setAttribute("fill", o === -1 ? "#444" : o !== null ? colour(o) : cached.has(b) ? "#9bd" : "#e8e8e8");
    const t = document.createElementNS(SVG, "title");
    t.textContent = `block ${b}: ` + (o === -1 ? "shared" : o !== null ? `pid ${o}` : cached.has(b) ? "prefix-cached" : "free");
    r.append(t);
    svg.append(r);
  }
  const swapped = Object.entries(s.blocks.swapped).map(([pid, n]) => `pid ${pid}: ${n}`).join(", ");
  $("kvsummary").textContent = `${s.kv.used} used · ${s.kv.cached} cached · ${s.kv.free} free of ${total} ` +
    `blocks × ${s.kv.block_size} tokens · swap ${s.kv.swapped}/${s.kv.swap_capacity}` + (swapped ? ` (${swapped})` : "");
  $("kvlegend").innerHTML = "";
  for (const [name, c] of [["process (colour per pid)", "hsl(200,60%,55%)"], ["shared (fork)", "#444"],
    ["prefix-cached", "#9bd"], ["free", "#e8e8e8"]]) {
    const sp = el("span");
    const i = el("i");
    i.style.background = c;
    sp.append(i, name);
    $("kvlegend").append(sp);
  }
}

function chart(svg, lines) {
  const w = 600, h = 140, pad = 4;
  const max = Math.max(1, ...lines.flatMap(([v]) => v));
  svg.replaceChildren();
  for (const [values, stroke] of lines) {
    const pts = values.map((v, i) => `${(i / (HISTORY - 1)) * w},${h - pad - (v / max) * (h - 2 * pad)}`);
    const pl = document.createElementNS(SVG, "polyline");
    pl.setAttribute("points", pts.join(" "));
    pl.setAttribute("fill", "none");
    pl.setAttribute("stroke", stroke);
    pl.setAttribute("stroke-width", "2");
    svg.append(pl);
  }
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", 4);
  label.setAttribute("y", 14);
  label.setAttribute("font-size", "12");
  label.textContent = `max ${max.toFixed(1)}` + (lines.length > 1 ? "  (blue TTFT, orange ITL)" : "");
  svg.append(label);
}

async function post(path, body) {
  const res = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!res.ok) {
    const err = await res.json().catch(() => ({}));
    alert((err.error && err.error.message) || res.statusText);
  }
}

connect();
