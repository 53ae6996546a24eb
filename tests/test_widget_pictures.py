"""Pictures from every widget: ``to_png`` (and ``to_svg`` for figures) show the widget's current state at print
resolution, write atomically, never overwrite by accident, and answer the view's "save PNG" message with the same
bytes (or an error in the widget's status)."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("anywidget")

from stylegallery import Session  # noqa: E402
from stylegallery.errors import StyleGalleryError  # noqa: E402
from stylegallery.widgets import AttentionView, Compare, LossMonitor, MatchMatrix, RegionView  # noqa: E402


def frontend_message(widget, content: dict) -> None:
    """Deliver a custom message from the view, as the comm does."""
    widget._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})


def frontend_update(widget, **state) -> None:
    """Deliver a state change from the view."""
    widget._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}}, "buffers": []})


def picture(path) -> Image.Image:
    image = Image.open(path)
    assert image.format == "PNG"
    image.load()
    return image


def pixels(path) -> np.ndarray:
    return np.asarray(picture(path).convert("RGB")).astype(np.int64)


@pytest.fixture(scope="module")
def session(pipe):
    """A session at 128 px with two references, run to the end (4 stylize steps)."""
    from synthetic import planted_scene

    (content, *refs), _ = planted_scene(128)
    s = Session(pipe, content, refs, size=128, inversion_steps=3, steps=4, max_clusters=4, use_depth=False)
    s.run(progress=False)
    return s


def test_region_view_png_is_the_overlay_as_shown_at_full_resolution(session, tmp_path):
    view = RegionView(session, index=0, width=96, opacity=0.0)
    bare = pixels(view.to_png(tmp_path / "bare.png"))
    assert bare.shape == (128, 128, 3)  # the working image's pixels, not the 96 px on screen
    assert (bare == np.asarray(session.prepared.image(0))).all()  # opacity 0: the image itself
    assert picture(tmp_path / "bare.png").info["dpi"] == pytest.approx((300, 300), abs=0.01)
    view.opacity = 0.6
    coloured = pixels(view.to_png(tmp_path / "coloured.png", dpi=600))
    assert np.abs(coloured - bare).mean() > 10
    assert picture(tmp_path / "coloured.png").info["dpi"] == pytest.approx((600, 600), abs=0.01)
    region = int(view.label_map()[8, 8])
    view.pick(region)
    picked = pixels(view.to_png(tmp_path / "picked.png"))
    outline = (picked != coloured).any(-1)
    assert outline.any() and (picked[outline] == 255).all()  # the last pick outlined in white
    assert view._picture_name() == "regions-content.png"


def test_match_matrix_figure_at_the_dpi_asked_in_the_part_shown(session, tmp_path):
    matrix = MatchMatrix(session)
    low = picture(matrix.to_png(tmp_path / "low.png", dpi=100))
    high = picture(matrix.to_png(tmp_path / "high.png"))
    assert high.width == pytest.approx(3 * low.width, rel=0.03) and high.height == pytest.approx(3 * low.height, rel=0.03)
    assert high.info["dpi"] == pytest.approx((300, 300), abs=0.01)
    svg = ET.parse(matrix.to_svg(tmp_path / "matrix.svg")).getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    text = (tmp_path / "matrix.svg").read_text()
    assert "score" in text and "semantic" not in text
    frontend_update(matrix, part="semantic")  # the view's "colour by"
    assert matrix.part == "semantic" and matrix._picture_name() == "match-matrix-semantic.png"
    matrix.to_svg(tmp_path / "semantic.svg")
    assert "semantic (weight" in (tmp_path / "semantic.svg").read_text()
    assert matrix.png() != (tmp_path / "high.png").read_bytes()


def test_loss_monitor_figure_follows_the_log_scale_and_shows_the_result_at_full_size(session, tmp_path):
    monitor = LossMonitor(history=session.stylization, preview_size=32)
    monitor.to_svg(tmp_path / "linear.svg")
    assert "log scale" not in (tmp_path / "linear.svg").read_text()
    monitor.log_scale = True
    ET.parse(monitor.to_svg(tmp_path / "log.svg"))
    assert "log scale" in (tmp_path / "log.svg").read_text()
    assert picture(monitor.to_png(tmp_path / "log.png")).width > 1500
    # the result beside the curves is the full 128 px picture, not the 32 px copy the view gets
    figure = monitor._picture()
    shown = figure.axes[1].get_images()[0].get_array()
    assert shown.shape[:2] == (128, 128)


def test_compare_png_is_the_split_picture_at_the_slider_position(session, tmp_path):
    compare = Compare.from_session(session, width=96, position=1.0)
    content = pixels(compare.to_png(tmp_path / "content.png"))
    # the result's 128 px, a gap, the references in a column: 64 px each
    assert content.shape == (128, 128 + 2 + 64, 3)
    compare.position = 0.0
    result = pixels(compare.to_png(tmp_path / "result.png"))
    below_tags = slice(40, 128)
    assert np.abs(content[below_tags, 10:118] - np.asarray(session.prepared.image(0))[below_tags, 10:118]).mean() < 1
    assert np.abs(result[below_tags, 10:118] - np.asarray(session.stylization.image)[below_tags, 10:118]).mean() < 1
    frontend_update(compare, position=0.5)  # the slider dragged in the view
    half = pixels(compare.to_png(tmp_path / "half.png"))
    assert (half[below_tags, 10:60] == content[below_tags, 10:60]).all()
    assert (half[below_tags, 70:118] == result[below_tags, 70:118]).all()


def test_attention_view_figure_shows_the_point_and_mode(session, tmp_path):
    view = AttentionView(session, point=[40, 30])
    first = picture(view.to_png(tmp_path / "first.png"))
    assert first.width > 2000 and first.info["dpi"] == pytest.approx((300, 300), abs=0.01)
    assert view._picture_name() == "attention-zeroed-y40-x30.png"
    frontend_update(view, mode="masked", point=[100, 90])
    assert view._picture_name() == "attention-masked-y100-x90.png"
    text = view.to_svg(tmp_path / "masked.svg").read_text()
    assert "masked attention" in text and "point (100, 90)" in text and "mean of heads" in text


def test_nothing_to_draw_and_existing_files_are_refused(session, tmp_path):
    empty = LossMonitor()
    for write in (empty.to_png, empty.to_svg):
        with pytest.raises(StyleGalleryError, match="no steps yet"):
            write(tmp_path / "empty")
    assert not list(tmp_path.iterdir())  # nothing written, no temporary file left

    view = RegionView(session)
    target = tmp_path / "regions.png"
    target.write_bytes(b"mine")
    with pytest.raises(StyleGalleryError, match="overwrite=True"):
        view.to_png(target)
    matrix = MatchMatrix(session)
    with pytest.raises(StyleGalleryError, match="overwrite=True"):
        matrix.to_svg(target)
    assert target.read_bytes() == b"mine"
    assert view.to_png(target, overwrite=True) == target
    assert picture(target).size == (128, 128)
    assert [p.name for p in tmp_path.iterdir()] == ["regions.png"]


@pytest.mark.parametrize("kind", ["RegionView", "MatchMatrix", "LossMonitor", "AttentionView", "Compare"])
def test_the_save_message_answers_with_the_png_of_to_png(session, tmp_path, kind):
    widget = {
        "RegionView": lambda: RegionView(session, index=1),
        "MatchMatrix": lambda: MatchMatrix(session),
        "LossMonitor": lambda: LossMonitor(history=session.stylization),
        "AttentionView": lambda: AttentionView(session),
        "Compare": lambda: Compare.from_session(session),
    }[kind]()
    sent = []
    widget.send = lambda content, buffers=None: sent.append((content, buffers))
    frontend_message(widget, {"type": "save_png", "id": "r1"})
    (answer, buffers), = sent
    assert answer["type"] == "png" and answer["id"] == "r1" and "error" not in answer
    assert answer["name"].endswith(".png") and answer["name"] == widget._picture_name()
    assert buffers[0] == widget.to_png(tmp_path / "file.png").read_bytes()
    assert Image.open(io.BytesIO(buffers[0])).format == "PNG"


def test_the_save_message_shows_an_error_in_the_status(session):
    monitor = LossMonitor()
    sent = []
    monitor.send = lambda content, buffers=None: sent.append((content, buffers))
    frontend_message(monitor, {"type": "save_png", "id": "r2"})
    (answer, buffers), = sent
    assert answer["id"] == "r2" and "no steps yet" in answer["error"] and not buffers
    assert monitor.status.startswith("⚠ ") and "no steps yet" in monitor.status

    view = RegionView(session)  # its own requests are still answered as before, never with a picture
    view.send = lambda content, buffers=None: sent.append((content, buffers))
    frontend_message(view, {"type": "merge"})
    assert sent[-1] == ({"type": "answered"}, None)
