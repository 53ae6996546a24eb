"""The exported session page (stylegallery/tools/session_page.py): one self-contained HTML file of a finished run,
written by Session.export_html, export_html and ``stylegallery run --html``; read in a headless browser."""

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylegallery import Session
from stylegallery.analysis.figures import label_spot
from stylegallery.errors import StyleGalleryError
from stylegallery.tools.session_page import export_html

SCREENSHOTS = Path(os.environ.get("STYLEGALLERY_SCREENSHOTS", "/tmp"))
SIZE = 128


@pytest.fixture(scope="module")
def finished(pipe):
    """A session of the planted scene (content and two references) run to the end: 3 regions each, 3 steps."""
    from synthetic import planted_scene

    content, *styles = planted_scene(SIZE)[0]
    session = Session(pipe, content, styles, size=SIZE, inversion_steps=2, n_clusters=3, use_depth=False, steps=3)
    session.run(progress=False)
    return session


@pytest.fixture(scope="module")
def page(finished, tmp_path_factory):
    path = finished.export_html(tmp_path_factory.mktemp("page") / "session.html")
    return path, path.read_text(encoding="utf-8")


def _data(text: str, name: str):
    return json.loads(re.search(f'<script type="application/json" id="{name}">(.*?)</script>', text, re.S).group(1))


def test_the_page_needs_nothing_outside_itself(page):
    path, text = page
    assert path.name == "session.html" and text.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", text)
    assert all("src" not in tag for tag in re.findall(r"<script\b[^>]*>", text)), "a script from a file"
    markup = re.sub(r"<script\b[^>]*>.*?</script>", "", text, flags=re.S)  # the inline script sets .src itself
    assert re.findall(r"\bsrc=", markup) and not re.search(r"""\bsrc=(?!"data:image/)""", markup)
    assert "<link" not in text and "@import" not in text and "url(" not in text
    pictures = _data(text, "sg-pictures")
    assert set(pictures) == {"image0", "image1", "image2", "result", "before"}
    assert all(url.startswith("data:image/jpeg;base64,") for url in pictures.values())
    # every <img> has its picture: embedded, or one of the shared ones the script fills in
    for tag in re.findall(r"<img\b[^>]*>", text):
        key = re.search(r'data-picture="([^"]+)"', tag)
        assert (key and key.group(1) in pictures) or 'src="data:image/' in tag, tag


def test_the_page_shows_every_region_with_its_size_and_match(finished, page):
    _, text = page
    segmentation, matching = finished.segmentation, finished.matching
    images = _data(text, "sg-data")["images"]
    assert len(images) == 3
    for i, image in enumerate(images):
        n = segmentation.n_regions(i)
        assert image["grid"] == list(segmentation.labels[i].shape)
        assert image["labels"] == segmentation.labels[i].flatten().tolist()
        assert len(image["tips"]) == len(image["colours"]) == n
        name = "content" if i == 0 else f"style {i}"
        for r, (tip, cells) in enumerate(zip(image["tips"], segmentation.region_sizes(i))):
            assert tip.startswith(f"{name} · region {r}\n{cells} latent cells · ")
            if i == 0:
                reference, region = matching.matches[r]
                assert f"matched to style {reference + 1} region {region} (score " in tip
                assert image["links"][r] == [[reference + 1, region]]
            else:
                users = [c for c, m in enumerate(matching.matches) if m == [i - 1, r]]
                assert (f"used by content region{'s' if len(users) > 1 else ''} {', '.join(map(str, users))}"
                        if users else "used by no content region") in tip
    # the match matrix: a row per content region, a column per style region, the matched cells marked, parts in
    # every cell's tooltip
    score = re.search(r'<table class="sg-matrix" data-part="score">.*?</table>', text, re.S).group(0)
    assert score.count("<tr") == 2 + len(matching.matches)
    assert score.count("data-tip=") == len(matching.matches) * len(matching.columns)
    assert len(re.findall(r'<td class="sg-match[ "]', score)) == len(matching.matches)
    assert all(part in score for part in ("× statistical", "× semantic", "× geometric"))
    assert all(f'data-part="{part}"' in text for part in ("statistical", "semantic", "geometric"))


def test_the_page_shows_every_setting_losses_maps_and_scores(finished, page):
    _, text = page
    for stage in ("invert", "segment", "match", "stylize"):
        for name in finished.results[stage].settings:
            assert f"<code>{name}</code>" in text, (stage, name)
    for name in ("size", "keep_aspect"):
        assert f"<code>{name}</code>" in text
    for stage in finished.timings:
        assert f"<td>{stage}</td>" in text
    assert "tiny" in text and finished.prepared.model in text
    # loss curves: total, content and one per content region, read out per step
    chart = _data(text, "sg-data")["losses"][0]
    names = [s["name"] for s in chart["series"]]
    assert names == ["total", "content"] + [f"style, region {r}" for r in range(finished.segmentation.n_regions(0))]
    assert len(chart["x"]) == len(finished.stylization.history) == 3
    assert chart["series"][0]["values"] == pytest.approx([h["total"] for h in finished.stylization.history])
    # attention maps: each content region, each mode, each reference
    n = finished.segmentation.n_regions(0)
    assert len(re.findall(r'alt="(zeroed|masked|plain) attention of region', text)) == n * 3 * 2
    # per-region scores, with the metric that needs a network named as left out
    scores = re.search(r'<section id="scores">.*?</section>', text, re.S).group(0)
    assert scores.count("<tr>") == n + 1 and "SSIM of the whole image" in scores
    assert "LPIPS is not computed" in scores


def test_export_refuses_an_unfinished_session_an_existing_page_and_a_bad_path(pipe, finished, page, tmp_path):
    fresh = Session(pipe, finished.content, finished.styles, size=SIZE)
    with pytest.raises(StyleGalleryError, match=r"has not run to the end \(prepare, invert, segment, match, stylize "
                                                r"have no current result\): run session.run\(\)"):
        fresh.export_html(tmp_path / "fresh.html")
    assert not (tmp_path / "fresh.html").exists()

    path, text = page
    with pytest.raises(StyleGalleryError, match="already exists; pass overwrite=True"):
        finished.export_html(path)
    assert path.read_text(encoding="utf-8") == text
    for bad, message in ((tmp_path / "page.txt", "must end in .html or .htm"), (tmp_path, "is a folder"),
                         (path / "inside.html", "is a file, not a folder")):
        with pytest.raises(StyleGalleryError, match=message):
            finished.export_html(bad)


def test_results_without_a_pipeline_make_a_page_that_says_what_is_missing(finished, tmp_path):
    s = finished
    path = export_html(tmp_path / "results.htm", s.prepared, s.segmentation, s.matching, s.stylization)
    text = path.read_text(encoding="utf-8")
    assert "Not shown: the attention maps need the pipeline" in text
    assert "The content loss per region needs the UNet" in text
    assert "Not given (export with <code>inversion=</code>)" in text
    assert "the other prepare settings were not given" in text
    with pytest.raises(StyleGalleryError, match="needs the match stage's result"):
        export_html(tmp_path / "none.html", s.prepared, s.segmentation, None, s.stylization)


def _cli(model_dir, images, *extra):
    content, style = images
    return ["run", str(content), str(style), "--model", str(model_dir / "sd"), "--no-semantic", "--no-depth",
            "--size", "64", "--steps", "2", "--inversion-steps", "2", "--max-clusters", "3", "--quiet", *extra]


def test_cli_run_html_writes_the_page(model_dir, images, tmp_path, capsys):
    from stylegallery.tools.cli import main

    page = tmp_path / "pages" / "run.html"
    assert main(_cli(model_dir, images, "-o", str(tmp_path / "out.png"), "--html", str(page))) == 0
    text = page.read_text(encoding="utf-8")
    assert "content · region 0" in text and 'class="sg-ba"' in text and "prepare</td>" in text
    assert "attention of region 0" in text and "content loss of the whole image" in text
    capsys.readouterr()
    # an existing page is an existing output: as for the others, --overwrite replaces it
    assert main(_cli(model_dir, images, "-o", str(tmp_path / "again.png"), "--html", str(page))) == 2
    assert capsys.readouterr().err == f"stylegallery: error: {page} already exists; pass --overwrite to replace it\n"
    assert not (tmp_path / "again.png").exists()


def test_cli_bad_html_path_exits_2_with_one_line(model_dir, images, tmp_path, capsys):
    from stylegallery.tools.cli import main

    (tmp_path / "file").write_text("")
    for bad, message in ((tmp_path / "page.pdf", "must end in .html or .htm"),
                         (tmp_path / "file" / "page.html", "is a file, not a folder")):
        assert main(_cli(model_dir, images, "-o", str(tmp_path / "out.png"), "--html", str(bad))) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("stylegallery: error: ") and message in err, err
    assert not (tmp_path / "out.png").exists()


# ------------------------------------------------------------------------------------------------ in the browser
def _pixel(png: bytes, x: int, y: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float)[y, x]


def test_the_page_in_the_browser_hover_a_region_and_drag_the_slider(chromium, finished, page):
    """Opened from disk with no error: the mouse over a content region shows that region's id, size and match; a drag
    on the before/after picture moves the split, and a point it passes shows the result instead of the content."""
    from browser_support import watched_page

    path, _ = page
    segmentation, matching = finished.segmentation, finished.matching
    context = chromium.new_context(viewport={"width": 1200, "height": 900})
    view = watched_page(context)
    try:
        view.goto(path.as_uri())
        view.wait_for_function("() => [...document.images].every((img) => img.complete && img.naturalWidth > 0)")

        # hover region 1 of the content at its deepest cell
        labels = segmentation.labels[0].numpy()
        row, col = label_spot(labels == 1)
        canvas = view.locator('.sg-region-pic[data-image="0"] canvas')
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        view.mouse.move(box["x"] + (col + 0.5) / labels.shape[1] * box["width"],
                        box["y"] + (row + 0.5) / labels.shape[0] * box["height"])
        tip = view.locator("#sg-tip")
        tip.wait_for(state="visible")
        reference, region = matching.matches[1]
        cells = segmentation.region_sizes(0)[1]
        text = tip.inner_text()
        assert text.startswith("content · region 1\n")
        assert f"{cells} latent cells · {cells / labels.size:.1%} of the image" in text
        assert f"matched to style {reference + 1} region {region}" in text
        view.screenshot(path=str(SCREENSHOTS / "sg_session_page_hover.png"))
        view.mouse.move(0, 0)
        tip.wait_for(state="hidden")

        # drag the split from the middle to 15%
        slider = view.locator(".sg-ba")
        slider.scroll_into_view_if_needed()
        box = slider.bounding_box()
        handle = view.locator(".sg-ba-handle")
        assert handle.get_attribute("aria-valuenow") == "50"
        content = finished.prepared.pixels[0].permute(1, 2, 0).numpy().astype(float)
        result = finished.stylization.pixels.permute(1, 2, 0).numpy().astype(float)
        column = int(0.3 * SIZE)  # between the old and the new split
        rows = range(8, SIZE - 8)
        probe = max(rows, key=lambda r: np.abs(content[r, column - 2:column + 3] - result[r, column - 2:column + 3]).sum())
        x, y = round((column + 0.5) / SIZE * box["width"]), round((probe + 0.5) / SIZE * box["height"])
        before = _pixel(slider.screenshot(), x, y)
        view.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        view.mouse.down()
        view.mouse.move(box["x"] + 0.15 * box["width"], box["y"] + box["height"] / 2, steps=8)
        view.mouse.up()
        assert abs(int(handle.get_attribute("aria-valuenow")) - 15) <= 1
        clip = view.locator(".sg-ba-before").evaluate("(node) => node.style.clipPath")
        assert re.fullmatch(r"inset\(0(px)? 8[45](\.\d+)?% 0(px)? 0(px)?\)", clip), clip
        after = _pixel(slider.screenshot(), x, y)
        here_content, here_result = content[probe, column], result[probe, column]
        distance = lambda a, b: float(np.abs(a - b).sum())  # noqa: E731
        assert distance(before, here_content) < distance(before, here_result), (before, here_content, here_result)
        assert distance(after, here_result) < distance(after, here_content), (after, here_content, here_result)
        # the keys move it too
        handle.focus()
        view.keyboard.press("ArrowRight")
        assert abs(int(handle.get_attribute("aria-valuenow")) - 20) <= 1
        view.screenshot(path=str(SCREENSHOTS / "sg_session_page.png"), full_page=True)
    finally:
        context.close()
    assert not view.errors, view.errors
