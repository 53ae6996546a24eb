// Compare: before/after slider between content and result, references beside it. Follows common.js in the _esm.

function render({ model, el: root }) {
  const box = el("div", "sg-widget sg-compare");
  const main = el("div", "sg-cmp-main");
  const frame = el("div", "sg-cmp-frame");
  const after = el("img", "sg-cmp-img sg-cmp-after");
  const before = el("img", "sg-cmp-img sg-cmp-before");
  after.alt = "result";
  before.alt = "content";
  after.draggable = false;
  before.draggable = false;
  const handle = el("div", "sg-cmp-handle");
  const leftTag = el("span", "sg-cmp-tag sg-cmp-tag-left", "content");
  const rightTag = el("span", "sg-cmp-tag sg-cmp-tag-right", "result");
  frame.append(after, before, handle, leftTag, rightTag);
  const slider = el("input", "sg-range sg-cmp-range");
  Object.assign(slider, { type: "range", min: "0", max: "1", step: "0.005" });
  const status = el("div", "sg-status sg-cmp-status");
  const [saveBtn, stopSaving] = saveButton(model, (text) => (status.textContent = text));
  const controls = el("div", "sg-row sg-cmp-controls");
  controls.append(slider, saveBtn);
  main.append(frame, controls, status);
  const refs = el("div", "sg-cmp-refs");
  box.append(main, refs);
  root.appendChild(box);

  let urls = [];
  const url = (value) => {
    const bytes = bytesOf(value);
    if (!bytes.length) return "";
    const u = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
    urls.push(u);
    return u;
  };
  function freeUrls() {
    urls.forEach((u) => URL.revokeObjectURL(u));
    urls = [];
  }

  function setPosition() {
    const p = model.get("position");
    before.style.clipPath = `inset(0 ${(100 * (1 - p)).toFixed(2)}% 0 0)`;
    handle.style.left = `${(100 * p).toFixed(2)}%`;
    slider.value = String(p);
  }

  function setImages() {
    freeUrls();
    after.src = url(model.get("result_png"));
    before.src = url(model.get("content_png"));
    refs.replaceChildren();
    const names = model.get("style_names") || [];
    (model.get("style_pngs") || []).forEach((value, i) => {
      const fig = el("figure", "sg-cmp-ref");
      const img = el("img");
      img.src = url(value);
      img.alt = names[i] || `style ${i + 1}`;
      fig.append(img, el("figcaption", "sg-small", names[i] || `style ${i + 1}`));
      refs.appendChild(fig);
    });
  }

  function setWidth() {
    frame.style.width = `${model.get("width")}px`;
    controls.style.width = `${model.get("width")}px`;
    status.style.maxWidth = `${model.get("width")}px`;
  }

  function positionAt(event) {
    const rect = frame.getBoundingClientRect();
    return Math.min(1, Math.max(0, (event.clientX - rect.left) / rect.width));
  }
  let dragging = false;
  const move = (event) => {
    if (!dragging) return;
    model.set("position", positionAt(event));
    model.save_changes();
    setPosition();
  };
  frame.addEventListener("pointerdown", (event) => {
    dragging = true;
    frame.setPointerCapture?.(event.pointerId);
    move(event);
  });
  frame.addEventListener("pointermove", move);
  frame.addEventListener("pointerup", () => (dragging = false));
  frame.addEventListener("pointercancel", () => (dragging = false));
  slider.addEventListener("input", () => {
    model.set("position", parseFloat(slider.value));
    model.save_changes();
    setPosition();
  });

  const handlers = {
    "change:position": setPosition,
    "change:content_png": setImages,
    "change:result_png": setImages,
    "change:style_pngs": setImages,
    "change:style_names": setImages,
    "change:width": setWidth,
    "change:status": () => (status.textContent = model.get("status")),
  };
  for (const [event, fn] of Object.entries(handlers)) model.on(event, fn);
  setWidth();
  setImages();
  setPosition();
  status.textContent = model.get("status");
  return () => {
    for (const [event, fn] of Object.entries(handlers)) model.off(event, fn);
    freeUrls();
    stopSaving();
  };
}

export default { render };
