// MaskPainter: paint regions over an image with pointer strokes (mouse, pen, touch). Follows common.js in the _esm.
// The view draws the stroke as it goes; on release it sends the stroke's points (in latent cells) to the kernel,
// which paints them and sends the new labels back.

const TOOL_TIPS = {
  brush: "paint the cells the brush passes over into the target region",
  lasso: "draw a loop: every cell inside it goes to the target region",
  erase: "give cells back the region they had before painting",
};

function render({ model, el: root }) {
  const box = el("div", "sg-widget sg-mask-painter");
  const title = el("div", "sg-title");
  const stage = el("div", "sg-rv-stage");
  const canvas = el("canvas", "sg-rv-canvas sg-mp-canvas");
  canvas.style.touchAction = "none"; // a finger paints instead of scrolling the page
  stage.append(canvas);

  const tools = el("div", "sg-row sg-mp-tools");
  const toolButtons = {};
  for (const name of Object.keys(TOOL_TIPS)) {
    const button = el("button", "sg-button sg-mp-tool", name);
    button.title = TOOL_TIPS[name];
    button.dataset.tool = name;
    button.addEventListener("click", () => {
      model.set("tool", name);
      model.save_changes();
    });
    toolButtons[name] = button;
    tools.append(button);
  }
  const radiusLabel = el("label", "sg-label", "brush");
  const radius = el("input", "sg-range sg-mp-radius");
  Object.assign(radius, { type: "range", min: "0.5", max: "8", step: "0.5" });
  radius.title = "brush radius in latent cells";
  tools.append(radiusLabel, radius);

  const targets = el("div", "sg-row sg-mp-targets");
  const targetLabel = el("label", "sg-label", "into");
  const target = el("select", "sg-select sg-mp-target");
  target.title = "the region the brush and the lasso paint into";
  const grow = el("button", "sg-button", "grow");
  grow.title = "grow the target region by one cell";
  const shrink = el("button", "sg-button", "shrink");
  shrink.title = "shrink the target region by one cell";
  targets.append(targetLabel, target, grow, shrink);

  const actions = el("div", "sg-row sg-mp-actions");
  const undo = el("button", "sg-button", "undo");
  const reset = el("button", "sg-button", "reset");
  reset.title = "back to the regions before painting";
  const apply = el("button", "sg-button sg-button-primary sg-mp-apply", "apply and match");
  apply.title = "put the painted regions into the session and run the match stage again";
  actions.append(undo, reset, apply);
  const status = el("div", "sg-status");
  box.append(title, stage, tools, targets, actions, status);
  root.appendChild(box);

  let bitmap = null;
  let overlay = null;
  let path = null; // the stroke being drawn: [[row, col], ...] in latent cells
  let pointer = null;

  const labels = () => bytesOf(model.get("labels"));
  const grid = () => model.get("grid") || [0, 0];

  function draw() {
    const ctx = paintPicture(canvas, bitmap);
    const [h, w] = grid();
    paintOverlay(ctx, overlay, model.get("opacity"));
    const scale = Math.max(1, canvas.width / 256);
    cellBorders(ctx, labels(), h, w, canvas.width, canvas.height, scale, model.get("opacity"));
    if (path && path.length && h) drawStroke(ctx, canvas.width / w, canvas.height / h, scale);
    canvas.dataset.drawn = bitmap ? "1" : "0";
    canvas.dataset.regions = String((model.get("sizes") || []).filter((n) => n > 0).length);
    canvas.dataset.strokes = String(model.get("strokes"));
  }

  function drawStroke(ctx, sx, sy, scale) {
    const tool = model.get("tool");
    ctx.save();
    ctx.beginPath();
    path.forEach(([r, c], i) => (i ? ctx.lineTo(c * sx, r * sy) : ctx.moveTo(c * sx, r * sy)));
    if (tool === "lasso") {
      ctx.closePath();
      ctx.fillStyle = "rgba(255,255,255,0.25)";
      ctx.fill();
      ctx.setLineDash([4 * scale, 3 * scale]);
      ctx.lineWidth = 1.5 * scale;
    } else {
      ctx.lineCap = ctx.lineJoin = "round";
      ctx.lineWidth = 2 * model.get("radius") * sx;
    }
    ctx.strokeStyle = tool === "erase" ? "rgba(0,0,0,0.45)" : "rgba(255,255,255,0.6)";
    ctx.stroke();
    ctx.restore();
  }

  function cellAt(event) {
    const [h, w] = grid();
    const rect = canvas.getBoundingClientRect();
    if (!h || !rect.width) return null;
    return [((event.clientY - rect.top) / rect.height) * h, ((event.clientX - rect.left) / rect.width) * w];
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (pointer !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
    const cell = cellAt(event);
    if (!cell) return;
    pointer = event.pointerId;
    canvas.setPointerCapture(event.pointerId);
    path = [cell];
    event.preventDefault();
    draw();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (event.pointerId !== pointer) return;
    const cell = cellAt(event);
    const last = path[path.length - 1];
    if (cell && Math.hypot(cell[0] - last[0], cell[1] - last[1]) >= 0.25) {
      path.push(cell);
      draw();
    }
  });
  function finish(event) {
    if (event.pointerId !== pointer) return;
    pointer = null;
    const points = path;
    path = null;
    if (points && points.length) {
      status.textContent = "painting…";
      model.send({ type: "stroke", points, tool: model.get("tool"), target: model.get("target") });
    }
    draw();
  }
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", (event) => {
    if (event.pointerId !== pointer) return;
    pointer = null;
    path = null;
    draw();
  });

  radius.addEventListener("input", () => {
    model.set("radius", parseFloat(radius.value));
    model.save_changes();
  });
  target.addEventListener("change", () => {
    model.set("target", parseInt(target.value, 10));
    model.save_changes();
  });
  const request = (type, text) => () => {
    status.textContent = text;
    model.send({ type });
  };
  grow.addEventListener("click", request("grow", "growing…"));
  shrink.addEventListener("click", request("shrink", "shrinking…"));
  undo.addEventListener("click", request("undo", "undoing…"));
  reset.addEventListener("click", request("reset", "resetting…"));
  apply.addEventListener("click", request("apply", "applying and matching…"));
  const onAnswer = (message) => {
    if (message && message.type === "answered") status.textContent = model.get("status");
  };

  function updateTools() {
    for (const [name, button] of Object.entries(toolButtons)) button.classList.toggle("sg-chip-on", model.get("tool") === name);
    radius.value = String(model.get("radius"));
    radius.disabled = model.get("tool") === "lasso";
  }
  function updateTargets() {
    const sizes = model.get("sizes") || [];
    const colours = model.get("colors") || [];
    const chosen = model.get("target");
    const options = [el("option", "", "a new region")];
    options[0].value = "-1";
    sizes.forEach((size, region) => {
      if (!size) return;
      const option = el("option", "", `region ${region} (${size} cells)`);
      option.value = String(region);
      option.style.color = colours[region] || "";
      options.push(option);
    });
    target.replaceChildren(...options);
    target.value = String(chosen);
    grow.disabled = shrink.disabled = chosen < 0;
    undo.disabled = !model.get("can_undo");
    apply.disabled = !model.get("can_apply") || !model.get("edited");
    apply.title = model.get("edited") ? "put the painted regions into the session and run the match stage again"
      : "paint first: nothing to apply";
  }
  function onLabels() {
    const [h, w] = grid();
    overlay = labelCanvas(labels(), h, w, model.get("colors"));
    draw();
    updateTargets();
  }
  async function onImage() {
    bitmap = await loadPng(model.get("image_png"));
    draw();
  }
  function onSize() {
    stage.style.width = `${model.get("width")}px`;
    box.style.width = `${model.get("width") + 12}px`;
  }
  const handlers = {
    "change:image_png": onImage,
    "change:labels change:grid change:colors change:sizes": onLabels,
    "change:target change:can_undo change:edited change:can_apply": updateTargets,
    "change:tool change:radius": updateTools,
    "change:opacity change:strokes": draw,
    "change:title": () => (title.textContent = model.get("title")),
    "change:status": () => (status.textContent = model.get("status")),
    "change:width": onSize,
  };
  title.textContent = model.get("title");
  status.textContent = model.get("status");
  onSize();
  updateTools();
  onLabels();
  onImage();
  return listen(model, handlers, onAnswer);
}

export default { render };
