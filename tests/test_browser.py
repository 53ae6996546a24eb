"""End to end: the widgets render and drive the kernel in a real JupyterLab, in headless Chromium (Playwright).

A JupyterLab server starts on loopback with a token and a temporary root holding a small notebook that builds
a session on the tiny test models and shows a RegionView and a MatchMatrix. Chromium runs every cell, the
test checks that the overlay and the matrix are drawn (canvas pixels), clicks a matrix cell and reads the
kernel's new match table from a re-run cell. Skipped when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(os.environ.get("STYLEGALLERY_SCREENSHOTS", "/tmp"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

SETUP = """\
import json, os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from stylegallery import Session, StyleGallery
from stylegallery.widgets import MatchMatrix, RegionView

pipe = StyleGallery.from_pretrained("tiny", device="cpu")
session = Session(pipe, "content.png", ["style1.png", "style2.png"], size=128, inversion_steps=3,
                  max_clusters=4, use_depth=False, steps=3)
session.run("match", progress=False)
matching = session.matching
"""
SHOW_REGIONS = "view = RegionView(session, index=0, width=256)\nview"
SHOW_MATRIX = "matrix = MatchMatrix(session)\nmatrix"
SHOW_EXPLORER = "from stylegallery.widgets import StageExplorer\nexplorer = StageExplorer(session, preview_every=1)\nexplorer"
PRINT_MATCHES = 'print("MATCHES=" + json.dumps(matching.matches))'
CELLS = (SETUP, SHOW_REGIONS, SHOW_MATRIX, SHOW_EXPLORER, PRINT_MATCHES)
LAST = len(CELLS) - 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_notebook(root: Path) -> Path:
    import nbformat
    from synthetic import planted_scene

    for image, name in zip(planted_scene(128)[0], ("content.png", "style1.png", "style2.png")):
        image.save(root / name)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in CELLS]
    path = root / "widgets.ipynb"
    nbformat.write(nb, path)
    return path


def _jupyter_lab_command() -> list[str]:
    script = Path(sys.executable).parent / "jupyter-lab"
    return [str(script)] if script.exists() else [sys.executable, "-m", "jupyterlab"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free loopback port, from this Python's environment; yields (url, root)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: install chromium for the browser test")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    root.mkdir()
    _write_notebook(root)
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(base / "config"),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(base / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
        IPYTHONDIR=str(base / "ipython"),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    log = open(base / "server.log", "wb")
    server = subprocess.Popen(
        _jupyter_lab_command() + [
            "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--ServerApp.terminals_enabled=False",
        ] + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail("jupyter-lab exited:\n" + (base / "server.log").read_text(errors="replace")[-3000:])
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("jupyter-lab did not start in 60 s:\n" + (base / "server.log").read_text(errors="replace")[-3000:])
            time.sleep(0.3)
        yield {"url": url, "token": token, "root": root, "log": base / "server.log"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
        log.close()


@pytest.fixture(scope="module")
def page(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        height = int(os.environ.get("STYLEGALLERY_BROWSER_HEIGHT", "1100"))  # taller for whole-widget screenshots
        context = browser.new_context(viewport={"width": 1400, "height": height}, device_scale_factor=1)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.errors = errors
        try:
            yield page
        finally:
            context.close()
            browser.close()


def _cell_text(page, index: int) -> str:
    """The text of every output of cell ``index`` of the open notebook (read from the notebook model)."""
    return page.evaluate(
        """(index) => {
            const panel = window.jupyterapp.shell.currentWidget;
            const cell = panel.content.widgets[index];
            const outputs = cell.model.outputs.toJSON();
            return outputs.map((o) => o.text || (o.data && o.data['text/plain']) || o.evalue || '').join('\\n');
        }""",
        index,
    )


def _canvas_stats(page, selector: str) -> dict:
    """Size, share of non-transparent pixels and number of distinct colours of the first canvas matching."""
    return page.evaluate(
        """(selector) => {
            const canvas = document.querySelector(selector);
            if (!canvas || !canvas.width || !canvas.height) return {width: 0, height: 0, opaque: 0, colours: 0};
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let opaque = 0;
            const colours = new Set();
            for (let i = 0; i < data.length; i += 4) {
                if (data[i + 3] > 0) opaque++;
                if (i % 16 === 0) colours.add((data[i] >> 3) * 1024 + (data[i + 1] >> 3) * 32 + (data[i + 2] >> 3));
            }
            return {width: canvas.width, height: canvas.height, opaque: opaque / (data.length / 4), colours: colours.size};
        }""",
        selector,
    )


def _wait_for_output(page, index: int, text: str, timeout: float = 90) -> str:
    """Poll cell ``index``'s outputs until they contain ``text`` (fails at once when any cell shows an error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        errors = page.evaluate(
            """() => window.jupyterapp.shell.currentWidget.content.widgets.flatMap((cell) =>
                cell.model.outputs.toJSON().filter((o) => o.output_type === 'error').map((o) => o.ename + ': ' + o.evalue))"""
        )
        assert not errors, errors
        found = _cell_text(page, index)
        if text in found:
            return found
        time.sleep(0.25)
    pytest.fail(f"cell {index} did not print {text!r} in {timeout} s: {_cell_text(page, index)!r}")


def _run_cell(page, index: int) -> None:
    page.evaluate(
        """async (index) => {
            const panel = window.jupyterapp.shell.currentWidget;
            panel.content.activeCellIndex = index;
            await window.jupyterapp.commands.execute('notebook:run-cell');
        }""",
        index,
    )


def _printed_matches(page) -> list:
    return json.loads(_cell_text(page, LAST).split("MATCHES=", 1)[1].strip())


def test_widgets_render_and_drive_the_kernel(lab, page):
    page.set_default_timeout(60_000)
    page.goto(f"{lab['url']}/lab/tree/widgets.ipynb?token={lab['token']}", wait_until="domcontentloaded")
    page.wait_for_function(
        """(count) => {
            const app = window.jupyterapp;
            const panel = app && app.shell.currentWidget;
            return panel && panel.content && panel.content.widgets && panel.content.widgets.length === count
                && panel.sessionContext && panel.sessionContext.session && panel.sessionContext.session.kernel;
        }""",
        arg=len(CELLS), timeout=60_000,
    )
    page.evaluate(
        """async () => {
            const panel = window.jupyterapp.shell.currentWidget;
            await panel.sessionContext.ready;
            await window.jupyterapp.commands.execute('notebook:run-all-cells');
        }"""
    )
    _wait_for_output(page, LAST, "MATCHES=")  # the last cell ran: every cell has
    before = _printed_matches(page)

    # the region overlay and the matrix are drawn
    page.wait_for_selector("canvas.sg-rv-canvas[data-drawn='1']", timeout=30_000)
    page.wait_for_selector("canvas.sg-mm-canvas[data-layout]", timeout=30_000)
    regions = _canvas_stats(page, "canvas.sg-rv-canvas")
    matrix = _canvas_stats(page, "canvas.sg-mm-canvas")
    assert regions["width"] == 128 and regions["opaque"] > 0.99 and regions["colours"] >= 3, regions
    assert matrix["width"] > 100 and matrix["opaque"] > 0.2 and matrix["colours"] >= 5, matrix
    view = page.locator(".sg-region-view").first
    view.scroll_into_view_if_needed()
    view.screenshot(path=str(SCREENSHOTS / "sg_region_view.png"))
    widget = page.locator(".sg-match-matrix").first
    widget.scroll_into_view_if_needed()
    widget.screenshot(path=str(SCREENSHOTS / "sg_match_matrix.png"))

    # hovering a cell shows its score parts; a click overrides content region 0 with another style region
    canvas = page.locator("canvas.sg-mm-canvas").first
    layout = json.loads(canvas.get_attribute("data-layout"))
    columns = json.loads(canvas.get_attribute("data-columns"))
    assert json.loads(page.locator(".sg-mm-table").first.get_attribute("data-matches")) == before
    target = next(j for j, column in enumerate(columns) if column != before[0])
    # locator.hover/click scroll the canvas into view, wait until it stops moving and check that it is the
    # element under the pointer; raw page.mouse coordinates go stale when JupyterLab scrolls the notebook
    cell = {"x": layout["colX"][target] + layout["cellW"] / 2, "y": layout["top"] + layout["cellH"] / 2}
    canvas.hover(position=cell)
    page.wait_for_function("() => document.querySelector('.sg-mm-info').textContent.includes('score')")
    assert "semantic" in page.locator(".sg-mm-info").first.text_content()
    canvas.click(position=cell)
    expected = [columns[target]] + before[1:]
    page.wait_for_function(
        "(expected) => document.querySelector('.sg-mm-table').dataset.matches === JSON.stringify(expected)",
        arg=expected, timeout=30_000,
    )
    widget.screenshot(path=str(SCREENSHOTS / "sg_match_matrix_clicked.png"))

    # the kernel's Matching changed: run the last cell again and read what it prints
    _run_cell(page, LAST)
    deadline = time.monotonic() + 30
    after = before
    while after == before and time.monotonic() < deadline:
        time.sleep(0.2)
        if "MATCHES=" in _cell_text(page, LAST):
            after = _printed_matches(page)
    assert after == expected, (before, after, expected)

    # RegionView: hover names a region, a click on the canvas and one on a legend chip pick two, merge joins them
    view = page.locator(".sg-region-view").first
    canvas = view.locator("canvas.sg-rv-canvas")
    box = canvas.bounding_box()
    chips = view.locator(".sg-legend .sg-chip")
    n = chips.count()
    assert n >= 2
    spot = {"x": 0.15 * box["width"], "y": 0.5 * box["height"]}
    canvas.hover(position=spot)
    page.wait_for_function("() => document.querySelector('.sg-region-view .sg-tooltip').textContent.startsWith('region ')")
    canvas.click(position=spot)
    page.wait_for_function("() => document.querySelectorAll('.sg-region-view .sg-chip-on').length === 1")
    first = int(view.locator(".sg-chip-on").first.text_content().split("·")[0])
    chips.nth(1 if first == 0 else 0).click()
    merge = view.get_by_role("button", name="merge")
    page.wait_for_function(
        "() => document.querySelector('.sg-region-view .sg-button:not(.sg-kauto)').textContent.startsWith('merge ') "
        "&& !document.querySelector('.sg-region-view .sg-button:not(.sg-kauto)').disabled"
    )
    view.screenshot(path=str(SCREENSHOTS / "sg_region_view_picked.png"))
    merge.click()
    page.wait_for_function(  # the kernel merged and sent the new labels back
        "(n) => document.querySelector('.sg-region-view .sg-legend').children.length === n - 1", arg=n, timeout=30_000,
    )
    assert "merged region" in view.locator(".sg-status").text_content()

    # the explorer (same session) follows the merge; Run all re-runs the stale match and stylize stages
    explorer = page.locator(".sg-explorer").first
    page.wait_for_function(
        "(n) => document.querySelector('.sg-explorer .sg-region-view .sg-legend').children.length === n - 1", arg=n,
    )
    explorer.scroll_into_view_if_needed()
    explorer.get_by_role("button", name="Run all").click()
    page.wait_for_selector(".sg-explorer canvas.sg-lm-canvas[data-points='3']", timeout=60_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.sg-explorer .sg-cmp-img')].some((img) => img.naturalWidth === 128)",
        timeout=30_000,
    )
    curves = _canvas_stats(page, ".sg-explorer canvas.sg-lm-canvas")
    assert curves["opaque"] > 0.01 and curves["colours"] >= 3, curves
    assert "done" in explorer.locator(".sg-badge").last.text_content()
    explorer.screenshot(path=str(SCREENSHOTS / "sg_stage_explorer.png"))
    page.locator(".sg-explorer .sg-loss-monitor").first.screenshot(path=str(SCREENSHOTS / "sg_loss_monitor.png"))
    page.locator(".sg-explorer .sg-compare").first.screenshot(path=str(SCREENSHOTS / "sg_compare.png"))

    assert not [e for e in page.errors if "sg-" in e or "anywidget" in e.lower()], page.errors
