// LossMonitor: live loss curves, latent previews and a Stop button. Follows common.js in the _esm.

function niceTicks(lo, hi, count) {
  const span = hi - lo || 1;
  const step0 = span / count;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) ticks.push(v);
  return ticks;
}

// Ticks of a log axis whose ends lo and hi are log10 values: powers of ten (every other one or fewer over many
// decades), else 1-2-5, 1-2-3-5 or 1..9 times them, else (a narrow range) plain ticks. Returns log10 values.
function logTicks(lo, hi) {
  for (const mantissas of [[1], [1, 2, 5], [1, 2, 3, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]) {
    const ticks = [];
    for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
      mantissas.forEach((m) => {
        const v = e + Math.log10(m);
        if (v >= lo - 1e-9 && v <= hi + 1e-9) ticks.push(v);
      });
    }
    if (ticks.length >= 3) return ticks.filter((_, i) => i % Math.ceil(ticks.length / 7) === 0);
  }
  return niceTicks(10 ** lo, 10 ** hi, 5).filter((v) => v > 0).map(Math.log10); // 5: two ticks at least
}

// A tick label: 3 significant digits at most, no trailing zeros, exponent form for very large or small values.
function formatNumber(v) {
  const rounded = Number(v.toPrecision(3));
  if (rounded === 0) return "0";
  const size = Math.abs(rounded);
  return size >= 1e4 || size < 1e-3 ? rounded.toExponential().replace("e+", "e") : String(rounded);
}

function render({ model, el: root }) {
  const box = el("div", "sg-widget sg-loss-monitor");
  const head = el("div", "sg-row");
  const title = el("div", "sg-title", "stylize: losses");
  const stop = el("button", "sg-button sg-stop", "■ Stop");
  stop.title = "stop after the current step and keep the current result";
  const busyHint = el("span", "sg-small", "the kernel is busy with this cell: interrupt it (■) to stop early");
  const logLabel = el("label", "sg-small");
  const logBox = el("input");
  logBox.type = "checkbox";
  logLabel.append(logBox, document.createTextNode(" log scale"));
  const status = el("div", "sg-status");
  const [saveBtn, stopSaving] = saveButton(model, (text) => (status.textContent = text));
  head.append(title, stop, busyHint, logLabel, saveBtn);

  const progress = el("div", "sg-progress");
  const bar = el("div", "sg-progress-bar");
  progress.appendChild(bar);
  const body = el("div", "sg-lm-body");
  const plotBox = el("div", "sg-lm-plot");
  const canvas = el("canvas", "sg-lm-canvas");
  const legend = el("div", "sg-legend sg-lm-legend");
  plotBox.append(canvas, legend);
  const previewBox = el("div", "sg-lm-preview");
  const preview = el("img", "sg-lm-img");
  preview.alt = "preview";
  const previewLabel = el("div", "sg-small", "");
  previewBox.append(preview, previewLabel);
  body.append(plotBox, previewBox);
  box.append(head, progress, body, status);
  root.appendChild(box);

  const W = 460;
  const H = 220;
  let previewUrl = null;

  function series() {
    const out = [
      { name: "total", values: model.get("total") || [], colour: null, width: 2.2 },
      { name: "content", values: model.get("content") || [], colour: "#8c8c8c", width: 1.4, dash: [5, 3] },
    ];
    const regions = model.get("regions") || {};
    const colours = model.get("region_colors") || [];
    Object.keys(regions)
      .sort((a, b) => Number(a) - Number(b))
      .forEach((key, i) => out.push({ name: `style r${key}`, values: regions[key], colour: colours[i] || "#888", width: 1.2 }));
    return out;
  }

  function draw() {
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = `${W}px`;
    canvas.style.height = `${H}px`;
    canvas.width = Math.round(W * dpr);
    canvas.height = Math.round(H * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    const fg = getComputedStyle(box).color || "#222";
    const steps = model.get("steps") || [];
    const log = model.get("log_scale");
    const all = series();
    const tf = (v) => (log ? Math.log10(Math.max(v, 1e-8)) : v);
    let lo = Infinity;
    let hi = -Infinity;
    all.forEach((s) => s.values.forEach((v) => { if (v !== null && isFinite(v)) { lo = Math.min(lo, tf(v)); hi = Math.max(hi, tf(v)); } }));
    const m = { l: 58, r: 10, t: 10, b: 28 };
    ctx.strokeStyle = fg;
    ctx.fillStyle = fg;
    ctx.lineWidth = 1;
    ctx.globalAlpha = 0.6;
    ctx.strokeRect(m.l, m.t, W - m.l - m.r, H - m.t - m.b);
    ctx.globalAlpha = 1;
    ctx.font = "10px sans-serif";
    if (!steps.length || !isFinite(lo)) {
      ctx.textAlign = "center";
      ctx.fillText("no steps yet", W / 2, H / 2);
      canvas.dataset.points = "0";
      return;
    }
    if (!log && lo > 0) lo = 0;
    if (hi === lo) hi = lo + 1;
    const pad = (hi - lo) * 0.05;
    hi += pad;
    const x0 = steps[0];
    // while running the axis spans the whole run; a finished (or stopped) run fills it
    const x1 = Math.max(model.get("running") ? model.get("total_steps") || 0 : 0, steps[steps.length - 1], x0 + 1);
    const px = (s) => m.l + ((s - x0) / (x1 - x0 || 1)) * (W - m.l - m.r);
    const py = (v) => H - m.b - ((tf(v) - lo) / (hi - lo)) * (H - m.t - m.b);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const yTicks = log ? logTicks(lo, hi) : niceTicks(lo, hi, 4);
    const yLabels = yTicks.map((v) => formatNumber(log ? 10 ** v : v));
    yTicks.forEach((v, i) => {
      const y = H - m.b - ((v - lo) / (hi - lo)) * (H - m.t - m.b);
      ctx.globalAlpha = 0.15;
      ctx.beginPath();
      ctx.moveTo(m.l, y);
      ctx.lineTo(W - m.r, y);
      ctx.stroke();
      ctx.globalAlpha = 1;
      ctx.fillText(yLabels[i], m.l - 4, y);
    });
    canvas.dataset.yticks = JSON.stringify(yLabels);
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    niceTicks(x0, x1, Math.min(5, Math.max(1, x1 - x0))).filter((s) => Number.isInteger(Math.round(s * 1e6) / 1e6))
      .forEach((s) => ctx.fillText(String(Math.round(s)), px(s), H - m.b + 4));
    ctx.fillText("step", W / 2, H - 12);
    // the y axis: what the curves are (loss, on a log scale when asked)
    ctx.save();
    ctx.translate(10, m.t + (H - m.t - m.b) / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(log ? "loss (log scale)" : "loss", 0, 0);
    ctx.restore();
    canvas.dataset.ylabel = log ? "loss (log scale)" : "loss";
    all.forEach((s) => {
      ctx.beginPath();
      let open = false;
      s.values.forEach((v, i) => {
        if (v === null || !isFinite(v) || i >= steps.length) {
          open = false;
          return;
        }
        if (!open) ctx.moveTo(px(steps[i]), py(v));
        else ctx.lineTo(px(steps[i]), py(v));
        open = true;
      });
      ctx.lineWidth = s.width;
      ctx.strokeStyle = s.colour || fg;
      ctx.setLineDash(s.dash || []);
      ctx.stroke();
      ctx.setLineDash([]);
    });
    canvas.dataset.points = String(steps.length);
  }

  function updateLegend() {
    legend.replaceChildren();
    series().forEach((s) => {
      const item = el("span", "sg-chip");
      const swatch = el("span", "sg-swatch sg-swatch-line");
      swatch.style.background = s.colour || "currentColor";
      const last = s.values.length ? s.values[s.values.length - 1] : null;
      item.append(swatch, document.createTextNode(`${s.name}${last !== null && last !== undefined ? " " + last.toPrecision(3) : ""}`));
      legend.appendChild(item);
    });
  }

  function updateProgress() {
    const total = model.get("total_steps") || 0;
    const step = model.get("step") || 0;
    bar.style.width = total ? `${Math.min(100, (100 * step) / total)}%` : "0%";
    const running = model.get("running");
    const heard = model.get("stoppable"); // false: the run holds the kernel, which reads no click until it ends
    stop.disabled = !running || !heard || model.get("stop_requested");
    stop.textContent = model.get("stop_requested") && running ? "stopping…" : "■ Stop";
    busyHint.style.display = running && !heard ? "" : "none";
    box.classList.toggle("sg-running", !!running);
  }

  function updatePreview() {
    const bytes = bytesOf(model.get("preview_png"));
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    if (!bytes.length) {
      previewBox.style.display = "none";
      return;
    }
    previewUrl = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
    preview.src = previewUrl;
    preview.dataset.step = String(model.get("preview_step"));
    previewBox.style.display = "";
    previewLabel.textContent = model.get("preview_caption");
  }

  stop.addEventListener("click", () => {
    model.set("stop_requested", true);
    model.save_changes();
    updateProgress();
  });
  logBox.addEventListener("change", () => {
    model.set("log_scale", logBox.checked);
    model.save_changes();
  });

  const onData = () => {
    draw();
    updateLegend();
  };
  const handlers = {
    "change:steps": onData,
    "change:regions": onData,
    "change:log_scale": () => {
      logBox.checked = model.get("log_scale");
      draw();
    },
    "change:step": updateProgress,
    "change:total_steps": updateProgress,
    "change:running": () => {
      updateProgress();
      draw();
    },
    "change:stop_requested": updateProgress,
    "change:stoppable": updateProgress,
    "change:preview_png": updatePreview,
    "change:preview_caption": () => (previewLabel.textContent = model.get("preview_caption")),
    "change:status": () => (status.textContent = model.get("status")),
  };
  for (const [event, fn] of Object.entries(handlers)) model.on(event, fn);
  logBox.checked = model.get("log_scale");
  status.textContent = model.get("status");
  onData();
  updateProgress();
  updatePreview();
  return () => {
    for (const [event, fn] of Object.entries(handlers)) model.off(event, fn);
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    stopSaving();
  };
}

export default { render };
