"""The studio: ``stylegallery studio`` serves the explorer as a web page through Voila, used here by clicks only.

The command starts on a free loopback port with isolated Jupyter folders and the tiny test models; headless Chromium
opens the page and goes through the app as a user would: no code shows; a damaged file is refused with a message;
content and two references are chosen through the upload buttons (the browser's file chooser); Run runs every stage;
a click in the match matrix overrides a match, which makes the result out of date; Run makes it again; the result
downloads as a PNG and the session as an HTML page holding that result. Any error in the page fails the test.
Without Voila the command says in one line how to install it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from browser_support import need_chromium, watched_page

SCREENSHOTS = Path(os.environ.get("STYLEGALLERY_SCREENSHOTS", "/tmp"))
# Voila's page template links Font Awesome's stylesheets on a CDN, which an offline machine cannot reach: the one
# console error not ours, matched by its exact message and the address that failed
CDN_ERROR = ("console: Failed to load resource: net::ERR_NAME_NOT_RESOLVED at {'url': "
             "'https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free@%5E5/css/")
SIZE, STEPS = 128, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """``stylegallery studio`` on a free loopback port (tiny models, isolated Jupyter folders); its URL."""
    need_chromium()
    pytest.importorskip("voila", reason="voila is not installed (pip install 'stylegallery[studio]')")
    base = tmp_path_factory.mktemp("studio")
    port = _free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_DATA_DIR=str(base / "data"),
               JUPYTER_RUNTIME_DIR=str(base / "runtime"), IPYTHONDIR=str(base / "ipython"), HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    log_path = base / "studio.log"
    log = open(log_path, "wb")
    # a session of its own: the interrupt below reaches the command and Voila, as Ctrl-C in a terminal does
    process = subprocess.Popen(
        [sys.executable, "-m", "stylegallery", "studio", "--model", "tiny", "--device", "cpu", "--size", str(SIZE),
         "--steps", str(STEPS), "--no-browser", "--ip", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail("stylegallery studio exited:\n" + _log(log_path))
            with socket.socket() as probe:  # listening; a page request would start a kernel
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                pytest.fail("stylegallery studio did not listen in 60 s:\n" + _log(log_path))
            time.sleep(0.3)
        yield {"url": f"http://127.0.0.1:{port}/", "log": log_path}
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        log.close()


def _choose(page, button: str, paths) -> None:
    """Click an upload button of the app and pick ``paths`` in the file chooser it opens."""
    with page.expect_file_chooser() as chooser:
        page.locator(".sg-studio button", has_text=button).click()
    chooser.value.set_files([str(p) for p in paths])


def _status(page, kind: str, text: str = "", timeout: float = 120_000) -> str:
    """Wait until the app's status line is of ``kind`` (ready, running, done, error) and contains ``text``."""
    page.wait_for_function(
        "([kind, text]) => { const s = document.querySelector('.sg-studio-status .sg-studio-' + kind);"
        " return s && s.textContent.includes(text); }", arg=[kind, text], timeout=timeout)
    return page.locator(".sg-studio-status").text_content()


def _mean_colour(page, selector: str) -> list[float]:
    """The mean RGB of the picture of the first ``img`` matching, drawn at its natural size."""
    return page.evaluate(
        """(selector) => {
            const img = document.querySelector(selector);
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth;
            canvas.height = img.naturalHeight;
            const ctx = canvas.getContext('2d');
            ctx.drawImage(img, 0, 0);
            const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
            const sum = [0, 0, 0];
            for (let i = 0; i < data.length; i += 4) for (let k = 0; k < 3; k++) sum[k] += data[i + k];
            return sum.map((v) => v / (data.length / 4));
        }""", selector)


def test_studio_by_clicks(studio, chromium, tmp_path):
    import numpy as np
    from PIL import Image
    from synthetic import planted_scene

    pictures = []
    for image, name in zip(planted_scene(SIZE)[0], ("content.png", "style1.png", "style2.png")):
        image.save(tmp_path / name)
        pictures.append(tmp_path / name)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a picture" * 10)

    context = chromium.new_context(viewport={"width": 1280, "height": 1000}, device_scale_factor=1, accept_downloads=True)
    page = watched_page(context)
    try:
        page.set_default_timeout(60_000)
        page.goto(studio["url"], wait_until="domcontentloaded")
        page.wait_for_selector(".sg-studio", timeout=180_000)  # Voila ran the notebook: the model is loaded
        _status(page, "ready", "Choose a content picture")
        # the page is the app only: no code, no prompt, no cell input
        text = page.locator("body").text_content()
        assert "import" not in text and "from_environment" not in page.content(), text[:500]  # not even hidden
        assert page.locator(".jp-InputArea, .jp-InputPrompt, .cm-editor, .CodeMirror").count() == 0
        assert "Tiny test models" in text
        page.screenshot(path=str(SCREENSHOTS / "sg_studio_start.png"), full_page=True)

        # a damaged file is refused with a message in the app; then content and two references are uploaded
        _choose(page, "Upload content", [broken])
        page.wait_for_function("() => document.querySelector('.sg-studio').textContent.includes("
                               "'broken.png cannot be read as a picture')")
        assert page.locator(".sg-studio img").count() == 0
        _choose(page, "Upload content", [pictures[0]])
        _choose(page, "Upload references", pictures[1:])
        page.wait_for_function("() => document.querySelectorAll('.sg-studio .widget-image').length === 3")
        _status(page, "ready", "press Run")
        assert "cannot be read" not in page.locator(".sg-studio").text_content()  # the message went with the problem
        captions = page.locator(".sg-studio").text_content()
        for caption in ("content: content.png", "reference 1: style1.png", "reference 2: style2.png"):
            assert caption in captions
        assert page.locator(".sg-download-result").is_disabled()

        # Run: every stage runs, the progress follows, and the app says when it is done
        page.locator(".sg-studio-run").click()
        _status(page, "done", "Done")
        assert page.locator(".sg-studio > .widget-hbox .progress-bar").first.evaluate("(b) => b.style.width") == "100%"
        assert page.locator(".sg-explorer").count() == 1
        page.screenshot(path=str(SCREENSHOTS / "sg_studio_done.png"), full_page=True)

        # the match fold: a click on a matrix cell overrides content region 0's match; the result is out of date
        explorer = page.locator(".sg-explorer")
        explorer.locator(".jupyter-widget-Collapse-header", has_text="4 · match").first.click()
        page.wait_for_selector(".sg-explorer canvas.sg-mm-canvas[data-layout]", timeout=30_000)
        canvas = explorer.locator("canvas.sg-mm-canvas")
        layout = json.loads(canvas.get_attribute("data-layout"))
        columns = json.loads(canvas.get_attribute("data-columns"))
        before = json.loads(explorer.locator(".sg-mm-table").get_attribute("data-matches"))
        target = next(j for j, column in enumerate(columns) if column != before[0])
        canvas.click(position={"x": layout["colX"][target] + layout["cellW"] / 2, "y": layout["top"] + layout["cellH"] / 2})
        page.wait_for_function(
            "(expected) => document.querySelector('.sg-mm-table').dataset.matches === JSON.stringify(expected)",
            arg=[columns[target]] + before[1:], timeout=30_000)
        _status(page, "ready", "out of date")
        assert page.locator(".sg-download-result").is_disabled()  # an out-of-date result is not offered
        explorer.screenshot(path=str(SCREENSHOTS / "sg_studio_override.png"))

        # Run again: only stylize is stale; the new result keeps the override
        page.locator(".sg-studio-run").click()
        _status(page, "done", "Done")
        assert json.loads(explorer.locator(".sg-mm-table").get_attribute("data-matches"))[0] == columns[target]
        assert "· done" in explorer.locator(".jupyter-widget-Collapse-header", has_text="5 · stylize").text_content()

        # the downloads: the result as a PNG, the session as an HTML page showing that result
        page.locator(".sg-download-result").scroll_into_view_if_needed()
        with page.expect_download() as download:
            page.locator(".sg-download-result").click()
        assert download.value.suggested_filename == "content-stylized.png"
        data = Path(download.value.path()).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        result = Image.open(io.BytesIO(data))
        assert result.size == (SIZE, SIZE)
        with page.expect_download(timeout=60_000) as download:
            page.locator(".sg-download-page").click()
        assert download.value.suggested_filename == "content-stylegallery.html"
        saved = tmp_path / "session.html"
        download.value.save_as(saved)
        assert saved.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")
        page.wait_for_function("() => document.querySelector('.sg-studio-downloads .sg-status').textContent"
                               ".startsWith('downloaded content-stylegallery.html')")
        page.screenshot(path=str(SCREENSHOTS / "sg_studio_downloaded.png"), full_page=True)
        ours = [e for e in page.errors if not e.startswith(CDN_ERROR)]
        assert not ours, ours

        exported = watched_page(context)
        exported.goto(saved.as_uri())
        exported.wait_for_function("() => { const img = document.querySelector('img[alt=\"result\"]');"
                                   " return img && img.complete && img.naturalWidth > 0; }", timeout=30_000)
        assert exported.evaluate("() => document.querySelector('img[alt=\"result\"]').naturalWidth") == SIZE
        shown = np.array(_mean_colour(exported, 'img[alt="result"]'))
        assert np.abs(shown - np.asarray(result.convert("RGB")).reshape(-1, 3).mean(0)).max() < 4  # JPEG in the page
        assert not exported.errors, exported.errors
    finally:
        context.close()


def test_studio_in_the_kernel(pipe, monkeypatch, tmp_path):
    """The app without a browser: what is missing is said, samples are picked, a run keeps the explorer's own
    changes of size and steps, a model that cannot be loaded is explained in the app, and no samples is said."""
    from stylegallery.tools.cli import STUDIO_ENVIRONMENT
    from stylegallery.widgets import Studio
    from synthetic import planted_scene

    samples = []
    for image, name in zip(planted_scene(SIZE)[0], ("content_bands.png", "style_rows.png", "style_bands.png")):
        image.save(tmp_path / name)
        samples.append(tmp_path / name)
    app = Studio(pipe, settings={"size": SIZE, "steps": STEPS}, samples=samples)
    app.run()
    assert "Choose a content picture" in app.status.value and app.explorer is None
    app.content_samples.value = samples[0]
    app.run()
    assert "at least one style reference" in app.status.value
    app.reference_samples.value = tuple(samples[1:])
    assert len(app.thumbnails.children) == 3 and "press Run" in app.status.value
    app.run()
    assert app.wait(120) == ["prepare", "invert", "segment", "match", "stylize"]
    assert "Done" in app.status.value and app.progress.value == 100 and app.downloads.ready
    assert app.downloads.result_name == "content_bands-stylized.png"
    app.explorer.set(steps=STEPS + 1)  # in the explorer's stylize fold: the app's control follows, Run keeps it
    assert app.steps.value == STEPS + 1 and "out of date" in app.status.value and not app.downloads.ready
    app.run()
    assert app.wait(120) == ["stylize"] and app.session.stylization.settings["steps"] == STEPS + 1

    monkeypatch.setenv(STUDIO_ENVIRONMENT, json.dumps({"model": {"model": str(tmp_path / "no-model")}}))
    broken = Studio.from_environment()
    assert broken.pipe is None and broken.run_button.disabled
    assert "The model could not be loaded" in broken.status.value and "no-model" in broken.status.value
    bare = Studio(pipe, samples=[])
    assert bare.content_samples is None and "No sample pictures are available" in _texts(bare)


def _texts(widget) -> str:
    """The text of every HTML widget inside ``widget``."""
    import ipywidgets as W

    own = widget.value if isinstance(widget, W.HTML) else ""
    return own + "".join(_texts(child) for child in getattr(widget, "children", ()))


def test_studio_without_voila(monkeypatch, capsys):
    """Without Voila, ``stylegallery studio`` says in one line what is missing and how to install it (status 2)."""
    import importlib.util

    from stylegallery.tools.cli import main

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "voila" else found(name, *args))
    assert main(["studio", "--model", "tiny", "--no-browser"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err == 'stylegallery: error: the studio needs voila (not installed here): pip install "stylegallery[studio]"\n'


def test_studio_refuses_a_bad_setting_before_serving(capsys):
    from stylegallery.tools.cli import main

    assert main(["studio", "--model", "tiny", "--size", "100", "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stylegallery: error: working size 100 is not allowed") and err.count("\n") == 1, err
