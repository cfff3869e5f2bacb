// kdlab dashboard: reads the form, asks the server's planner (POST /api/plan) on every
// change, and draws the answer: a table, two SVG plots, the plan as JSON and a link.
// Plain JavaScript, no library: the page must work offline.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const form = document.getElementById("inputs");
let defaults = {};
let sequence = 0;      // answers to older requests are dropped
let timer = null;
let answer = null;     // the last answer shown (for the JSON download)

// ------------------------------------------------------------------ fields

function fieldNames() {
  return [...new Set([...form.elements].map(e => e.name).filter(Boolean))];
}

function readFields() {
  const out = {};
  for (const name of fieldNames()) {
    const els = form.elements.namedItem(name);
    const first = els instanceof RadioNodeList ? els[0] : els;
    if (first.type === "radio") out[name] = els.value;
    else if (first.type === "checkbox") out[name] = first.checked ? "1" : "0";
    else out[name] = first.value;
  }
  return out;
}

function fill(fields) {
  for (const [name, value] of Object.entries(fields)) {
    const els = form.elements.namedItem(name);
    if (!els) continue;
    const first = els instanceof RadioNodeList ? els[0] : els;
    if (first.type === "radio") els.value = value;
    else if (first.type === "checkbox") first.checked = value === "1";
    else first.value = value;
  }
}

function showConditional() {
  const fields = readFields();
  for (const el of document.querySelectorAll(".when")) {
    const [name, value] = el.dataset.when.split("=");
    el.hidden = fields[name] !== value;
  }
}

function link(fields) {
  return `${location.origin}/?${new URLSearchParams(fields)}`;
}

// ------------------------------------------------------------------ numbers

function count(x) {
  if (x === null || x === undefined) return "–";
  const units = [[1e12, "T"], [1e9, "B"], [1e6, "M"], [1e3, "k"]];
  for (const [size, suffix] of units) {
    if (Math.abs(x) >= size) return `${+(x / size).toPrecision(3)}${suffix}`;
  }
  return `${+x.toPrecision(3)}`;
}
const sci = x => (x === null || x === undefined ? "–" : x.toExponential(2).replace("e+", "e"));
const loss = x => (x === null || x === undefined ? "–" : x.toFixed(4));
const hours = x => `${x >= 100 ? Math.round(x).toLocaleString("en") : +x.toPrecision(3)} GPU-h`;
const money = (x, cur) => `${cur}${x >= 100 ? Math.round(x).toLocaleString("en") : x.toPrecision(3)}`;

// ------------------------------------------------------------------ talking to the server

function clearErrors() {
  for (const el of document.querySelectorAll(".err")) el.textContent = "";
  for (const el of form.querySelectorAll(".bad")) el.classList.remove("bad");
}

function showError(field, message) {
  const slot = field && document.querySelector(`.err[data-for="${field}"]`);
  if (slot) {
    slot.textContent = message;
    const input = form.elements.namedItem(field);
    if (input && !(input instanceof RadioNodeList)) input.classList.add("bad");
    setStatus("Nothing to show until the marked field is fixed.");
  } else {
    setStatus(message);
  }
}

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

function scheduleUpdate(delay = 200) {
  clearTimeout(timer);
  timer = setTimeout(update, delay);
}

async function update() {
  const mine = ++sequence;
  const fields = readFields();
  document.getElementById("link").value = link(fields);
  history.replaceState(null, "", `/?${new URLSearchParams(fields)}`);
  setStatus("Planning…");
  let response, body;
  try {
    response = await fetch("/api/plan", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify(fields),
    });
    body = await response.json();
  } catch (err) {
    if (mine !== sequence) return;
    hideResult();
    setStatus(`The dashboard server does not answer (${err}).`);
    return;
  }
  if (mine !== sequence) return;   // a newer change is on its way
  clearErrors();
  document.getElementById("laws-status").textContent = "";
  if (response.status === 202) {
    hideResult();
    document.getElementById("laws-status").textContent = body.pending;
    setStatus("Waiting for the fit…");
    scheduleUpdate(1000);
    return;
  }
  if (!response.ok) {
    hideResult();
    showError(body.error.field, body.error.message);
    return;
  }
  render(body);
}

function hideResult() {
  answer = null;
  document.getElementById("result").hidden = true;
  document.body.dataset.state = "error";
}

// ------------------------------------------------------------------ the answer

function render(ans) {
  answer = ans;
  const cur = ans.inputs.currency;
  const chosen = ans.rows[0];
  const verdict = document.getElementById("verdict");
  verdict.textContent = chosen.verdict === "distil" ? "Distil" : "Train alone";
  verdict.className = chosen.verdict === "distil" ? "distil" : "alone";
  const teacher = chosen.teacher_params === null
    ? `a teacher of loss ${loss(chosen.teacher_loss)}`
    : `a ${count(chosen.teacher_params)}-parameter teacher on ${count(chosen.teacher_tokens)} tokens`;
  document.getElementById("verdict-detail").textContent =
    `(${ans.scenario}: ${ans.scenario_meaning}). A ${count(ans.student.params)}-parameter student ` +
    `(${ans.student.how}) distilled from ${teacher} on ${count(chosen.student_tokens)} tokens ` +
    `reaches ${loss(chosen.student_loss)}; trained alone on ${count(chosen.supervised_tokens)} ` +
    `tokens, ${loss(chosen.supervised_loss)}. Budget ${sci(ans.budget.flops)} FLOPs = ` +
    `${hours(ans.budget.gpu_hours)} = ${money(ans.budget.money, cur)} per student.`;
  renderTable(ans, cur);
  drawCurve(ans);
  drawRobustness(ans);
  document.getElementById("command").textContent = ans.command;
  document.getElementById("plan-json").textContent = JSON.stringify(ans.plan_json, null, 2);
  document.getElementById("cost-note").textContent =
    `Costs at ${+(ans.mfu * 100).toPrecision(3)}% MFU (${sci(ans.per_gpu_hour)} FLOPs per ` +
    `GPU-hour); ${ans.inputs.students} students cost ${ans.inputs.students} times one, ` +
    `teacher included. Laws: ${ans.laws.label}. Answered in ${ans.seconds.toFixed(2)} s.`;
  document.getElementById("result").hidden = false;
  document.body.dataset.state = "ready";
  setStatus("");
}

function splitBar(shares) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("width", "120");
  svg.setAttribute("height", "12");
  let x = 0;
  for (const [part, cls] of [["student", "k-student"], ["teacher_logits", "k-logits"],
                             ["teacher_pretraining", "k-pretraining"]]) {
    const w = 120 * shares[part];
    const rect = document.createElementNS(SVG, "rect");
    Object.entries({x, y: 0, width: w, height: 12, class: cls}).forEach(([k, v]) => rect.setAttribute(k, v));
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${part}: ${(100 * shares[part]).toFixed(1)}%`;
    rect.appendChild(title);
    svg.appendChild(rect);
    x += w;
  }
  return svg;
}

function renderTable(ans, cur) {
  const body = document.querySelector("#plans tbody");
  body.replaceChildren();
  for (const row of ans.rows) {
    const tr = document.createElement("tr");
    if (row.selected) tr.className = "selected";
    const cell = (text, cls) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.appendChild(td);
      return td;
    };
    cell(row.label, "l");
    if (row.error) {
      cell(row.error, "error").colSpan = 8;
    } else {
      cell(row.verdict, "l verdict");
      cell(count(row.teacher_params));
      cell(count(row.teacher_tokens));
      cell(count(row.student_tokens));
      cell(loss(row.student_loss));
      cell(loss(row.supervised_loss));
      cell("").appendChild(splitBar(row.compute_shares));
      cell(`${sci(row.cost.flops)} FLOPs, ${hours(row.cost.gpu_hours)}, ${money(row.cost.money, cur)}`);
    }
    body.appendChild(tr);
  }
}

// ------------------------------------------------------------------ plots

function el(svg, name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  svg.appendChild(node);
  return node;
}

function niceTicks(lo, hi, n = 5) {
  const step0 = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= step0);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-12; t += step) ticks.push(+t.toPrecision(6));
  return ticks;
}

function frame(svg, xs, ys, xLabel, yLabel, logX, yTicks = true) {
  svg.replaceChildren();
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
  const m = {l: 52, r: 12, t: 12, b: 36};
  const [x0, x1] = xs, [y0, y1] = ys;
  const fx = logX ? v => Math.log10(v) : v => v;
  const X = v => m.l + (fx(v) - fx(x0)) / (fx(x1) - fx(x0)) * (W - m.l - m.r);
  const Y = v => H - m.b - (v - y0) / (y1 - y0) * (H - m.t - m.b);
  el(svg, "rect", {x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b, fill: "#fff", stroke: "#999"});
  const xt = logX
    ? niceTicks(Math.log10(x0), Math.log10(x1), 6).filter(Number.isInteger).map(p => 10 ** p)
    : niceTicks(x0, x1);
  for (const t of xt) {
    el(svg, "line", {x1: X(t), x2: X(t), y1: H - m.b, y2: H - m.b + 4, stroke: "#555"});
    el(svg, "text", {x: X(t), y: H - m.b + 15, "text-anchor": "middle"}, logX ? `1e${Math.round(Math.log10(t))}` : `${t}`);
  }
  for (const t of yTicks ? niceTicks(y0, y1) : []) {
    el(svg, "line", {x1: m.l - 4, x2: W - m.r, y1: Y(t), y2: Y(t), stroke: "#eee"});
    el(svg, "text", {x: m.l - 6, y: Y(t) + 4, "text-anchor": "end"}, `${t}`);
  }
  const clip = el(svg, "clipPath", {id: `${svg.id}-clip`});
  el(clip, "rect", {x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b});
  el(svg, "text", {x: (W + m.l) / 2, y: H - 4, "text-anchor": "middle"}, xLabel);
  el(svg, "text", {x: 12, y: (H - m.b) / 2, transform: `rotate(-90 12 ${(H - m.b) / 2})`, "text-anchor": "middle"}, yLabel);
  return {X, Y, W, H, m};
}

function path(svg, X, Y, xs, ys, attrs) {
  let d = "", pen = false;
  xs.forEach((x, i) => {
    if (ys[i] === null || ys[i] === undefined) { pen = false; return; }
    d += `${pen ? "L" : "M"}${X(x).toFixed(1)},${Y(ys[i]).toFixed(1)}`;
    pen = true;
  });
  el(svg, "path", {d, fill: "none", "clip-path": `url(#${svg.id}-clip)`, ...attrs});
}

function drawCurve(ans) {
  const svg = document.getElementById("curve");
  const c = ans.curve;
  // the losses from a little below the budget and the crossovers on set the scale, not
  // the steep start at tiny budgets
  const from = Math.min(c.budget, ...c.crossovers.map(x => x.compute)) / 30;
  const values = [...c.distil, ...c.alone].filter((v, i) => v !== null && c.compute[i % c.compute.length] >= from);
  const lo = Math.min(...values), hi = Math.max(...values);
  const pad = (hi - lo) * 0.05 || 0.05;
  const {X, Y, W, m, H} = frame(svg, [c.compute[0], c.compute[c.compute.length - 1]],
                                [lo - pad, hi + pad], "budget per student (FLOPs)", "loss", true);
  path(svg, X, Y, c.compute, c.alone, {stroke: "#e07000", "stroke-width": 2, class: "alone"});
  path(svg, X, Y, c.compute, c.distil, {stroke: "#2f6db5", "stroke-width": 2, class: "distil"});
  const label = (x, y, text, attrs = {}) => {
    const right = X(x) > W - m.r - 110;   // near the right edge: write to the left
    el(svg, "text", {x: X(x) + (right ? -3 : 3), y, "text-anchor": right ? "end" : "start", ...attrs}, text);
  };
  for (const x of c.crossovers) {
    el(svg, "line", {x1: X(x.compute), x2: X(x.compute), y1: m.t, y2: H - m.b, stroke: "#7a2",
                     "stroke-dasharray": "5 3", "stroke-width": 1.5, class: "crossover"});
    label(x.compute, m.t + 26, `crossover ${sci(x.compute)}`, {fill: "#5a1"});
  }
  el(svg, "line", {x1: X(c.budget), x2: X(c.budget), y1: m.t, y2: H - m.b, stroke: "#333", "stroke-width": 1});
  label(c.budget, m.t + 12, "your budget");
  el(svg, "text", {x: W - m.r - 8, y: m.t + 44, fill: "#2f6db5", "text-anchor": "end"}, "— distilled (planned per budget)");
  el(svg, "text", {x: W - m.r - 8, y: m.t + 58, fill: "#e07000", "text-anchor": "end"}, "— trained alone");
  const changes = c.crossovers.map(x => `above ${sci(x.compute)} FLOPs ${x.above === "distil" ? "distillation" : "training alone"} wins`);
  document.getElementById("curve-caption").textContent =
    `Expected loss of the ${count(ans.student.params)}-parameter student against the budget in ` +
    `the scenario ${ans.scenario}${ans.teacher_given ? ", with the given teacher" : ", each budget planned anew"}, ` +
    `and of the same student trained alone. ` +
    (changes.length ? `Dashed, where the winner changes: ${changes.join("; ")}.`
                    : `No crossover in this range: ${c.note}.`);
}

function drawRobustness(ans) {
  const svg = document.getElementById("robust");
  const r = ans.robustness;
  const caption = document.getElementById("robust-caption");
  svg.replaceChildren();
  if (r.unavailable) {
    svg.setAttribute("height", "24");
    el(svg, "text", {x: 4, y: 16}, "Robustness: unavailable for these laws.");
    caption.textContent = r.unavailable;
    return;
  }
  svg.setAttribute("height", "200");
  const chosen = ans.rows[0];
  const rows = [["distilled", r.student_loss_interval, chosen.student_loss, "#2f6db5"],
                ["alone", r.supervised_loss_interval, chosen.supervised_loss, "#e07000"]];
  const ends = rows.flatMap(([, iv, p]) => [...(iv || []), p]);
  let lo = Math.min(...ends), hi = Math.max(...ends);
  const pad = (hi - lo) * 0.15 || 0.01;
  const {X, m} = frame(svg, [lo - pad, hi + pad], [0, 1], "expected loss", "", false, false);
  rows.forEach(([name, iv, point, colour], i) => {
    const y = m.t + 40 + i * 50;
    if (iv) el(svg, "rect", {x: X(iv[0]), y: y - 8, width: Math.max(X(iv[1]) - X(iv[0]), 2), height: 16, fill: colour, opacity: 0.45, class: "interval"});
    el(svg, "circle", {cx: X(point), cy: y, r: 4, fill: colour});
    el(svg, "text", {x: m.l + 4, y: y - 12}, name);
  });
  const share = r.share_same_verdict === null ? "–" : `${Math.round(100 * r.share_same_verdict)}%`;
  caption.textContent =
    `Same verdict (${chosen.verdict}) in ${share} of ${r.resamples - r.unsolved} bootstrap ` +
    `resamples; bars: ${Math.round(100 * r.interval_level)}% intervals of the expected loss, ` +
    `dots: the fit itself. ${r.note}`;
  document.getElementById("robust-caption").dataset.share = r.share_same_verdict;
}

// ------------------------------------------------------------------ start

document.getElementById("download").addEventListener("click", () => {
  if (!answer) return;
  const blob = new Blob([JSON.stringify(answer.plan_json, null, 2) + "\n"], {type: "application/json"});
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "plan.json";
  a.click();
  URL.revokeObjectURL(a.href);
});

document.getElementById("copy-link").addEventListener("click", async () => {
  const field = document.getElementById("link");
  field.select();
  try { await navigator.clipboard.writeText(field.value); } catch (err) { /* selected, at least */ }
});

async function start() {
  const options = await (await fetch("/api/options")).json();
  defaults = options.defaults;
  const gpu = form.elements.namedItem("gpu");
  for (const a of options.accelerators) {
    gpu.add(new Option(`${a.description} (${a.bf16_peak / 1e12} TFLOP/s bf16)`, a.name));
  }
  const measured = options.measured_mfu;
  document.getElementById("mfu-note").textContent = measured
    ? `Empty: ${(100 * measured.mfu).toPrecision(3)}%, the median of ${measured.runs} GPU runs in the run database.`
    : `Empty: ${options.default_mfu}% (the run database has no GPU runs to measure it).`;
  fill(defaults);
  fill(Object.fromEntries(new URLSearchParams(location.search)));  // a link's plan
  showConditional();
  form.addEventListener("input", () => { showConditional(); scheduleUpdate(); });
  form.addEventListener("change", () => { showConditional(); scheduleUpdate(); });
  update();
}

start();
