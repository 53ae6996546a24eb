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
