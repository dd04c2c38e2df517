// The training tab: polls /api/training every 2 s for new metrics.jsonl rows and draws the
// train and validation loss against the step on a canvas, with tokens/s, time left and the
// samples written at each evaluation. It opens by itself when the run is training.
"use strict";
const training = { rows: [], next: 0, timer: null, opened: false };

function formatSeconds(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min` : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

function drawChart() {
  const canvas = document.getElementById("chart");
  const g = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, pad = { l: 50, r: 15, t: 15, b: 35 };
  g.clearRect(0, 0, W, H);
  const series = [["train_loss", "#2f6fb0", "train"], ["val_loss", "#d1495b", "validation"]]
    .map(([key, colour, label]) => ({ colour, label, points: training.rows.filter((r) => key in r).map((r) => [r.step, r[key]]) }));
  const all = series.flatMap((s) => s.points);
  g.font = "12px sans-serif";
  g.fillStyle = "#7a8590";
  if (!all.length) { g.fillText("no metrics yet", W / 2 - 40, H / 2); return; }
  const xMax = Math.max(...all.map((p) => p[0]), 1);
  const yMin = Math.min(...all.map((p) => p[1])), yMax = Math.max(...all.map((p) => p[1]));
  const ySpan = Math.max(yMax - yMin, 1e-6);
  const x = (v) => pad.l + (v / xMax) * (W - pad.l - pad.r);
  const y = (v) => H - pad.b - ((v - yMin) / ySpan) * (H - pad.t - pad.b);
  g.strokeStyle = "#c5ccd3";
  g.strokeRect(pad.l, pad.t, W - pad.l - pad.r, H - pad.t - pad.b);
  for (let i = 0; i <= 4; i++) {
    const v = yMin + (ySpan * i) / 4;
    g.fillText(v.toFixed(2), 5, y(v) + 4);
    g.fillText(String(Math.round((xMax * i) / 4)), x((xMax * i) / 4) - 10, H - pad.b + 15);
  }
  g.fillText("step", W / 2, H - 5);
  series.forEach((s, i) => {
    g.strokeStyle = g.fillStyle = s.colour;
    g.beginPath();
    s.points.forEach(([px, py], j) => (j ? g.lineTo(x(px), y(py)) : g.moveTo(x(px), y(py))));
    g.stroke();
    if (s.label === "validation") s.points.forEach(([px, py]) => g.fillRect(x(px) - 2, y(py) - 2, 4, 4));
    g.fillText(s.label, W - pad.r - 80, pad.t + 15 + 15 * i);
  });
}

function showStats(progress) {
  const val = training.rows.filter((r) => "val_loss" in r).map((r) => r.val_loss);
  const best = val.length ? Math.min(...val).toFixed(4) : "–";
  const state = progress.training ? "training" : "not training now";
  const speed = progress.tokens_per_s ? Math.round(progress.tokens_per_s).toLocaleString() : "–";
  document.getElementById("trainstats").innerHTML = "";
  for (const [label, value, id] of [["state", state, "t-state"], ["step", progress.step ?? "–", "t-step"],
    ["tokens/s", speed, "t-speed"], ["time left", formatSeconds(progress.time_left_s), "t-left"], ["best val_loss", best, "t-best"]]) {
    const span = document.createElement("span");
    span.innerHTML = `<span class="muted">${label}</span> <b id="${id}"></b>`;
    span.querySelector("b").textContent = value;
    document.getElementById("trainstats").appendChild(span);
  }
}

function showSamples(samples) {
  const box = document.getElementById("samples");
  box.textContent = "";
  for (const sample of samples.slice().reverse()) {
    const div = document.createElement("div");
    div.className = "sample";
    div.textContent = `step ${sample.step}, val_loss ${sample.val_loss.toFixed(4)}\n${sample.text}`;
    box.appendChild(div);
  }
}

async function poll() {
  try {
    const data = await getJSON(`/api/training?since=${training.next}`);
    if (data.reset) training.rows = [];
    training.rows.push(...data.rows);
    training.next = data.next;
    document.getElementById("status").textContent = data.ready ? "" : "waiting for the first saved weights…";
    drawChart();
    showStats(data.progress);
    showSamples(data.samples);
    // A run that is training opens this tab by itself, once, unless the user has picked a tab.
    if (!training.opened && !blu.tabChosen && data.progress.training) {
      showTab("training");
      training.opened = true;
    }
  } catch (e) {
    document.getElementById("trainstats").textContent = e.message;
  }
}

poll();
training.timer = setInterval(poll, 2000);
