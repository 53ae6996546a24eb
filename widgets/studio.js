// Studio's downloads: the result as a PNG (its bytes are here already) and the session as one HTML page (written by
// the kernel when asked, sent back as a message's buffer). Follows common.js in the _esm.

function render({ model, el: root }) {
  const box = el("div", "sg-widget sg-studio-downloads");
  const row = el("div", "sg-row");
  const result = el("button", "sg-button sg-download-result", "Download result (PNG)");
  const page = el("button", "sg-button sg-download-page", "Download page (HTML)");
  const status = el("span", "sg-status");
  row.append(result, page, status);
  box.appendChild(row);
  root.appendChild(box);

  function update() {
    const ready = model.get("ready");
    result.disabled = !ready;
    page.disabled = !ready || model.get("busy");
    const why = ready ? "" : "run the stylization first (an out-of-date result is not offered)";
    result.title = why || "the stylized picture, at its full size";
    page.title = why || "one web page with every stage's pictures, the settings and the result";
    status.textContent = model.get("status");
  }

  result.addEventListener("click", () => downloadBytes(model.get("result_png"), model.get("result_name"), "image/png"));
  page.addEventListener("click", () => model.send({ type: "page" }));
  const onAnswer = (message, buffers) => {
    if (message && message.type === "page" && buffers && buffers.length) downloadBytes(buffers[0], message.name, "text/html");
  };
  update();
  return listen(model, { "change:ready change:busy change:status": update }, onAnswer);
}

export default { render };
