// The exported session page's behaviour (session_page.py inlines this file): pictures from the embedded data,
// region hover with its tooltip, tabs, the loss read-out and the before/after slider. No network, no library.
(function () {
  "use strict";

  const read = (id) => JSON.parse(document.getElementById(id).textContent);
  const data = read("sg-data");
  const pictures = read("sg-pictures");
  document.querySelectorAll("img[data-picture]").forEach((img) => {
    img.src = pictures[img.dataset.picture];
  });

  // ---------------------------------------------------------------- tooltip: first line bold, one line a row
  const tip = document.getElementById("sg-tip");

  function place(x, y) {
    const pad = 14;
    let left = x + pad;
    let top = y + pad;
    if (left + tip.offsetWidth > window.innerWidth - 4) left = Math.max(4, x - pad - tip.offsetWidth);
    if (top + tip.offsetHeight > window.innerHeight - 4) top = Math.max(4, y - pad - tip.offsetHeight);
    tip.style.left = left + "px";
    tip.style.top = top + "px";
  }

  function showTip(text, x, y) {
    if (tip.dataset.text !== text) {
      tip.replaceChildren(...text.split("\n").map((line, i) => {
        const row = document.createElement(i === 0 ? "strong" : "div");
        row.textContent = line;
        return row;
      }));
      tip.dataset.text = text;
    }
    tip.hidden = false;
    place(x, y);
  }

  function hideTip() {
    tip.hidden = true;
  }

  // ---------------------------------------------------------------- regions: hover, linked highlight
  const views = [];

  function rgb(hex) {
    const n = parseInt(hex.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }

  function highlight(image, region) {
    const lit = views.map(() => new Set());
    if (image !== null) {
      lit[image].add(region);
      data.images[image].links[region].forEach(([i, r]) => lit[i].add(r));
    }
    views.forEach((view, i) => {
      const key = [...lit[i]].sort().join(",");
      if (view.key !== key) {
        view.key = key;
        view.draw(lit[i]);
      }
    });
  }

  document.querySelectorAll(".sg-region-pic").forEach((frame) => {
    const index = Number(frame.dataset.image);
    const image = data.images[index];
    const [h, w] = image.grid;
    const canvas = frame.querySelector("canvas");
    canvas.width = w;
    canvas.height = h;
    const colours = image.colours.map(rgb);
    const context = canvas.getContext("2d");
    const view = {
      key: null,
      draw(lit) {
        const cells = context.createImageData(w, h);
        image.labels.forEach((label, i) => {
          const c = colours[label];
          cells.data.set([c[0], c[1], c[2], lit.has(label) ? 190 : lit.size ? 20 : 85], 4 * i);
        });
        context.putImageData(cells, 0, 0);
      },
    };
    views[index] = view;
    let shown = -1;
    frame.addEventListener("pointermove", (event) => {
      const box = canvas.getBoundingClientRect();
      const col = Math.min(w - 1, Math.max(0, Math.floor(((event.clientX - box.left) / box.width) * w)));
      const row = Math.min(h - 1, Math.max(0, Math.floor(((event.clientY - box.top) / box.height) * h)));
      const region = image.labels[row * w + col];
      showTip(image.tips[region], event.clientX, event.clientY);
      if (region !== shown) {
        shown = region;
        highlight(index, region);
      }
    });
    frame.addEventListener("pointerleave", () => {
      shown = -1;
      hideTip();
      highlight(null);
    });
  });
  highlight(null);

  document.querySelectorAll("[data-tip]").forEach((node) => {
    const linked = node.dataset.image !== undefined;
    node.addEventListener("pointerenter", (event) => {
      showTip(node.dataset.tip, event.clientX, event.clientY);
      if (linked) highlight(Number(node.dataset.image), Number(node.dataset.region));
    });
    node.addEventListener("pointermove", (event) => place(event.clientX, event.clientY));
    node.addEventListener("pointerleave", () => {
      hideTip();
      if (linked) highlight(null);
    });
  });

  const toggle = document.getElementById("sg-show-regions");
  toggle.addEventListener("change", () => document.body.classList.toggle("sg-no-regions", !toggle.checked));

  // ---------------------------------------------------------------- tabs: a group's buttons show one of its panels
  document.querySelectorAll(".sg-tabs").forEach((tabs) => {
    const buttons = tabs.querySelectorAll("button");
    const panels = document.querySelectorAll(`[data-tab-of="${tabs.dataset.group}"]`);
    buttons.forEach((button) => button.addEventListener("click", () => {
      buttons.forEach((b) => b.setAttribute("aria-selected", String(b === button)));
      panels.forEach((panel) => {
        panel.hidden = panel.dataset.tab !== button.dataset.tab;
      });
    }));
  });

  // ---------------------------------------------------------------- loss curves: the values at the nearest step
  document.querySelectorAll("svg[data-loss]").forEach((svg) => {
    const chart = data.losses[Number(svg.dataset.loss)];
    const cursor = svg.querySelector(".sg-cursor");
    svg.addEventListener("pointermove", (event) => {
      const box = svg.getBoundingClientRect();
      const x = ((event.clientX - box.left) / box.width) * svg.viewBox.baseVal.width;
      if (x < chart.left - 6 || x > chart.right + 6) {
        cursor.setAttribute("visibility", "hidden");
        hideTip();
        return;
      }
      let best = 0;
      chart.x.forEach((value, i) => {
        if (Math.abs(value - x) < Math.abs(chart.x[best] - x)) best = i;
      });
      cursor.setAttribute("x1", chart.x[best]);
      cursor.setAttribute("x2", chart.x[best]);
      cursor.setAttribute("visibility", "visible");
      const lines = chart.series.map((s) => `${s.name}: ${s.values[best] === null ? "–" : s.values[best].toPrecision(4)}`);
      showTip([chart.labels[best], ...lines].join("\n"), event.clientX, event.clientY);
    });
    svg.addEventListener("pointerleave", () => {
      cursor.setAttribute("visibility", "hidden");
      hideTip();
    });
  });

  // ---------------------------------------------------------------- before / after: drag, click or keys
  document.querySelectorAll(".sg-ba").forEach((box) => {
    const before = box.querySelector(".sg-ba-before");
    const handle = box.querySelector(".sg-ba-handle");
    let split = 50;
    let dragging = false;

    function set(percent) {
      split = Math.min(100, Math.max(0, percent));
      before.style.clipPath = `inset(0 ${100 - split}% 0 0)`;
      handle.style.left = split + "%";
      handle.setAttribute("aria-valuenow", String(Math.round(split)));
      handle.setAttribute("aria-valuetext", `${Math.round(split)}% content, ${100 - Math.round(split)}% result`);
    }

    function follow(event) {
      const rect = box.getBoundingClientRect();
      set((100 * (event.clientX - rect.left)) / rect.width);
    }

    box.addEventListener("pointerdown", (event) => {
      dragging = true;
      box.setPointerCapture(event.pointerId);
      follow(event);
      handle.focus({ preventScroll: true });
      event.preventDefault();
    });
    box.addEventListener("pointermove", (event) => {
      if (dragging) follow(event);
    });
    const stop = () => {
      dragging = false;
    };
    box.addEventListener("pointerup", stop);
    box.addEventListener("pointercancel", stop);
    handle.addEventListener("keydown", (event) => {
      const step = event.shiftKey ? 1 : 5;
      const moves = {
        ArrowLeft: split - step, ArrowDown: split - step, ArrowRight: split + step, ArrowUp: split + step,
        PageDown: split - 25, PageUp: split + 25, Home: 0, End: 100,
      };
      if (!(event.key in moves)) return;
      event.preventDefault();
      set(moves[event.key]);
    });
    set(split);
  });
})();
