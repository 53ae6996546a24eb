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
