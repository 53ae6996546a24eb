// RegionView: an image with its region overlay on a <canvas>. Follows common.js in the _esm.

function render({ model, el: root }) {
  const box = el("div", "sg-widget sg-region-view");
  const head = el("div", "sg-row sg-rv-head");
  const title = el("div", "sg-title");
  const stage = el("div", "sg-rv-stage");
  const canvas = el("canvas", "sg-rv-canvas");
  const tip = el("div", "sg-tooltip");
  tip.style.display = "none";
  stage.append(canvas, tip);

  const controls = el("div", "sg-row");
  const opacityLabel = el("label", "sg-label", "overlay");
  const opacity = el("input", "sg-range");
  Object.assign(opacity, { type: "range", min: "0", max: "1", step: "0.05" });
  const mergeButton = el("button", "sg-button", "merge");
  mergeButton.title = "join the second picked region into the first";
  const status = el("div", "sg-status");
  const [saveBtn, stopSaving] = saveButton(model, (text) => (status.textContent = text));
  controls.append(opacityLabel, opacity, mergeButton);
  head.append(title, saveBtn);

  const legend = el("div", "sg-legend");
  const kBox = el("div", "sg-kbox");
  const kTitle = el("div", "sg-small", "silhouette per k · click to re-segment");
  const kBars = el("div", "sg-kbars");
  kBox.append(kTitle, kBars);
  box.append(head, stage, controls, legend, kBox, status);
  root.appendChild(box);

  let bitmap = null;
  let hover = -1;
  let overlayCanvas = null;

  const labels = () => bytesOf(model.get("labels"));
  const grid = () => model.get("grid") || [0, 0];

  function buildOverlay() {
    const [h, w] = grid();
    overlayCanvas = labelCanvas(labels(), h, w, model.get("colors"));
  }

  function outline(ctx, regions, colour, width, dash) {
    const [h, w] = grid();
    const lab = labels();
    if (!regions.length || !h) return;
    const sx = canvas.width / w;
    const sy = canvas.height / h;
    regionEdges(ctx, lab, h, w, sx, sy, (label) => regions.includes(label));
    ctx.setLineDash(dash || []);
    ctx.lineWidth = width + 2;
    ctx.strokeStyle = "rgba(0,0,0,0.6)";
    ctx.stroke();
    ctx.lineWidth = width;
    ctx.strokeStyle = colour;
    ctx.stroke();
    ctx.setLineDash([]);
  }

  function draw() {
    const ctx = paintPicture(canvas, bitmap);
    paintOverlay(ctx, overlayCanvas, model.get("opacity"));
    const scale = Math.max(1, canvas.width / 256);
    cellBorders(ctx, labels(), grid()[0], grid()[1], canvas.width, canvas.height, scale, model.get("opacity"));
    const picked = model.get("picked") || [];
    if (hover >= 0 && !picked.includes(hover)) outline(ctx, [hover], "rgba(255,255,255,0.9)", 1.5 * scale, [4 * scale, 3 * scale]);
    picked.forEach((region, i) => outline(ctx, [region], i === picked.length - 1 ? "#ffffff" : "#ffe14d", 2.5 * scale));
    canvas.dataset.regions = String((model.get("sizes") || []).length);
    canvas.dataset.drawn = bitmap ? "1" : "0";
  }

  function updateLegend() {
    legend.replaceChildren();
    const colours = model.get("colors") || [];
    const sizes = model.get("sizes") || [];
    const total = sizes.reduce((a, b) => a + b, 0) || 1;
    const picked = model.get("picked") || [];
    sizes.forEach((size, region) => {
      const chip = el("button", "sg-chip" + (picked.includes(region) ? " sg-chip-on" : ""));
      const swatch = el("span", "sg-swatch");
      swatch.style.background = colours[region] || "#888";
      chip.append(swatch, document.createTextNode(`${region} · ${Math.round((100 * size) / total)}%`));
      chip.title = `region ${region}: ${size} latent pixels`;
      chip.addEventListener("click", () => pick(region));
      legend.appendChild(chip);
    });
    mergeButton.disabled = picked.length !== 2;
    mergeButton.textContent = picked.length === 2 ? `merge ${picked[1]} into ${picked[0]}` : "merge (pick two)";
  }

  function updateK() {
    const curve = model.get("silhouette") || [];
    kBox.style.display = curve.length ? "" : "none";
    kBars.replaceChildren();
    if (!curve.length) return;
    const can = model.get("can_segment");
    const chosen = model.get("chosen_k");
    const forced = model.get("forced_k");
    const scores = curve.map((p) => p[1]);
    const lo = Math.min(0, ...scores);
    const hi = Math.max(...scores, 1e-6);
    curve.forEach(([k, score]) => {
      const bar = el("button", "sg-kbar");
      const fill = el("span", "sg-kfill");
      fill.style.height = `${Math.max(4, (100 * (score - lo)) / (hi - lo || 1))}%`;
      const label = el("span", "sg-klabel", String(k));
      bar.append(fill, label);
      if (k === chosen && !forced) bar.classList.add("sg-kbar-chosen");
      if (k === forced) bar.classList.add("sg-kbar-forced");
      bar.title = `k = ${k}: silhouette ${score.toFixed(3)}${k === chosen ? " (best)" : ""}`;
      bar.disabled = !can;
      bar.addEventListener("click", () => {
        status.textContent = `segmenting with k = ${k}…`;
        model.send({ type: "set_k", k });
      });
      kBars.appendChild(bar);
    });
    const auto = el("button", "sg-button sg-kauto" + (forced ? "" : " sg-kbar-chosen"), "auto");
    auto.title = "choose k by the best silhouette score";
    auto.disabled = !can;
    auto.addEventListener("click", () => model.send({ type: "set_k", k: 0 }));
    kBars.appendChild(auto);
  }

  function pick(region) {
    let picked = (model.get("picked") || []).slice();
    let selected;
    if (picked.includes(region)) {
      picked = picked.filter((p) => p !== region);
      selected = picked.length ? picked[picked.length - 1] : -1;
    } else {
      picked = picked.concat([region]).slice(-2);
      selected = region;
    }
    model.set("picked", picked);
    model.set("selected", selected);
    model.save_changes();
  }

  function regionAt(event) {
    const [h, w] = grid();
    const rect = canvas.getBoundingClientRect();
    if (!h || !rect.width) return -1;
    const x = Math.floor(((event.clientX - rect.left) / rect.width) * w);
    const y = Math.floor(((event.clientY - rect.top) / rect.height) * h);
    if (x < 0 || y < 0 || x >= w || y >= h) return -1;
    return labels()[y * w + x];
  }

  function onMove(event) {
    const region = regionAt(event);
    if (region !== hover) {
      hover = region;
      draw();
    }
    if (region < 0) {
      tip.style.display = "none";
      return;
    }
    const sizes = model.get("sizes") || [];
    const total = sizes.reduce((a, b) => a + b, 0) || 1;
    // sizes count cells of the latent grid, each covering scale x scale pixels of the picture
    const scale = bitmap ? Math.round(bitmap.width / grid()[1]) : 0;
    const cell = scale > 1 ? ` (${scale}×${scale} image px each)` : "";
    tip.textContent = `region ${region} · ${((100 * sizes[region]) / total).toFixed(1)}%\n${sizes[region]} latent px${cell}`;
    const rect = stage.getBoundingClientRect();
    tip.style.display = "block";
    tip.style.left = `${Math.max(0, Math.min(event.clientX - rect.left + 12, rect.width - tip.offsetWidth))}px`;
    tip.style.top = `${event.clientY - rect.top + 12}px`;
  }

  canvas.addEventListener("mousemove", onMove);
  canvas.addEventListener("mouseleave", () => {
    hover = -1;
    tip.style.display = "none";
    draw();
  });
  canvas.addEventListener("click", (event) => {
    const region = regionAt(event);
    if (region >= 0) pick(region);
  });
  opacity.addEventListener("input", () => {
    model.set("opacity", parseFloat(opacity.value));
    model.save_changes();
  });
  mergeButton.addEventListener("click", () => {
    status.textContent = "merging…";
    model.send({ type: "merge" });
  });
  // the kernel answers every request, after its status (unchanged, e.g. the same merge twice, sends no change)
  const onAnswer = (message) => {
    if (message && message.type === "answered") status.textContent = model.get("status");
  };

  async function onImage() {
    bitmap = await loadPng(model.get("image_png"));
    draw();
  }
  function onLabels() {
    buildOverlay();
    draw();
    updateLegend();
  }
  function onSize() {
    stage.style.width = `${model.get("width")}px`;
    box.style.width = `${model.get("width") + 12}px`;
  }
  const handlers = {
    "change:image_png": onImage,
    "change:labels change:grid change:colors change:sizes": onLabels,
    "change:opacity": () => {
      opacity.value = String(model.get("opacity"));
      draw();
    },
    "change:picked change:selected": () => {
      draw();
      updateLegend();
    },
    "change:silhouette change:chosen_k change:forced_k change:can_segment": updateK,
    "change:title": () => (title.textContent = model.get("title")),
    "change:status": () => (status.textContent = model.get("status")),
    "change:width": onSize,
  };
  title.textContent = model.get("title");
  status.textContent = model.get("status");
  opacity.value = String(model.get("opacity"));
  onSize();
  onLabels();
  updateK();
  onImage();
  const stopListening = listen(model, handlers, onAnswer);
  return () => {
    stopListening();
    stopSaving();
  };
}

export default { render };
