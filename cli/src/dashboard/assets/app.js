// qsched dashboard: a read-only view of runs, shards, curves, results and the fleet.
// Polls the JSON API of `qsched dashboard` and redraws in place; everything it shows
// comes from those endpoints. Text from the store (errors, names) is only ever set as
// text, never parsed as HTML.
"use strict";

const state = { refreshMs: 2000, timer: null, page: null, charts: new Map(), figuresFor: null };

// --- helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON: said below */ }
  if (!response.ok) {
    throw new Error((body && body.error) || `${path}: HTTP ${response.status}`);
  }
  return body;
}

const dash = "—";
function num(v, digits) { return v === null || v === undefined ? dash : Number(v).toFixed(digits); }
function secs(s) {
  if (s === null || s === undefined || !isFinite(s) || s < 0) return dash;
  s = Math.round(s);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor(s % 86400 / 3600)}h`;
}
function bytes(b) {
  if (b === null || b === undefined) return dash;
  return b >= 1 << 30 ? `${(b / (1 << 30)).toFixed(2)} GiB` : `${(b / (1 << 20)).toFixed(1)} MiB`;
}
function stateChip(s, label) { return h("span", { class: `state ${s}` }, label || s); }
function etaText(eta) {
  if (!eta) return dash;
  if (eta.unknown) return `${dash} (${eta.unknown})`;
  return `~${secs(eta.seconds)}`;
}
function progressBar(fraction, done) {
  const pct = Math.round(fraction * 1000) / 10;
  return h("span", {}, h("span", { class: done ? "bar done" : "bar" }, h("span", { style: `width:${pct}%` })), ` ${pct}%`);
}
function chips(counts) {
  return h("span", { class: "chips" }, Object.entries(counts).map(([s, n]) => stateChip(s, `${s} ${n}`)));
}
function showError(message) {
  const el = document.getElementById("error");
  el.hidden = !message;
  el.textContent = message || "";
}
function replaceMain(...children) {
  const main = document.getElementById("main");
  main.replaceChildren(...children);
}
function section(id, title, ...children) {
  return h("section", { id }, h("h2", {}, title), ...children);
}
function fillSection(id, ...children) {
  const el = document.getElementById(id);
  if (!el) return;
  const title = el.querySelector("h2");
  el.replaceChildren(title, ...children);
}
function traceCell(trace) {
  if (!trace) return dash;
  const short = trace.trace_id.slice(0, 12) + "…";
  return trace.url ? h("a", { href: trace.url, target: "_blank", rel: "noopener", title: trace.trace_id }, short)
    : h("span", { class: "mono", title: trace.trace_id }, short);
}

// --- runs ----------------------------------------------------------------------------

async function runsPage(first) {
  const data = await api("/api/runs");
  if (first) replaceMain(h("h1", {}, "Runs"), h("div", { id: "runs" }));
  const now = data.now;
  const rows = data.runs.map((r) => h("tr", { "data-run": r.run },
    h("td", { class: "mono" }, h("a", { href: `#/run/${encodeURIComponent(r.run)}` }, r.run)),
    h("td", {}, r.name),
    h("td", {}, progressBar(r.progress, r.done)),
    h("td", { class: "num" }, `${r.finished}/${r.shard_count}`),
    h("td", {}, chips(r.counts), r.cancelled ? stateChip("cancelled", "run cancelled") : null),
    h("td", { title: r.eta && r.eta.basis ? `based on ${r.eta.basis}` : "" }, etaText(r.eta)),
    h("td", { class: "num" }, `${secs(now - r.created_at)} ago`)));
  const table = rows.length
    ? h("table", {}, h("thead", {}, h("tr", {}, ["run", "name", "progress", "finished", "states", "eta", "submitted"].map((c) => h("th", {}, c)))), h("tbody", {}, rows))
    : h("p", { class: "muted" }, "No runs yet: `qsched submit` one.");
  document.getElementById("runs").replaceChildren(table);
}

// --- one run -------------------------------------------------------------------------

function shardRow(s) {
  const step = s.total_steps ? `${s.step ?? dash}/${s.total_steps}` : (s.step ?? dash);
  const result = s.result && s.result.metric ? `${s.result.metric} ${num(s.result.value, 4)}` : dash;
  const errors = [];
  if (s.error) errors.push(h("div", { class: "error-text" }, s.error));
  for (const r of s.retried) errors.push(h("div", { class: "error-text muted" }, `attempt ${r.attempt} on ${r.agent}: ${r.error.split("\n")[0]}`));
  return h("tr", { "data-shard": s.shard, "data-state": s.state },
    h("td", { class: "mono" }, s.shard),
    h("td", {}, s.model), h("td", {}, s.task), h("td", { class: "num" }, s.seed),
    h("td", {}, stateChip(s.state, s.state_label)),
    h("td", {}, s.device ?? dash),
    h("td", { class: "mono" }, s.agent ?? dash),
    h("td", { class: "num" }, step),
    h("td", { class: "num" }, num(s.loss, 4)),
    h("td", { class: "num" }, num(s.steps_per_second, 2)),
    h("td", { class: "num" }, secs(s.eta_seconds)),
    h("td", { class: "num" }, s.attempts),
    h("td", {}, result),
    h("td", { class: "num" }, s.result ? bytes(s.result.peak_memory_bytes) : dash),
    h("td", {}, errors.length ? errors : dash),
    h("td", {}, traceCell(s.trace)));
}

// Series of one chart: one per shard, over the union of their steps (uPlot wants one x).
function alignSeries(curves) {
  const xs = [...new Set(curves.flatMap((c) => c.points.map((p) => p[0])))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const ys = curves.map((c) => {
    const y = new Array(xs.length).fill(null);
    for (const [x, v] of c.points) y[index.get(x)] = v;
    return y;
  });
  return [xs, ...ys];
}

const palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];

function drawChart(container, key, title, curves) {
  const data = alignSeries(curves);
  const labels = curves.map((c) => c.label).join("|");
  const held = state.charts.get(key);
  if (held && held.labels === labels && document.body.contains(held.plot.root)) {
    held.plot.setData(data);
    held.points = curves.reduce((n, c) => n + c.points.length, 0);
    return held.wrapper;
  }
  if (held) held.plot.destroy();
  const wrapper = h("div", { class: "chart", "data-chart": key }, h("h3", {}, title));
  const opts = {
    width: 460, height: 240,
    scales: { x: { time: false } },
    axes: [{ label: "step" }, {}],
    series: [{ label: "step" }, ...curves.map((c, i) => ({ label: c.label, stroke: palette[i % palette.length], width: 1.5, spanGaps: true, points: { show: false } }))],
    legend: { live: false },
  };
  const plot = new uPlot(opts, data, wrapper);
  state.charts.set(key, { plot, labels, wrapper, title, points: curves.reduce((n, c) => n + c.points.length, 0) });
  container.append(wrapper);
  return wrapper;
}

function drawCurves(data) {
  const container = document.getElementById("charts");
  if (!container) return;
  const byTask = new Map();
  for (const s of data.shards) {
    if (!byTask.has(s.task)) byTask.set(s.task, []);
    byTask.get(s.task).push(s);
  }
  const wanted = [];
  for (const [task, shards] of byTask) {
    const label = (s) => `${s.model} seed ${s.seed}`;
    const loss = shards.filter((s) => s.train.loss && s.train.loss.length).map((s) => ({ label: label(s), points: s.train.loss }));
    if (loss.length) wanted.push([`loss-${task}`, `${task}: train loss`, loss]);
    const devNames = [...new Set(shards.flatMap((s) => Object.keys(s.dev)))].filter((n) => n !== "loss").sort();
    for (const name of devNames) {
      const dev = shards.filter((s) => s.dev[name] && s.dev[name].length).map((s) => ({ label: label(s), points: s.dev[name] }));
      if (dev.length) wanted.push([`dev-${task}-${name}`, `${task}: dev ${name}`, dev]);
    }
  }
  const keys = new Set(wanted.map((w) => w[0]));
  for (const [key, held] of state.charts) {
    if (!keys.has(key)) { held.plot.destroy(); held.wrapper.remove(); state.charts.delete(key); }
  }
  for (const [key, title, curves] of wanted) drawChart(container, key, title, curves);
  if (!wanted.length && !container.querySelector(".muted")) container.append(h("p", { class: "muted" }, "No metric points yet."));
  if (wanted.length) container.querySelectorAll(":scope > .muted").forEach((e) => e.remove());
}

function resultsTables(data, run) {
  if (data.note) return [h("p", { class: "muted" }, data.note)];
  const metricSel = h("select", { id: "metric", onchange: () => refreshNow() },
    h("option", { value: "" }, "primary metric"), data.metrics.map((m) => h("option", { value: m }, m)));
  const baseSel = h("select", { id: "baseline", onchange: () => refreshNow() },
    data.models.map((m) => h("option", { value: m }, m)));
  const rows = data.rows.map((r) => h("tr", {},
    h("td", {}, r.model), h("td", {}, r.task), h("td", {}, r.metric ?? dash),
    h("td", { class: "num" }, r.value ? `${num(r.value.mean, 4)} ± ${num(r.value.std, 4)}` : dash),
    h("td", { class: "num" }, r.value && r.value.ci95 !== null ? `± ${num(r.value.ci95, 4)}` : dash),
    h("td", { class: "num" }, r.value ? r.value.n : 0),
    h("td", { class: "num" }, r.failed),
    h("td", { class: "num" }, r.peak_memory_bytes ? bytes(r.peak_memory_bytes.mean) : dash),
    h("td", { class: "num" }, r.wall_seconds ? secs(r.wall_seconds.mean) : dash),
    h("td", { class: "num" }, r.tokens_per_second ? num(r.tokens_per_second.mean, 0) : dash)));
  const out = [
    h("div", { class: "controls" }, h("label", {}, "metric ", metricSel), h("label", {}, "baseline ", baseSel)),
    h("table", { id: "results-table" }, h("thead", {}, h("tr", {}, ["model", "task", "metric", "mean ± std", "95 % CI", "n", "failed", "peak memory", "wall", "tokens/s"].map((c) => h("th", {}, c)))), h("tbody", {}, rows)),
  ];
  if (data.comparison) {
    const c = data.comparison;
    baseSel.value = c.baseline;
    const crow = c.rows.map((r) => h("tr", {},
      h("td", {}, r.task), h("td", {}, r.model),
      h("td", { class: "num" }, r.mean === null ? dash : `${num(r.mean, 4)} ± ${num(r.std, 4)}`),
      h("td", { class: "num" }, r.delta_vs_baseline === null ? dash : (r.delta_vs_baseline >= 0 ? "+" : "") + num(r.delta_vs_baseline, 4)),
      h("td", { class: "num" }, num(r.memory_ratio, 2)), h("td", { class: "num" }, num(r.time_ratio, 2))));
    out.push(h("h2", {}, `Against ${c.baseline}`),
      h("table", { id: "comparison-table" }, h("thead", {}, h("tr", {}, ["task", "model", "mean ± std", `Δ vs ${c.baseline}`, "memory ×", "time ×"].map((x) => h("th", {}, x)))), h("tbody", {}, crow)));
  }
  return out;
}

async function drawFigures(run, finished) {
  const key = `${run}:${finished}`;
  if (state.figuresFor === key) return;
  state.figuresFor = key;
  const data = await api(`/api/runs/${encodeURIComponent(run)}/figures`);
  const figs = data.figures.map((f) => h("figure", {},
    h("img", { src: `/api/runs/${encodeURIComponent(run)}/figures/${encodeURIComponent(f.name)}.svg?v=${finished}`, alt: f.title, loading: "lazy" }),
    h("figcaption", {}, f.title)));
  fillSection("figures", figs.length ? h("div", { class: "figures" }, figs) : h("p", { class: "muted" }, data.skipped.join("; ") || "No figures yet."));
}

async function runPage(first, run) {
  const enc = encodeURIComponent(run);
  if (first) {
    state.charts.forEach((c) => c.plot.destroy());
    state.charts.clear();
    state.figuresFor = null;
    state.resultsKey = null;
    replaceMain(h("div", { id: "run-head" }),
      section("shards", "Shards"),
      section("curves", "Curves", h("div", { id: "charts", class: "charts" })),
      section("results", "Results"),
      section("figures", "Figures"));
  }
  const metric = document.getElementById("metric")?.value || "";
  const baseline = document.getElementById("baseline")?.value || "";
  const [view, curves, results] = await Promise.all([
    api(`/api/runs/${enc}`),
    api(`/api/runs/${enc}/curves`),
    api(`/api/runs/${enc}/results?metric=${encodeURIComponent(metric)}&baseline=${encodeURIComponent(baseline)}`),
  ]);
  const s = view.summary;
  document.getElementById("run-head").replaceChildren(
    h("h1", {}, `Run ${s.run} `, h("span", { class: "muted" }, s.name)),
    h("div", { class: "card kv" },
      h("div", {}, h("b", {}, `${s.finished}/${s.shard_count}`), "shards finished"),
      h("div", {}, h("b", {}, `${Math.round(s.progress * 1000) / 10}%`), progressBar(s.progress, s.done)),
      h("div", { title: s.eta && s.eta.basis ? `based on ${s.eta.basis}` : "" }, h("b", { id: "run-eta" }, etaText(s.eta)), s.eta && s.eta.basis ? `eta, based on ${s.eta.basis}` : "eta"),
      h("div", {}, chips(s.counts), s.cancelled ? stateChip("cancelled", "run cancelled") : null),
      h("div", {}, "trace ", traceCell(view.trace))));
  fillSection("shards", h("table", { id: "shard-table" },
    h("thead", {}, h("tr", {}, ["shard", "model", "task", "seed", "state", "device", "agent", "step", "loss", "steps/s", "eta", "attempts", "result", "peak memory", "error", "trace"].map((c) => h("th", {}, c)))),
    h("tbody", {}, view.shards.map(shardRow))));
  drawCurves(curves);
  // Redrawn only when it changed, so an open drop-down is not closed under the pointer.
  const resultsKey = JSON.stringify([results, metric, baseline]);
  if (state.resultsKey !== resultsKey) {
    state.resultsKey = resultsKey;
    fillSection("results", ...resultsTables(results, run));
    if (metric && document.getElementById("metric")) document.getElementById("metric").value = metric;
  }
  await drawFigures(run, s.finished);
}

// --- fleet ---------------------------------------------------------------------------

async function fleetPage(first) {
  const data = await api("/api/fleet");
  if (first) replaceMain(h("h1", {}, "Fleet"), section("queues", "Queues"), section("agents", "Agents"), section("dead-letters", "Dead letters recorded by agents"));
  const q = data.queues;
  fillSection("queues", q === null ? h("p", { class: "muted" }, "No broker: this dashboard reads the local store.")
    : q.error ? h("p", { class: "error-text" }, `broker unreachable: ${q.error}`)
      : h("div", { class: "card kv" },
        h("div", {}, h("b", {}, q.cpu), "cpu queue ready"),
        h("div", {}, h("b", {}, q.cuda), "cuda queue ready"),
        h("div", {}, h("b", {}, q.dead_letters), "dead letters")));
  const rows = data.agents.map((a) => h("tr", { "data-agent": a.agent, class: a.stale ? "stale-row" : null },
    h("td", { class: "mono" }, a.agent), h("td", {}, a.host), h("td", {}, a.device), h("td", {}, a.gpu_name ?? dash),
    h("td", {}, a.run ? h("a", { href: `#/run/${encodeURIComponent(a.run)}` }, `${a.run}/${a.shard}`) : "idle"),
    h("td", { class: "num" }, a.total_steps ? `${a.step ?? dash}/${a.total_steps}` : dash),
    h("td", { class: "num" }, bytes(a.worker_memory_bytes)),
    h("td", { class: a.stale ? "num stale" : "num" }, `${secs(a.heartbeat_age)} ago${a.stale ? " (stale)" : ""}`),
    h("td", { class: "num" }, a.progress_age === null ? dash : `${secs(a.progress_age)} ago`),
    h("td", { class: "num" }, a.shards_done), h("td", { class: "num" }, secs(a.up_seconds))));
  fillSection("agents", rows.length
    ? h("table", { id: "agent-table" }, h("thead", {}, h("tr", {}, ["agent", "host", "device", "gpu", "current shard", "step", "worker memory", "last heartbeat", "last progress", "shards done", "up"].map((c) => h("th", {}, c)))), h("tbody", {}, rows))
    : h("p", { class: "muted" }, "No live agents."));
  fillSection("dead-letters", data.dead_letters.length
    ? h("table", {}, h("thead", {}, h("tr", {}, ["message", "agent", "bytes", "reason"].map((c) => h("th", {}, c)))),
      h("tbody", {}, data.dead_letters.map((d) => h("tr", {}, h("td", { class: "mono" }, d.message_id ?? "<no id>"), h("td", { class: "mono" }, d.agent), h("td", { class: "num" }, d.size), h("td", { class: "error-text" }, d.reason)))))
    : h("p", { class: "muted" }, "None."));
}

// --- routing and refresh -------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const m = hash.match(/^\/run\/(.+)$/);
  if (m) return { name: "run", run: decodeURIComponent(m[1]) };
  if (hash === "/fleet") return { name: "fleet" };
  return { name: "runs" };
}

async function refresh(first) {
  clearTimeout(state.timer);
  const r = route();
  document.getElementById("nav-runs").classList.toggle("active", r.name !== "fleet");
  document.getElementById("nav-fleet").classList.toggle("active", r.name === "fleet");
  try {
    if (r.name === "run") await runPage(first, r.run);
    else if (r.name === "fleet") await fleetPage(first);
    else await runsPage(first);
    showError(null);
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    state.updates = (state.updates || 0) + 1;
  } catch (e) {
    showError(e.message);
  }
  state.timer = setTimeout(() => refresh(false), state.refreshMs);
}

function refreshNow() { refresh(false); }

// What the page shows, for tests and scripts: each chart's title and point count.
window.qschedDashboard = {
  charts: () => [...state.charts.values()].map((c) => ({ title: c.title, points: c.points })),
  updates: () => state.updates || 0,
};

window.addEventListener("hashchange", () => refresh(true));
(async () => {
  try {
    const config = await api("/api/config");
    state.refreshMs = config.refresh_seconds * 1000;
    document.getElementById("source").textContent = config.source;
  } catch (e) {
    showError(e.message);
  }
  refresh(true);
})();
