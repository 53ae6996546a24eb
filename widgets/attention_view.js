// AttentionView: the content on a <canvas> (click or drag to select a point), the references' heat maps from the
// kernel as <img>s, and the controls (timestep, layer, head, mode, whose queries). Follows common.js in the _esm.

function select(cls, label) {
  const wrap = el("label", "sg-label sg-av-control", label + " ");
  const node = el("select", cls);
  wrap.appendChild(node);
  return [wrap, node];
}

function setOptions(node, options, value) {
  node.replaceChildren();
  for (const [v, text] of options) {
    const option = el("option", "", text);
    option.value = String(v);
    node.appendChild(option);
  }
  node.value = String(value);
}

function render({ model, el: root }) {
  const box = el("div", "sg-widget sg-attention-view");
  const caption = el("div", "sg-av-caption");
  const row = el("div", "sg-av-row");
  const stage = el("div", "sg-av-stage");
  const canvas = el("canvas", "sg-av-canvas");
  canvas.title = "click or drag to choose a content point";
  const stageLabel = el("div", "sg-small", "content · click a point");
  stage.append(canvas, stageLabel);
  const refs = el("div", "sg-av-refs");
  const column = el("div", "sg-av-column");
  const scale = el("div", "sg-av-scale");
  const scaleBar = el("div", "sg-av-scale-bar");
  const scaleLow = el("span", "sg-small", "0");
  const scaleHigh = el("span", "sg-small sg-av-scale-top");
  scale.append(el("span", "sg-small", "attention weight of the point: "), scaleLow, scaleBar, scaleHigh);
  column.append(refs, scale);
  row.append(stage, column);

  const controls = el("div", "sg-row sg-av-controls");
  const tWrap = el("label", "sg-label sg-av-control", "timestep ");
  const tSlider = el("input", "sg-range sg-av-timestep");
  tSlider.type = "range";
  tSlider.min = "0";
  tSlider.step = "1";
  const tValue = el("span", "sg-av-tvalue");
  tWrap.append(tSlider, tValue);
  const [layerWrap, layerSelect] = select("sg-av-layer", "layer");
  const [headWrap, headSelect] = select("sg-av-head", "head");
  const [modeWrap, modeSelect] = select("sg-av-mode", "mode");
  const [queryWrap, querySelect] = select("sg-av-queries", "queries of");
  queryWrap.title = "the clean content's queries, or those of the last stylize result's latent (what the loss's target used at the end)";
  const status = el("div", "sg-status");
  const [saveBtn, stopSaving] = saveButton(model, (text) => (status.textContent = text));
  controls.append(tWrap, layerWrap, headWrap, modeWrap, queryWrap, saveBtn);
  box.append(caption, row, controls, status);
  root.appendChild(box);

  let bitmap = null;
  let inFlight = false;
  let queued = null;
  let safety = null;

  const labels = () => bytesOf(model.get("labels"));

  function outlineRegion(ctx, region) {
    const [h, w] = model.get("label_grid") || [0, 0];
    const lab = labels();
    if (region < 0 || !h || lab.length < h * w) return;
    const sx = canvas.width / w;
    const sy = canvas.height / h;
    regionEdges(ctx, lab, h, w, sx, sy, (label) => label === region);
    ctx.setLineDash([4, 3]);
    ctx.lineWidth = 3;
    ctx.strokeStyle = "rgba(0,0,0,0.6)";
    ctx.stroke();
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = "#ffffff";
    ctx.stroke();
    ctx.setLineDash([]);
  }

  function cross(ctx, y, x) {
    const r = Math.max(5, canvas.width / 24);
    for (const [colour, width] of [["#000000", 4], ["#ffffff", 2]]) {
      ctx.beginPath();
      ctx.moveTo(x - r, y); ctx.lineTo(x + r, y);
      ctx.moveTo(x, y - r); ctx.lineTo(x, y + r);
      ctx.lineWidth = width;
      ctx.strokeStyle = colour;
      ctx.stroke();
    }
  }

  function draw() {
    const ctx = paintPicture(canvas, bitmap);
    outlineRegion(ctx, model.get("region"));
    const point = queued || model.get("point") || [];
    const [H, W] = model.get("image_size") || [0, 0];
    if (point.length === 2 && H && W) cross(ctx, ((point[0] + 0.5) * canvas.height) / H, ((point[1] + 0.5) * canvas.width) / W);
    canvas.dataset.point = JSON.stringify(model.get("point") || []);
    canvas.dataset.drawn = bitmap ? "1" : "0";
  }

  function updateRefs() {
    const urls = model.get("heatmaps") || [];
    const names = model.get("reference_names") || [];
    const shares = model.get("reference_shares") || [];
    const match = model.get("match");
    const width = model.get("reference_width");
    while (refs.children.length > urls.length) refs.lastChild.remove();
    urls.forEach((url, j) => {
      let figure = refs.children[j];
      if (!figure) {
        figure = el("figure", "sg-av-ref");
        figure.append(el("img", "sg-av-img"), el("figcaption", "sg-small"));
        refs.appendChild(figure);
      }
      const img = figure.firstChild;
      if (img.getAttribute("src") !== url) img.src = url;
      img.style.width = `${width}px`;
      img.alt = names[j] || `style ${j + 1}`;
      const share = shares[j] === undefined ? "" : ` · ${(100 * shares[j]).toFixed(0)}% of the weight`;
      const matched = match && match[0] === j ? ` · region ${match[1]} outlined` : "";
      figure.lastChild.textContent = `${names[j] || `style ${j + 1}`}${share}${matched}`;
      figure.classList.toggle("sg-av-matched", Boolean(match && match[0] === j));
    });
  }

  function updateScale() {
    const { colors, top } = model.get("heat_scale") || {};
    scale.style.display = colors && colors.length ? "" : "none";
    if (!colors || !colors.length) return;
    scaleBar.style.background = `linear-gradient(to right, ${colors.join(", ")})`;
    scaleHigh.textContent = `${(100 * top).toPrecision(2)}% (brightest)`;
    scale.dataset.top = String(top);
  }

  function updateCaption() {
    caption.textContent = model.get("caption");
    const share = model.get("share");
    caption.dataset.share = share === null || share === undefined ? "" : String(share);
  }

  function updateControls() {
    const timesteps = model.get("timesteps") || [];
    tSlider.max = String(Math.max(0, timesteps.length - 1));
    const index = timesteps.indexOf(model.get("timestep"));
    tSlider.value = String(Math.max(0, index));
    tValue.textContent = ` t = ${model.get("timestep")}` + (timesteps.length ? ` (step ${index + 1} of ${timesteps.length})` : "");
    setOptions(layerSelect, (model.get("layers") || []).map((l) => [l, String(l)]), model.get("layer"));
    const heads = [[-1, "mean"]];
    for (let h = 0; h < model.get("heads"); h++) heads.push([h, String(h)]);
    setOptions(headSelect, heads, model.get("head"));
    setOptions(modeSelect, (model.get("modes") || []).map((m) => [m, m]), model.get("mode"));
    setOptions(querySelect, [["content", "content"], ["result", "result"]], model.get("queries"));
    querySelect.options[1].disabled = !model.get("has_result");
  }

  function onSize() {
    stage.style.width = `${model.get("width")}px`;
  }

  // one request at a time: a drag sends its latest point when the kernel has answered the one before
  function send(point) {
    const current = model.get("point") || [];
    if (!inFlight && current[0] === point[0] && current[1] === point[1]) return;
    if (inFlight) {
      queued = point;
      draw();
      return;
    }
    inFlight = true;
    queued = null;
    status.textContent = "computing…";
    model.set("point", point);
    model.save_changes();
    clearTimeout(safety);
    safety = setTimeout(() => (inFlight = false), 10000); // never stuck if an answer is lost
  }

  function pointAt(event) {
    const [H, W] = model.get("image_size") || [0, 0];
    const rect = canvas.getBoundingClientRect();
    if (!H || !rect.width) return null;
    const x = Math.floor(((event.clientX - rect.left) / rect.width) * W);
    const y = Math.floor(((event.clientY - rect.top) / rect.height) * H);
    if (x < 0 || y < 0 || x >= W || y >= H) return null;
    return [y, x];
  }

  let dragging = false;
  canvas.addEventListener("pointerdown", (event) => {
    const point = pointAt(event);
    if (!point) return;
    dragging = true;
    if (canvas.setPointerCapture && event.pointerId !== undefined) {
      try { canvas.setPointerCapture(event.pointerId); } catch (_) { /* synthetic events have no active pointer */ }
    }
    send(point);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!dragging) return;
    const point = pointAt(event);
    if (point) send(point);
  });
  const stop = () => (dragging = false);
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);

  const onAnswer = (message) => {
    if (!message || message.type !== "answered") return;
    inFlight = false;
    clearTimeout(safety);
    status.textContent = model.get("status");
    if (queued) send(queued);
  };
  model.on("msg:custom", onAnswer);

  const setControl = (name, value) => {
    model.set(name, value);
    model.save_changes();
    status.textContent = "computing…";
  };
  tSlider.addEventListener("input", () => {
    const timesteps = model.get("timesteps") || [];
    tValue.textContent = ` t = ${timesteps[Number(tSlider.value)]} (step ${Number(tSlider.value) + 1} of ${timesteps.length})`;
  });
  tSlider.addEventListener("change", () => {
    const timesteps = model.get("timesteps") || [];
    const t = timesteps[Number(tSlider.value)];
    if (t !== undefined) setControl("timestep", t);
  });
  layerSelect.addEventListener("change", () => setControl("layer", Number(layerSelect.value)));
  headSelect.addEventListener("change", () => setControl("head", Number(headSelect.value)));
  modeSelect.addEventListener("change", () => setControl("mode", modeSelect.value));
  querySelect.addEventListener("change", () => setControl("queries", querySelect.value));

  async function onImage() {
    bitmap = await loadPng(model.get("content_png"));
    draw();
  }
  const handlers = {
    "change:content_png": onImage,
    "change:point change:region change:labels change:label_grid change:image_size": draw,
    "change:heatmaps change:reference_names change:reference_shares change:match change:reference_width": updateRefs,
    "change:heat_scale": updateScale,
    "change:caption change:share": updateCaption,
    "change:timesteps change:timestep change:layers change:layer change:heads change:head change:mode change:modes change:queries change:has_result": updateControls,
    "change:status": () => (status.textContent = model.get("status")),
    "change:width": onSize,
  };
  for (const [events, fn] of Object.entries(handlers)) events.split(" ").forEach((e) => model.on(e, fn));

  status.textContent = model.get("status");
  onSize();
  updateCaption();
  updateRefs();
  updateScale();
  updateControls();
  onImage();

  return () => {
    for (const [events, fn] of Object.entries(handlers)) events.split(" ").forEach((e) => model.off(e, fn));
    model.off("msg:custom", onAnswer);
    clearTimeout(safety);
    stopSaving();
  };
}

export default { render };
