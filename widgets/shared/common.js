// Helpers shared by the StyleGallery widgets. Not a module of its own: each widget's _esm is this text followed
// by the widget's file (widgets/_common.py: esm), because anywidget loads every _esm as one self-contained module.

// The bytes of a Bytes traitlet (a DataView, an ArrayBuffer or a typed array) as a Uint8Array.
function bytesOf(value) {
  if (!value) return new Uint8Array(0);
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value.buffer instanceof ArrayBuffer) return new Uint8Array(value.buffer);
  return new Uint8Array(0);
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

// PNG bytes (a synced Bytes trait) as something a canvas can draw: an ImageBitmap, or an <img> where that is missing.
async function loadPng(value) {
  const bytes = bytesOf(value);
  if (!bytes.length) return null;
  const blob = new Blob([bytes], { type: "image/png" });
  if (typeof createImageBitmap === "function") return createImageBitmap(blob);
  const url = URL.createObjectURL(blob);
  try {
    const img = new Image();
    img.src = url;
    await img.decode();
    return img;
  } finally {
    URL.revokeObjectURL(url);
  }
}

// A new canvas path along the border of the cells of an (h, w) label grid whose label passes isIn; cells are
// sx x sy canvas pixels. The caller strokes it.
function regionEdges(ctx, lab, h, w, sx, sy, isIn) {
  const inside = (y, x) => y >= 0 && x >= 0 && y < h && x < w && isIn(lab[y * w + x]);
  ctx.beginPath();
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!inside(y, x)) continue;
      if (!inside(y - 1, x)) { ctx.moveTo(x * sx, y * sy); ctx.lineTo((x + 1) * sx, y * sy); }
      if (!inside(y + 1, x)) { ctx.moveTo(x * sx, (y + 1) * sy); ctx.lineTo((x + 1) * sx, (y + 1) * sy); }
      if (!inside(y, x - 1)) { ctx.moveTo(x * sx, y * sy); ctx.lineTo(x * sx, (y + 1) * sy); }
      if (!inside(y, x + 1)) { ctx.moveTo((x + 1) * sx, y * sy); ctx.lineTo((x + 1) * sx, (y + 1) * sy); }
    }
  }
}

function hexToRgb(hex) {
  const v = parseInt((hex || "#888888").slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}

// A w x h canvas with one pixel per cell of an (h, w) label grid, in the labels' colours (CSS hex strings); null
// when the labels do not fill the grid. Drawn scaled up, without smoothing, it is the regions' overlay.
function labelCanvas(lab, h, w, colors) {
  if (!h || !w || lab.length < h * w) return null;
  const colours = (colors || []).map(hexToRgb);
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const data = ctx.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const c = colours[lab[i]] || [128, 128, 128];
    data.data.set([c[0], c[1], c[2], 255], 4 * i);
  }
  ctx.putImageData(data, 0, 0);
  return canvas;
}

// Thin lines where neighbouring cells of an (h, w) label grid belong to different regions, on a canvas of
// width x height pixels (``scale``: line width per CSS pixel, ``opacity``: the overlay's).
function cellBorders(ctx, lab, h, w, width, height, scale, opacity) {
  if (!h || lab.length < h * w || opacity <= 0) return;
  const sx = width / w;
  const sy = height / h;
  ctx.beginPath();
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const r = lab[y * w + x];
      if (x + 1 < w && lab[y * w + x + 1] !== r) { ctx.moveTo((x + 1) * sx, y * sy); ctx.lineTo((x + 1) * sx, (y + 1) * sy); }
      if (y + 1 < h && lab[(y + 1) * w + x] !== r) { ctx.moveTo(x * sx, (y + 1) * sy); ctx.lineTo((x + 1) * sx, (y + 1) * sy); }
    }
  }
  ctx.lineWidth = Math.max(1, 0.75 * scale);
  ctx.strokeStyle = `rgba(255,255,255,${Math.min(0.85, 0.3 + opacity)})`;
  ctx.stroke();
}

// The canvas sized to the picture (an ImageBitmap or <img>; kept as it is without one), cleared, the picture drawn.
function paintPicture(canvas, bitmap) {
  const ctx = canvas.getContext("2d");
  if (bitmap && (canvas.width !== bitmap.width || canvas.height !== bitmap.height)) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (bitmap) ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  return ctx;
}

// A label overlay (labelCanvas) drawn over the whole canvas at ``opacity``, cells kept sharp.
function paintOverlay(ctx, overlay, opacity) {
  if (!overlay) return;
  ctx.save();
  ctx.globalAlpha = opacity;
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(overlay, 0, 0, ctx.canvas.width, ctx.canvas.height);
  ctx.restore();
}

// Listen to the model: ``handlers`` maps space-separated event names to a function, ``onMessage`` (optional) gets
// the kernel's custom messages. Returns what a render returns: the function that stops listening.
function listen(model, handlers, onMessage) {
  for (const [events, fn] of Object.entries(handlers)) events.split(" ").forEach((e) => model.on(e, fn));
  if (onMessage) model.on("msg:custom", onMessage);
  return () => {
    for (const [events, fn] of Object.entries(handlers)) events.split(" ").forEach((e) => model.off(e, fn));
    if (onMessage) model.off("msg:custom", onMessage);
  };
}

// Hand the user a file: ``bytes`` (anything bytesOf takes) saved as ``name`` through the browser's download.
function downloadBytes(value, name, type) {
  const url = URL.createObjectURL(new Blob([bytesOf(value)], { type: type || "application/octet-stream" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// The "save PNG" button of a view: a click asks the kernel for the widget's picture (what to_png writes), which
// comes back as the answer's buffer and is downloaded under the name the kernel gives. Each request has an id, so
// only the view that asked downloads. While waiting the button says so; an error goes to ``showError(text)``.
// Returns [button, the function that stops listening].
function saveButton(model, showError) {
  const label = "save PNG";
  const button = el("button", "sg-button sg-save", label);
  button.title = "download this view as a PNG (what to_png writes)";
  let pending = null;
  let safety = null;
  const done = () => {
    pending = null;
    clearTimeout(safety);
    button.disabled = false;
    button.textContent = label;
    button.classList.remove("sg-busy");
  };
  button.addEventListener("click", () => {
    if (pending) return;
    pending = Math.random().toString(36).slice(2);
    button.disabled = true;
    button.textContent = "saving…";
    button.classList.add("sg-busy");
    model.send({ type: "save_png", id: pending });
    safety = setTimeout(() => {  // never stuck if the kernel is gone
      done();
      showError("⚠ no answer from the kernel: is it running?");
    }, 60000);
  });
  const onMessage = (message, buffers) => {
    if (!message || message.type !== "png" || message.id !== pending) return;
    done();
    if (message.error) showError(`⚠ ${message.error}`);
    else downloadBytes(buffers && buffers[0], message.name, "image/png");
  };
  model.on("msg:custom", onMessage);
  return [button, () => {
    model.off("msg:custom", onMessage);
    clearTimeout(safety);
  }];
}
