// MatchMatrix: clickable heatmap of content regions x all style regions. Follows common.js in the _esm.

const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
];

function colourOf(v) {
  const x = Math.min(1, Math.max(0, v)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const a = VIRIDIS[i];
  const b = VIRIDIS[i + 1];
  return [0, 1, 2].map((k) => Math.round(a[k] + f * (b[k] - a[k])));
}

function sameMatch(a, b) {
  return a && b && a[0] === b[0] && a[1] === b[1];
}

function render({ model, el: root }) {
  const box = el("div", "sg-widget sg-match-matrix");
  const head = el("div", "sg-row");
  const title = el("div", "sg-title", "match matrix");
  const partLabel = el("label", "sg-label", "colour by ");
  const partSelect = el("select", "sg-mm-part");
  ["score", "statistical", "semantic", "geometric"].forEach((p) => {
    const option = el("option", "", p);
    option.value = p;
    partSelect.appendChild(option);
  });
  partLabel.appendChild(partSelect);
  const status = el("div", "sg-status");
  const [saveBtn, stopSaving] = saveButton(model, (text) => (status.textContent = text));
  head.append(title, partLabel, saveBtn);
  const hint = el("div", "sg-small", "click a cell to match that content region to that style region; tick keep to leave a region unstylized");
  const wrap = el("div", "sg-mm-wrap");
  const canvas = el("canvas", "sg-mm-canvas");
  wrap.appendChild(canvas);
  const info = el("div", "sg-mm-info", "hover a cell for its score parts");
  const table = el("div", "sg-mm-table");
  box.append(head, hint, wrap, info, table, status);
  root.appendChild(box);

  let hover = null; // {row, col} or {row, keep: true}
  let layout = null;

  function computeLayout() {
    const score = model.get("score") || [];
    const columns = model.get("columns") || [];
    const rows = score.length;
    const cols = columns.length;
    const cellW = cols > 18 ? 30 : 42;
    const cellH = 28;
    const gap = 6;
    const left = 58;
    const top = 42;
    const colX = [];
    let x = left;
    columns.forEach((c, i) => {
      if (i > 0 && c[0] !== columns[i - 1][0]) x += gap;
      colX.push(x);
      x += cellW;
    });
    const keepX = x + 12;
    const keepW = 44;
    return { rows, cols, cellW, cellH, gap, left, top, colX, keepX, keepW, width: keepX + keepW + 8, height: top + rows * cellH + 8 };
  }

  function draw() {
    layout = computeLayout();
    const L = layout;
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = `${L.width}px`;
    canvas.style.height = `${L.height}px`;
    canvas.width = Math.round(L.width * dpr);
    canvas.height = Math.round(L.height * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, L.width, L.height);
    const fg = getComputedStyle(box).color || "#222";

    const part = model.get("part") || "score";
    const score = (part === "score" ? model.get("score") : (model.get("parts") || {})[part]) || [];
    const columns = model.get("columns") || [];
    const matches = model.get("matches") || [];
    const best = model.get("best") || [];
    const overridden = model.get("overridden") || [];
    const names = model.get("reference_names") || [];
    const rowColours = model.get("row_colors") || [];
    const colColours = model.get("column_colors") || [];
    let lo = Infinity;
    let hi = -Infinity;
    score.forEach((row) => row.forEach((v) => { lo = Math.min(lo, v); hi = Math.max(hi, v); }));
    const span = hi - lo || 1;

    // headers: reference names over their column groups, region numbers with their colours
    ctx.font = "11px sans-serif";
    ctx.textBaseline = "middle";
    ctx.textAlign = "center";
    let start = 0;
    while (start < columns.length) {
      let end = start;
      while (end + 1 < columns.length && columns[end + 1][0] === columns[start][0]) end++;
      const x0 = L.colX[start];
      const x1 = L.colX[end] + L.cellW;
      ctx.fillStyle = fg;
      ctx.fillText(names[columns[start][0]] || `style ${columns[start][0] + 1}`, (x0 + x1) / 2, 9, x1 - x0);
      ctx.fillRect(x0 + 2, 17, x1 - x0 - 4, 1);
      start = end + 1;
    }
    columns.forEach((c, j) => {
      const x = L.colX[j];
      ctx.fillStyle = colColours[j] || "#888";
      ctx.fillRect(x + 4, 24, 10, 10);
      ctx.fillStyle = fg;
      ctx.textAlign = "left";
      ctx.fillText(`r${c[1]}`, x + 17, 29);
    });
    ctx.textAlign = "center";
    ctx.fillStyle = fg;
    ctx.fillText("keep", L.keepX + L.keepW / 2, 29);

    for (let r = 0; r < L.rows; r++) {
      const y = L.top + r * L.cellH;
      const kept = matches[r] === null || matches[r] === undefined;
      ctx.fillStyle = rowColours[r] || "#888";
      ctx.fillRect(4, y + 9, 10, 10);
      ctx.fillStyle = fg;
      ctx.textAlign = "left";
      ctx.fillText(`c${r}${overridden.includes(r) ? " ✎" : ""}`, 18, y + L.cellH / 2);
      ctx.textAlign = "center";
      for (let j = 0; j < L.cols; j++) {
        const x = L.colX[j];
        const v = score[r][j];
        const [cr, cg, cb] = colourOf((v - lo) / span);
        ctx.globalAlpha = kept ? 0.35 : 1;
        ctx.fillStyle = `rgb(${cr},${cg},${cb})`;
        ctx.fillRect(x + 1, y + 1, L.cellW - 2, L.cellH - 2);
        const light = 0.299 * cr + 0.587 * cg + 0.114 * cb > 140;
        ctx.fillStyle = light ? "#111" : "#fff";
        ctx.fillText(v.toFixed(2), x + L.cellW / 2, y + L.cellH / 2 + 1, L.cellW - 4);
        ctx.globalAlpha = 1;
        if (best[r] === j) {
          ctx.beginPath();
          ctx.arc(x + L.cellW - 6, y + 6, 3, 0, 2 * Math.PI);
          ctx.fillStyle = "#ffffff";
          ctx.fill();
          ctx.lineWidth = 1;
          ctx.strokeStyle = "#000";
          ctx.stroke();
        }
        if (sameMatch(matches[r], columns[j])) {
          ctx.lineWidth = 4;
          ctx.strokeStyle = "#111";
          ctx.strokeRect(x + 2, y + 2, L.cellW - 4, L.cellH - 4);
          ctx.lineWidth = 2;
          ctx.strokeStyle = overridden.includes(r) ? "#ff4d4d" : "#ffffff";
          ctx.strokeRect(x + 2, y + 2, L.cellW - 4, L.cellH - 4);
        }
        if (hover && hover.row === r && hover.col === j) {
          ctx.lineWidth = 1;
          ctx.setLineDash([3, 2]);
          ctx.strokeStyle = "#ff00ff";
          ctx.strokeRect(x + 0.5, y + 0.5, L.cellW - 1, L.cellH - 1);
          ctx.setLineDash([]);
        }
      }
      // keep box
      const bx = L.keepX + L.keepW / 2 - 8;
      const by = y + L.cellH / 2 - 8;
      ctx.lineWidth = hover && hover.row === r && hover.keep ? 2 : 1;
      ctx.strokeStyle = fg;
      ctx.strokeRect(bx, by, 16, 16);
      if (kept) {
        ctx.fillStyle = "#d62728";
        ctx.fillRect(bx + 3, by + 3, 10, 10);
      }
    }
    canvas.dataset.layout = JSON.stringify({
      left: L.left, top: L.top, cellW: L.cellW, cellH: L.cellH, colX: L.colX, keepX: L.keepX, keepW: L.keepW,
      rows: L.rows, cols: L.cols,
    });
    canvas.dataset.columns = JSON.stringify(columns);
  }

  function describe(r, j) {
    const score = model.get("score") || [];
    const parts = model.get("parts") || {};
    const weights = model.get("weights") || {};
    const columns = model.get("columns") || [];
    const names = model.get("reference_names") || [];
    const matches = model.get("matches") || [];
    const best = model.get("best") || [];
    const c = columns[j];
    const terms = ["statistical", "semantic", "geometric"]
      .map((p) => `${(weights[p] ?? 0).toFixed(3)} × ${(parts[p]?.[r]?.[j] ?? 0).toFixed(3)} ${p}`)
      .join(" + ");
    const marks = [sameMatch(matches[r], c) ? "current match" : "", best[r] === j ? "best score" : ""].filter(Boolean);
    return `content region ${r} × ${names[c[0]] || "style " + (c[0] + 1)} region ${c[1]}: score ${score[r][j].toFixed(3)} = ${terms}${marks.length ? " (" + marks.join(", ") + ")" : ""}`;
  }

  function updateTable() {
    const matches = model.get("matches") || [];
    const score = model.get("score") || [];
    const columns = model.get("columns") || [];
    const names = model.get("reference_names") || [];
    const overridden = model.get("overridden") || [];
    table.replaceChildren();
    matches.forEach((m, r) => {
      const line = el("div", "sg-mm-row");
      line.dataset.row = String(r);
      if (m === null || m === undefined) {
        line.textContent = `c${r} → keep content`;
      } else {
        const j = columns.findIndex((c) => sameMatch(c, m));
        const s = j >= 0 ? score[r][j].toFixed(3) : "?";
        line.textContent = `c${r} → ${names[m[0]] || "style " + (m[0] + 1)} r${m[1]} (score ${s})${overridden.includes(r) ? " ✎ overridden" : ""}`;
      }
      table.appendChild(line);
    });
    table.dataset.matches = JSON.stringify(matches);
  }

  function hit(event) {
    if (!layout) return null;
    const rect = canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const y = event.clientY - rect.top;
    const r = Math.floor((y - layout.top) / layout.cellH);
    if (r < 0 || r >= layout.rows) return null;
    if (x >= layout.keepX && x < layout.keepX + layout.keepW) return { row: r, keep: true };
    for (let j = 0; j < layout.cols; j++) {
      if (x >= layout.colX[j] && x < layout.colX[j] + layout.cellW) return { row: r, col: j };
    }
    return null;
  }

  canvas.addEventListener("mousemove", (event) => {
    const h = hit(event);
    const changed = JSON.stringify(h) !== JSON.stringify(hover);
    hover = h;
    if (h && h.col !== undefined) info.textContent = describe(h.row, h.col);
    else if (h && h.keep) info.textContent = `content region ${h.row}: toggle "keep content" (no style loss on it)`;
    canvas.style.cursor = h ? "pointer" : "default";
    if (changed) draw();
  });
  canvas.addEventListener("mouseleave", () => {
    hover = null;
    draw();
  });
  canvas.addEventListener("click", (event) => {
    const h = hit(event);
    if (!h) return;
    if (h.keep) {
      const matches = model.get("matches") || [];
      const kept = matches[h.row] === null || matches[h.row] === undefined;
      model.send({ type: "keep", row: h.row, keep: !kept });
    } else {
      model.send({ type: "pick", row: h.row, col: h.col });
    }
  });

  const redraw = () => {
    draw();
    updateTable();
  };
  partSelect.addEventListener("change", () => {
    model.set("part", partSelect.value);
    model.save_changes();
    draw();
  });
  const onPart = () => {
    partSelect.value = model.get("part");
    draw();
  };
  const events = ["score", "parts", "weights", "columns", "matches", "best", "overridden", "reference_names", "row_colors", "column_colors"];
  events.forEach((name) => model.on(`change:${name}`, redraw));
  const onStatus = () => (status.textContent = model.get("status"));
  model.on("change:status", onStatus);
  model.on("change:part", onPart);
  partSelect.value = model.get("part");
  redraw();
  onStatus();
  return () => {
    events.forEach((name) => model.off(`change:${name}`, redraw));
    model.off("change:status", onStatus);
    model.off("change:part", onPart);
    stopSaving();
  };
}

export default { render };
