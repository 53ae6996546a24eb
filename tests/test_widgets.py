"""The widgets drive the engine: frontend messages and trait updates change the session's results.

Each frontend action is simulated exactly as the kernel receives it: a custom message or a state update goes
through ``Widget._handle_msg`` like a comm message from the browser.
"""

from __future__ import annotations

import base64
import html
import io
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("anywidget")
pytest.importorskip("ipywidgets")

from stylegallery import Session, StyleGallery  # noqa: E402
from stylegallery.errors import StyleGalleryError  # noqa: E402
from stylegallery.models.presets import PRESETS  # noqa: E402
from stylegallery import STAGES  # noqa: E402
from stylegallery.widgets import AttentionView, Compare, LossMonitor, MatchMatrix, RegionView, StageExplorer  # noqa: E402
from stylegallery.widgets.shared.runs import model_lock  # noqa: E402

SEGMENT = dict(max_clusters=4, use_depth=False)


def frontend_message(widget, content: dict) -> None:
    """Deliver a custom message from the view (``model.send(content)`` in JS), as the comm does."""
    widget._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})


def frontend_update(widget, **state) -> None:
    """Deliver a state change from the view (``model.set(...); model.save_changes()`` in JS)."""
    widget._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}}, "buffers": []})


def wait_until(condition, timeout: float = 120) -> None:
    """Poll ``condition`` from this (the kernel's) thread while a worker thread runs."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.fixture(scope="module")
def small_run(pipe):
    """Content and two references of colour bands at 128 px, prepared and inverted (3 steps) once."""
    from synthetic import planted_scene

    (content, *refs), _ = planted_scene(128)
    prepared = pipe.prepare(content, refs, size=128)
    return prepared, pipe.invert(prepared, inversion_steps=3, progress=False)


@pytest.fixture()
def session(pipe, small_run):
    """A fresh session on the small run's prepare and invert results, run up to match (up to 4 regions)."""
    prepared, inversion = small_run
    images = [prepared.image(i) for i in range(len(prepared.names))]
    s = Session(pipe, images[0], images[1:], size=128, inversion_steps=3, steps=4, **SEGMENT)
    s.replace("prepare", prepared)
    s.replace("invert", inversion)
    s.run("match", progress=False)
    return s


# ---------------------------------------------------------------------------------------------- MatchMatrix
def test_a_click_on_a_matrix_cell_overrides_the_match_at_once(session):
    matrix = MatchMatrix(session)
    session.run(progress=False)
    matching = session.matching
    assert matrix.matches == matching.matches and len(matrix.score) == len(matching.matches)
    assert set(matrix.parts) == {"statistical", "semantic", "geometric"} and matrix.columns == matching.columns
    row = 0
    target = next(j for j, c in enumerate(matching.columns) if c != matching.matches[row])
    frontend_message(matrix, {"type": "pick", "row": row, "col": target})
    assert matching.matches[row] == matching.columns[target]
    table = matching.table()[row]
    assert table["overridden"] and [table["style_image"], table["style_region"]] == matching.columns[target]
    assert table["score"] == pytest.approx(float(matching.score[row, target]))
    assert matrix.matches[row] == matching.columns[target] and matrix.overridden == [row]
    assert session.matching is matching and session.stale == ["stylize"]
    assert "region" in matrix.status

    frontend_message(matrix, {"type": "pick", "row": row, "col": 999})  # a bad click reports, never raises
    assert matrix.status.startswith("⚠") and matching.matches[row] == matching.columns[target]


def test_keep_content_toggle(session):
    matrix = MatchMatrix(session)
    matching = session.matching
    previous = list(matching.matches[1])
    frontend_message(matrix, {"type": "keep", "row": 1, "keep": True})
    assert matching.matches[1] is None and matrix.matches[1] is None
    assert matching.table()[1]["style_image"] is None and 1 in matching.overridden
    assert session.stale == ["stylize"]
    frontend_message(matrix, {"type": "keep", "row": 1, "keep": False})
    assert matching.matches[1] == previous and matrix.matches[1] == previous


def test_stale_matrix_refuses_edits(session):
    matrix = MatchMatrix(session)
    old = session.matching
    session.set(semantic_weight=0.5)  # match is stale now
    frontend_message(matrix, {"type": "pick", "row": 0, "col": 0})
    assert "stale" in matrix.status and session.matching is None
    session.run("match", progress=False)
    frontend_message(matrix, {"type": "pick", "row": 0, "col": 0})  # shows the new matches first
    assert matrix.matching is session.matching is not old and "recomputed" in matrix.status


def test_matrix_from_a_plain_matching(pipe, small_run):
    prepared, inversion = small_run
    seg = pipe.segment(prepared, inversion, progress=False, **SEGMENT)
    matching = pipe.match(prepared, inversion, seg)
    matrix = MatchMatrix(matching, reference_names=["rows", "bands"])
    frontend_message(matrix, {"type": "pick", "row": 0, "col": len(matching.columns) - 1})
    assert matching.matches[0] == matching.columns[-1] and matrix.reference_names == ["rows", "bands"]


# ---------------------------------------------------------------------------------------------- RegionView
def test_region_view_pick_and_merge_go_into_the_session(session):
    view = RegionView(session, index=0)
    seg = session.segmentation
    n = seg.n_regions(0)
    assert n >= 2
    h, w = view.grid
    assert len(view.labels) == h * w and np.frombuffer(view.labels, np.uint8).max() == n - 1
    assert png(view.image_png).size == (128, 128) and len(view.colors) == n == len(view.sizes)
    assert sum(view.sizes) == h * w and view.can_segment

    frontend_update(view, picked=[1, 0], selected=0)  # what two clicks on the canvas send
    assert view.picked == [1, 0] and view.selected == 0
    frontend_message(view, {"type": "merge"})
    merged = session.segmentation
    assert merged is not seg and merged.n_regions(0) == n - 1
    assert session.stale == ["match", "stylize"]
    assert view.picked == [] and len(view.sizes) == n - 1 and "merged" in view.status
    old = seg.labels[0]
    assert bool(((old == 0) | (old == 1)).eq(merged.labels[0] == 0).all())  # region 0 (from 1 and 0) is the union


def test_region_view_k_control_resegments_through_the_session(session):
    view = RegionView(session, index=1)
    assert [k for k, _ in view.silhouette] == [2, 3, 4]
    automatic = dict(view.silhouette)
    frontend_message(view, {"type": "set_k", "k": 2})
    assert session.value("n_clusters") == [None, 2, None]
    assert session.segmentation.chosen_k[1] == 2 and session.segmentation.n_regions(1) <= 2
    assert session.stale == ["match", "stylize"] and view.forced_k == 2
    # the chart keeps every k of the automatic run, so that another k is one click away
    assert [k for k, _ in view.silhouette] == [2, 3, 4] and view.status.startswith("k = 2: ")
    assert dict(view.silhouette)[2] == pytest.approx(session.segmentation.silhouette[1]["2"])
    assert dict(RegionView(session, index=1).silhouette) == pytest.approx(automatic)  # a new view too
    frontend_message(view, {"type": "set_k", "k": 3})
    assert view.forced_k == 3 and [k for k, _ in view.silhouette] == [2, 3, 4]
    frontend_message(view, {"type": "set_k", "k": 0})  # back to automatic
    assert session.value("n_clusters") is None and view.forced_k == 0 and dict(view.silhouette) == pytest.approx(automatic)


def test_region_view_answers_every_request(session):
    view = RegionView(session, index=0)
    sent = []
    view._send = lambda msg, buffers=None: sent.append(msg)  # what goes to the view
    for _ in range(2):  # the view shows "merging…" until the answer, which says to show the status again
        sent.clear()
        frontend_message(view, {"type": "merge"})  # nothing picked: refused, the same status both times
        assert view.status == "⚠ pick two regions to merge"
        assert sent[-1] == {"method": "custom", "content": {"type": "answered"}}


def test_region_view_pick_logic_and_plain_labels():
    image = Image.new("RGB", (64, 64), (200, 50, 50))
    labels = np.zeros((8, 8), dtype=np.int64)
    labels[:, 4:] = 7  # ids need not be consecutive
    labels[6:, :] = 3
    view = RegionView(image, labels)
    assert len(view.sizes) == 3 and not view.can_segment and view.silhouette == []
    view.pick(0)
    view.pick(2)
    view.pick(1)
    assert view.picked == [2, 1] and view.selected == 1
    view.pick(1)
    assert view.picked == [2] and view.selected == 2
    view.pick(0)
    view.merge()
    assert len(view.sizes) == 2
    frontend_message(view, {"type": "set_k", "k": 3})  # needs a session: reported, not raised
    assert view.status.startswith("⚠")


# ---------------------------------------------------------------------------------------------- AttentionView
def _heatmap(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return png(base64.b64decode(url.split(",", 1)[1]))


def test_attention_view_a_click_on_the_content_computes_the_maps(pipe, session):
    view = AttentionView(session)
    assert view.timesteps == pipe.timesteps(4, "ddim") and view.timestep == view.timesteps[0]  # the session's run
    assert view.layers == list(pipe.recorder.layers) and view.layer == view.layers[0] and view.head == -1
    assert view.image_size == [128, 128] and png(view.content_png).size == (128, 128)
    assert view.point == [64, 64] and len(view.heatmaps) == 2 and view.maps is not None  # the centre at first
    before = list(view.heatmaps)

    start = time.perf_counter()
    frontend_update(view, point=[10, 100])  # a click on the content canvas
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0 and 0 < view.elapsed_ms < 1000, elapsed
    maps = view.maps
    assert view.point == [10, 100] and maps.points == [(10, 100)] and view.heatmaps != before
    direct = pipe.attention_maps(session.prepared, session.segmentation, session.matching, [(10, 100)],
                                 timestep=view.timestep, layer=view.layer)
    assert view.region == direct.regions[0] == int(session.segmentation.labels[0][10 * 16 // 128, 100 * 16 // 128])
    assert view.match == direct.matches[0] and view.share == pytest.approx(direct.share_inside[0], abs=1e-4)
    assert sum(view.reference_shares) == pytest.approx(1.0, abs=1e-3)
    assert all(_heatmap(url).size == (128, 128) for url in view.heatmaps)
    assert f"content region {view.region}" in view.caption and "inside the matched region" in view.caption
    assert view.status.startswith("zeroed · t = ") and view.status.endswith(" ms")

    # the controls: the last timestep of the run, a head, another loss layer
    frontend_update(view, timestep=view.timesteps[-1])
    assert view.maps.timestep == view.timesteps[-1]
    frontend_update(view, head=0)
    assert view.maps.head == 0 and "head 0" in view.status
    frontend_update(view, layer=view.layers[-1])
    assert view.maps.layer == view.layers[-1] and view.heads >= 1
    png(view._repr_png_())


def test_attention_view_modes_masked_gives_all_the_weight_to_the_matched_region(session):
    view = AttentionView(session)
    segmentation, matching = session.segmentation, session.matching
    labels = segmentation.labels[0]
    # a point whose matched reference has keys outside the matched region
    point = None
    for y in range(4, 128, 16):
        for x in range(4, 128, 16):
            match = matching.matches[int(labels[y * labels.shape[0] // 128, x * labels.shape[1] // 128])]
            if match is not None and segmentation.n_regions(match[0] + 1) > 1:
                point = [y, x]
                break
        if point:
            break
    assert point is not None
    frontend_update(view, point=point)
    zeroed = view.share
    assert 0 < zeroed < 1 and view.mode == "zeroed"
    inside = view.maps.inside[0][view.match[0]]
    assert inside.any() and not inside.all()
    frontend_update(view, mode="masked")
    assert view.share == pytest.approx(1.0) and view.maps.mode == "masked"
    assert view.reference_shares[view.match[0]] == pytest.approx(1.0, abs=1e-3)
    frontend_update(view, mode="plain")
    assert 0 < view.share <= 1 and view.maps.mode == "plain"

    matching.keep_content(view.region)  # a region that keeps its content: no share
    view.refresh()
    assert view.share is None and view.match is None and "keeps its content" in view.caption


def test_attention_view_shows_bad_input_in_its_status(pipe, session):
    view = AttentionView(session)
    frontend_update(view, point=[500, 3])
    assert view.status.startswith("⚠") and "outside the 128x128 image" in view.status
    frontend_update(view, point=[20, 20])
    assert not view.status.startswith("⚠")
    frontend_update(view, head=view.heads)
    assert view.status.startswith("⚠ head must be between")
    frontend_update(view, head=-1, mode="nonsense")
    assert view.status.startswith("⚠ mode must be one of")
    frontend_update(view, mode="zeroed", timestep=5000)
    assert view.status.startswith("⚠ timestep must be between")
    frontend_update(view, timestep=view.timesteps[0])
    assert not view.status.startswith("⚠")

    lock = model_lock(pipe)  # a run holds the model: the view never waits for it
    with lock:
        frontend_update(view, point=[30, 30])
        assert "another run is using the model" in view.status and view.maps.points == [(20, 20)]
    view.refresh()
    assert view.maps.points == [(30, 30)] and not view.status.startswith("⚠")

    session.set(semantic_weight=0.5)  # match is stale
    view.refresh()
    assert view.status.startswith("⚠") and "run it up to 'match'" in view.status and view.heatmaps == []
    session.run("match", progress=False)
    view.refresh()
    assert view.maps is not None and len(view.heatmaps) == 2

    with pytest.raises(StyleGalleryError, match="needs the results"):
        AttentionView(pipe, session.prepared)
    plain = AttentionView(pipe, session.prepared, session.segmentation, session.matching, steps=10, scheduler="ddim",
                          point=(5, 6), mode="masked")
    assert plain.timesteps == pipe.timesteps(10, "ddim") and plain.point == [5, 6] and plain.share == pytest.approx(1.0)


def test_attention_view_in_the_explorer_follows_the_matches(session):
    explorer = StageExplorer(session)
    view = explorer.attention_view
    tabs = explorer.pictures["match"].children[0]  # the matrix, the view and the strengths, one tab each
    assert view is not None and list(tabs.children) == [explorer.match_matrix, view, explorer.strength_box]
    assert view.maps is not None
    matching = session.matching
    region = view.region
    target = next(j for j, c in enumerate(matching.columns) if c != matching.matches[region])
    frontend_message(explorer.match_matrix, {"type": "pick", "row": region, "col": target})  # an override
    assert view.match == matching.columns[target] and view.maps.matches[0] == matching.columns[target]

    explorer.set(max_clusters=3)  # new regions: the matches are stale until match runs again
    assert view.status.startswith("⚠") and view.heatmaps == []
    explorer.run("match")  # in the worker, holding the model: the view computes when the run has released it
    assert explorer.wait(120) == ["segment", "match"]
    assert view.maps is not None and not view.status.startswith("⚠") and len(view.heatmaps) == 2
    assert view.maps.matches[0] == session.matching.matches[view.region]


# ---------------------------------------------------------------------------------------------- LossMonitor
def test_loss_monitor_stop_makes_stylize_stop_early(pipe, session):
    monitor = LossMonitor(min_interval=0)
    args = [session.prepared, session.inversion, session.segmentation, session.matching]

    def callback(info):
        if info.step == 3:
            frontend_update(monitor, stop_requested=True)  # the Stop button
        return monitor.callback(info)

    result = pipe.stylize(*args, steps=8, preview_every=2, callback=callback, progress=False)
    assert result.stopped_early and len(result.history) == 3
    assert monitor.steps == [1, 2, 3] and not monitor.running and "stopped at step 3" in monitor.status
    assert not monitor.stoppable  # a run on the kernel's main thread: the view says to interrupt instead
    assert monitor.total == pytest.approx([h["total"] for h in result.history])
    assert set(monitor.regions) == set(result.history[0]["style_per_region"])
    assert png(monitor.preview_png).size[0] <= 320 and monitor.preview_step == 2

    result = pipe.stylize(*args, steps=2, callback=monitor.callback, progress=False)  # a new run starts fresh
    assert not result.stopped_early and monitor.steps == [1, 2] and not monitor.stop_requested
    assert "done" in monitor.status


def test_loss_monitor_run_works_in_a_worker_so_a_click_on_stop_lands(pipe, session):
    monitor = LossMonitor(min_interval=0)
    args = [session.prepared, session.inversion, session.segmentation, session.matching]
    monitor.run(pipe, *args, steps=200, progress=False)
    assert monitor.busy and monitor.running
    wait_until(lambda: monitor.step >= 2 or not monitor.busy)
    frontend_update(monitor, stop_requested=True)  # the click, read on this thread while stylize runs
    result = monitor.wait(120)
    assert result.stopped_early and 2 <= len(result.history) < 200 and monitor.stoppable
    assert not monitor.busy and "stopped at step" in monitor.status and monitor.steps[-1] == len(result.history)

    assert monitor.run(session) is None and monitor.wait(120) is session.stylization  # a session's stale stages
    assert monitor.steps == [1, 2, 3, 4] and not session.stylization.stopped_early
    monitor.run(session, "nowhere")
    with pytest.raises(StyleGalleryError, match="unknown stage"):
        monitor.wait(120)
    assert monitor.status.startswith("⚠ StyleGalleryError") and not monitor.running


def test_loss_monitor_run_previews_the_latent_at_every_step_then_shows_the_decoded_result(pipe, session):
    args = [session.prepared, session.inversion, session.segmentation, session.matching]
    monitor = LossMonitor(min_interval=0)
    shown = []  # what the view gets: the preview's step, the picture's size and its caption
    monitor.observe(lambda _: shown.append((monitor.preview_step, png(monitor.preview_png).size, monitor.preview_caption)),
                    names="preview_caption")
    monitor.run(pipe, *args, steps=6, progress=False)
    result = monitor.wait(120)
    h, w = result.latent.shape[-2:]
    live, final = shown[:-1], shown[-1]
    assert [step for step, _, _ in live] == [1, 2, 3, 4, 5, 6]
    assert all(size == (w, h) for _, size, _ in live)  # the linear preview, at the latent's resolution
    for (step, _, caption), record in zip(live, result.history):
        assert caption == f"live preview · step {step} of 6 · loss {record['total']:.4g}"
    assert final == (6, result.image.size, "result (VAE decode) · step 6")
    assert np.array_equal(np.asarray(png(monitor.preview_png)), np.asarray(result.image))

    # with a preview every step, the view still gets at most one update per min_interval (and the last step)
    monitor = LossMonitor(min_interval=60)
    sent = []
    monitor.observe(lambda change: sent.append(change["new"]), names="preview_step")
    monitor.run(pipe, *args, steps=6, progress=False)
    monitor.wait(120)
    assert sent == [1, 6] and monitor.steps == [1, 2, 3, 4, 5, 6]

    # a warm re-run from the result: only its last timesteps, numbered as in the whole run
    monitor = LossMonitor(min_interval=0)
    monitor.run(pipe, *args, steps=6, init=result, start_step=3, progress=False)
    warm = monitor.wait(120)
    assert warm.settings["warm"] and monitor.steps == [4, 5, 6] and monitor.status.startswith("done: steps 4 to 6 of 6")


# ---------------------------------------------------------------------------------------------- StageExplorer
def test_stage_explorer_marks_stale_stages_and_reruns_only_those(session):
    explorer = StageExplorer(session)
    assert explorer.stale == ["stylize"] and explorer.folds.selected_index == STAGES.index("stylize")
    assert "stale" in explorer.headers["stylize"].value and "done" in explorer.headers["match"].value
    assert explorer.folds.get_title(4).endswith("· stale") and "· done" in explorer.folds.get_title(3)
    assert len(explorer.region_views) == 3 and explorer.match_matrix is not None
    explorer.buttons["stylize"].click()
    assert explorer.wait(120) == ["stylize"] and explorer.stale == []
    assert explorer.compare is not None and explorer.monitor.steps == [1, 2, 3, 4]
    kept = {stage: session.results[stage] for stage in ("prepare", "invert", "segment")}

    frontend_update(explorer.controls["match"]["semantic_weight"], value=0.5)  # the slider in the browser
    assert session.value("semantic_weight") == 0.5 and explorer.stale == ["match", "stylize"]
    assert "stale" in explorer.headers["match"].value and "done" in explorer.headers["segment"].value
    frontend_update(explorer.controls["stylize"]["c_ratio"], value=0.4)
    assert explorer.stale == ["match", "stylize"]
    explorer.unfold("prepare")
    explorer.buttons["match"].click()
    assert explorer.wait(120) == ["match"] and explorer.stale == ["stylize"]
    assert explorer.folds.selected_index == STAGES.index("match")  # the fold of the stage that ran is open
    explorer.run_all_button.click()
    assert explorer.wait(120) == ["stylize"] and explorer.stale == []
    assert all(session.results[stage] is kept[stage] for stage in kept)
    assert explorer.match_matrix.matching is session.matching

    # edits in the pictures mark later stages stale too
    frontend_message(explorer.match_matrix, {"type": "keep", "row": 0, "keep": True})
    assert explorer.stale == ["stylize"] and "stale" in explorer.headers["stylize"].value
    explorer.set(max_clusters=3)
    assert explorer.controls["segment"]["max_clusters"].value == 3
    assert explorer.stale == ["segment", "match", "stylize"]
    assert explorer.run("match") == [] and explorer.wait(120) == ["segment", "match"]
    assert explorer.region_views[0].segmentation is session.segmentation
    assert explorer.run("match", background=False) == []  # nothing stale up to match; on this thread


def test_stage_explorer_refines_at_the_output_size_chosen_in_its_control(session):
    explorer = StageExplorer(session)
    control = explorer.controls["stylize"]["output_size"]
    assert control.value is None and [label for label, _ in control.options][:3] == ["working size", "256 px", "512 px"]
    assert control.label == "working size"  # shown, not a blank control
    assert explorer.window_progress.layout.display == "none"
    frontend_update(control, index=1)  # "256 px" picked in the browser
    assert session.value("output_size") == 256 and explorer.stale == ["stylize"]
    explorer.buttons["stylize"].click()
    assert explorer.wait(120) == ["stylize"]
    result = session.stylization
    assert result.image.size == (256, 256) and result.working_image.size == (128, 128)
    # the step bar counts the working steps and the refined ones; the windows bar, one step's windows
    refined = len(result.output_history)
    assert refined == 1 and explorer.progress["stylize"].value == explorer.progress["stylize"].max == 4 + refined
    assert explorer.window_progress.layout.display is None
    assert explorer.window_progress.value == explorer.window_progress.max == result.settings["output"]["windows"] == 25
    # the loss monitor ends on the refinement's curves, and says so
    assert explorer.monitor.steps == [h["step"] for h in result.output_history] == [4]
    assert explorer.monitor.status.startswith("done: steps 4 to 4 of 4 (output size)")
    frontend_update(control, index=0)
    assert session.value("output_size") is None and explorer.stale == ["stylize"]
    explorer.set(output_size=256)
    explorer.set(output_size=None)  # set from code, the control shows the working size again
    assert control.label == "working size" and session.value("output_size") is None


def test_stage_explorer_sets_region_strength_and_keep_colours_from_its_controls(session):
    explorer = StageExplorer(session)
    explorer.run("match", background=False)
    sliders = explorer.strength_sliders
    assert len(sliders) == session.segmentation.n_regions(0) and all(s.value == 1.0 for s in sliders)
    assert explorer.match_tabs.get_title(2) == "style strength"
    frontend_update(sliders[1], value=0.25)  # dragged in the browser
    assert session.value("region_strength") == {1: 0.25} and "stylize" in explorer.stale
    frontend_update(sliders[1], value=1.0)
    assert session.value("region_strength") is None  # every region at 1: the paper's loss, nothing recorded
    frontend_update(explorer.controls["stylize"]["keep_colours"], value=True)
    assert session.value("keep_colours") is True
    explorer.set(region_strength={0: 2.0})  # set from code: the sliders follow
    assert sliders[0].value == 2.0 and session.value("region_strength") == {0: 2.0}
    explorer.run("stylize", background=False)
    assert session.stylization.settings["region_strength"] == {"0": 2.0}
    assert session.stylization.settings["keep_colours"] is True


def test_stage_explorer_shows_errors_in_the_panel(session):
    explorer = StageExplorer(session)
    frontend_update(explorer.controls["stylize"]["lr"], value=0.0001)
    session.settings["stylize"]["lr"] = -1.0  # an impossible value slipped past the control
    explorer.run()
    assert explorer.wait(120) == [] and "lr must be positive" in explorer.messages["stylize"].value
    assert "error" in explorer.headers["stylize"].value and "· error" in explorer.folds.get_title(4)
    assert not explorer.buttons["stylize"].disabled


def test_stage_explorer_shows_a_failure_outside_a_stage(session, monkeypatch):
    explorer = StageExplorer(session)

    def broken(stage, result):
        raise RuntimeError("cannot draw")

    monkeypatch.setattr(explorer, "_show", broken)
    explorer.run()
    assert explorer.wait(120) == ["stylize"] and isinstance(explorer.last_error, RuntimeError)
    assert "RuntimeError: cannot draw" in explorer.status.value and not explorer.run_all_button.disabled
    frontend_message(explorer.match_matrix, {"type": "keep", "row": 0, "keep": True})  # edits work again
    assert session.stale == ["stylize"]


def test_stage_explorer_runs_in_a_worker_so_stop_keeps_a_partial_result(pipe, small_run):
    prepared, _ = small_run
    images = [prepared.image(i) for i in range(len(prepared.names))]
    explorer = StageExplorer(pipe, images[0], images[1:], size=128, inversion_steps=2, steps=200, preview_every=5,
                             **SEGMENT)
    session, monitor = explorer.session, explorer.monitor
    assert explorer.run() == [] and explorer.busy  # returned at once: this thread stays free, as the kernel's
    assert explorer.buttons["stylize"].disabled and explorer.controls["stylize"]["steps"].disabled
    assert explorer.refine_button.disabled and explorer.preset.disabled
    wait_until(lambda: monitor.step >= 2 or not explorer.busy)
    assert explorer.busy and explorer.folds.selected_index == STAGES.index("stylize")
    # edits of the session wait for the end of the run
    view = explorer.region_views[0]
    frontend_update(view, picked=[1, 0], selected=0)
    frontend_message(view, {"type": "merge"})
    assert "a run is in progress" in view.status and session.segmentation is view.segmentation
    frontend_message(explorer.match_matrix, {"type": "keep", "row": 0, "keep": True})
    assert "a run is in progress" in explorer.match_matrix.status and session.matching.matches[0] is not None
    with pytest.raises(StyleGalleryError, match="a run is in progress"):
        explorer.set(steps=3)

    frontend_update(monitor, stop_requested=True)  # the Stop button
    assert explorer.wait(120) == ["prepare", "invert", "segment", "match", "stylize"] and not explorer.busy
    result = session.stylization
    assert result.stopped_early and 2 <= len(result.history) < 200 and monitor.steps[-1] == len(result.history)
    assert f"stopped at step {len(result.history)} of 200" in explorer.headers["stylize"].value
    assert explorer.progress["stylize"].value == len(result.history) and session.stale == []
    assert not explorer.buttons["stylize"].disabled and not explorer.controls["stylize"]["steps"].disabled
    assert not explorer.preset.disabled and not explorer.refine_button.disabled  # a stopped run can be resumed
    assert explorer.controls["segment"]["use_depth"].disabled == (pipe.depth_model is None)
    stopped_at = len(result.history)
    assert explorer.status.value.endswith(f"partial: stopped at step {stopped_at} of 200")  # not "up to date"

    explorer.refine_button.click()  # resumes the stopped run where it stopped
    assert explorer.wait(120) == ["stylize"]
    resumed = session.stylization
    assert not resumed.stopped_early and resumed.settings["warm"] and resumed.settings["start_step"] == stopped_at
    assert [h["step"] for h in resumed.history] == list(range(stopped_at + 1, 201))
    assert "done" in explorer.headers["stylize"].value and explorer.status.value.endswith("all stages are up to date")
    frontend_message(view, {"type": "merge"})  # and go in after it
    assert session.segmentation is view.segmentation and "merged region" in view.status and session.stale == ["match", "stylize"]


def test_refine_after_a_match_override_runs_only_the_last_timesteps(session):
    session.set(steps=10)
    explorer = StageExplorer(session)
    assert explorer.refine_button.disabled and "no earlier result" in explorer.refine_button.tooltip
    assert explorer.run(refine=True, background=False) == ["stylize"]  # by hand: without a result it starts over
    first = session.stylization
    assert not first.settings["warm"] and len(first.history) == 10
    assert "started over (no earlier result to refine)" in explorer.messages["stylize"].value
    assert explorer.refine_button.disabled  # up to date

    matching = session.matching
    target = next(j for j, c in enumerate(matching.columns) if c != matching.matches[0])
    frontend_message(explorer.match_matrix, {"type": "pick", "row": 0, "col": target})  # an override
    assert explorer.stale == ["stylize"] and not explorer.refine_button.disabled
    assert explorer.messages["stylize"].value == ""  # the note of a result that is stale now is gone
    explorer.refine_button.click()
    assert explorer.wait(120) == ["stylize"]
    result = session.stylization
    start = result.settings["start_step"]
    assert result.settings["warm"] and 0 < start < 10 and len(result.history) == 10 - start
    assert explorer.monitor.steps == [h["step"] for h in result.history] == list(range(start + 1, 11))
    assert explorer.progress["stylize"].value == 10 and "done" in explorer.headers["stylize"].value
    note = html.unescape(explorer.messages["stylize"].value)
    assert "refined from the last result" in note and session.last_run in note

    explorer.buttons["stylize"].click()  # Start over runs nothing while stylize is up to date
    assert explorer.wait(120) == [] and session.stylization is result


@pytest.fixture(scope="module")
def preset_pipe():
    """The tiny test models by name, whose presets load the models' random LoRA (a pipeline of its own: the LoRA
    goes into its UNet)."""
    return StyleGallery.from_pretrained("tiny", device="cpu", semantic_model=False, depth_model=False)


def test_the_preset_control_switches_stylize_to_a_fast_lora_and_back(preset_pipe, small_run):
    prepared, _ = small_run
    images = [prepared.image(i) for i in range(len(prepared.names))]
    session = Session(preset_pipe, images[0], images[1:], size=128, inversion_steps=2, steps=4, **SEGMENT)
    explorer = StageExplorer(session, background=False)
    assert explorer.preset.value == "paper"
    explorer.run()
    assert session.stylization.settings["lora"] is None

    choices = [v for _, v in explorer.preset.options]
    frontend_update(explorer.preset, index=choices.index("lcm"))  # the choice in the browser (a Dropdown syncs index)
    lcm, controls = PRESETS["lcm"], explorer.controls["stylize"]
    assert choices == ["paper", *PRESETS]
    assert preset_pipe.lora is not None and explorer.stale == ["stylize"] and session.value("scheduler") == "lcm"
    shown = [controls[n].value for n in ("steps", "iters", "lr", "c_ratio")]
    assert shown == [lcm.steps, lcm.iters, lcm.lr, lcm.c_ratio]
    explorer.set(steps=2)  # a short run, the preset's other settings kept
    assert explorer.run() == ["stylize"]
    settings = session.stylization.settings
    assert settings["scheduler"] == "lcm" and settings["lora"]["source"] == preset_pipe.lora.info.source
    assert len(session.stylization.history) == 2 * lcm.iters and explorer.monitor.steps[-1] == 2 * lcm.iters

    assert explorer.use_preset(None) == ["stylize"]  # back to the paper's settings, as the control does
    assert explorer.preset.value == "paper" and preset_pipe.lora is None and session.value("scheduler") == "ddim"
    assert controls["steps"].value == Session.parameters("stylize")["steps"].default and controls["iters"].value == 1
    explorer.use_preset("fast")  # the release's name for lcm
    assert explorer.preset.value == "lcm" and preset_pipe.lora is not None
    frontend_update(explorer.preset, index=choices.index("paper"))
    assert preset_pipe.lora is None and explorer.messages["stylize"].value == ""


def test_a_result_made_under_another_lora_never_shows_done(preset_pipe, small_run):
    """Another session on the same model loads a LoRA: this explorer's result was made without it, so it is stale (the
    model it would re-run differs), and Run re-runs it."""
    prepared, _ = small_run
    images = [prepared.image(i) for i in range(len(prepared.names))]
    session = Session(preset_pipe, images[0], images[1:], size=128, inversion_steps=2, steps=2, **SEGMENT)
    explorer = StageExplorer(session, background=False)
    explorer.run()
    assert "done" in explorer.headers["stylize"].value and session.stale == []
    other = Session(preset_pipe, images[0], images[1:], size=128)
    other.use_preset("lcm")  # loads the test models' LoRA into the shared model
    explorer.set(c_ratio=session.value("c_ratio"))  # any refresh of the explorer (this one changes nothing)
    assert session.stale == ["stylize"] and "stale" in explorer.headers["stylize"].value
    assert "done" not in explorer.headers["stylize"].value and explorer.status.value.endswith("stale: stylize")
    assert explorer.run() == ["stylize"] and session.stylization.settings["lora"] is not None
    assert "done" in explorer.headers["stylize"].value
    other.use_preset(None)


# ---------------------------------------------------------------------------------------------- names
def test_no_widget_shadows_a_name_that_ipywidgets_reserves(session):
    """A synced trait named like a DOM widget's own attribute breaks every view (``style`` made the frontend take a
    list for a style model: "Cannot read properties of undefined (reading 'then')"); a method named like one breaks
    the kernel side (``open`` is what opens the comm)."""
    import anywidget
    import ipywidgets as W
    import traitlets
    from ipywidgets.widgets.widget_description import DescriptionWidget

    reserved = set(dir(anywidget.AnyWidget)) | set(dir(W.VBox)) | set(DescriptionWidget.class_trait_names())
    assert {"style", "layout", "_dom_classes", "tabbable", "tooltip", "description", "keys", "comm", "open"} <= reserved
    overrides = {"_repr_mimebundle_", "_ipython_display_", "set_state", "hold_sync"}  # StaticReprMixin's, SyncGuard's
    session.run(progress=False)
    image = Image.new("RGB", (64, 64))
    widgets = [RegionView(session), MatchMatrix(session), LossMonitor(), Compare(image, image), StageExplorer(session),
               AttentionView(session)]
    # what the base classes give a subclass (traitlets' bookkeeping) and an instance (hold_sync leaves a flag)
    generated, bare = {}, {}
    for base in (anywidget.AnyWidget, W.VBox):
        generated[base] = set(vars(type("Probe", (base,), {})))
        instance = base()
        with instance.hold_sync():
            pass
        bare[base] = set(vars(instance))
    for widget in widgets:
        ours = [k for k in type(widget).__mro__ if k.__module__.startswith("stylegallery.")]
        synced = {n for k in ours for n, v in vars(k).items() if isinstance(v, traitlets.TraitType) and v.metadata.get("sync")}
        assert synced or isinstance(widget, StageExplorer), type(widget).__name__
        assert not synced & reserved, (type(widget).__name__, synced & reserved)
        base = anywidget.AnyWidget if isinstance(widget, anywidget.AnyWidget) else W.VBox
        names = {n for k in ours for n in vars(k) if not n.startswith("__")} - generated[base] | (set(vars(widget)) - bare[base])
        assert not (names - overrides) & reserved, (type(widget).__name__, (names - overrides) & reserved)


# ---------------------------------------------------------------------------------------------- static pictures
def test_every_widget_has_a_static_png(session):
    session.run(progress=False)
    explorer = StageExplorer(session)
    widgets = [RegionView(session, index=0), MatchMatrix(session), LossMonitor(history=session.stylization),
               Compare.from_session(session), explorer, LossMonitor(), AttentionView(session)]
    for widget in widgets:
        picture = png(widget._repr_png_())
        assert picture.width > 100 and picture.height > 50, type(widget).__name__
        data, _ = widget._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in data, type(widget).__name__
        assert png(base64.b64decode(data["image/png"])).size == picture.size
    compare = widgets[3]
    assert png(compare.content_png).size == png(compare.result_png).size == (128, 128)
    assert [png(b).size for b in compare.style_pngs] == [(128, 128), (128, 128)]
    assert np.asarray(png(widgets[0]._repr_png_())).std() > 10  # not a blank picture


def test_attention_view_shows_the_results_queries_when_asked(pipe, session):
    view = AttentionView(session)
    assert not view.has_result and view.queries == "content"
    frontend_update(view, queries="result")  # no result yet: said, not raised
    assert view.status.startswith("⚠ there is no stylize result yet")
    frontend_update(view, queries="content", point=[40, 70])
    content = view.maps

    session.run("stylize", progress=False)
    view.refresh()
    assert view.has_result
    frontend_update(view, queries="result")
    direct = pipe.attention_maps(session.prepared, session.segmentation, session.matching, [(40, 70)],
                                 timestep=view.timestep, layer=view.layer, stylization=session.stylization)
    weights = lambda m: np.concatenate([w.ravel() for w in m.maps[0]])  # noqa: E731  (every reference's)
    assert np.allclose(weights(view.maps), weights(direct)) and "queries of the result" in view.status
    assert not np.allclose(weights(view.maps), weights(content))

    session.set(c_ratio=0.5)  # the result goes stale: back to the content's queries
    view.refresh()
    assert not view.has_result and view.queries == "content" and "queries of the content" in view.status
