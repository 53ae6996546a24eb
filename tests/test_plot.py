"""The static figures of stylegallery.plot, drawn from real (tiny-model) stage results."""

import copy
import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Rectangle
from PIL import Image

from stylegallery import plot
from stylegallery.stages.matching import enclosing_circles


@pytest.fixture(scope="module")
def staged(pipe, planted_run):
    prepared, inversion, _ = planted_run
    seg = pipe.segment(prepared, inversion, n_clusters=[3, 3, 2], use_depth=False, progress=False)
    matching = pipe.match(prepared, inversion, seg)
    result = pipe.stylize(prepared, inversion, seg, matching, steps=2, progress=False)
    return prepared, inversion, seg, matching, result


def _images(fig):
    return [im for ax in fig.axes for im in ax.get_images()]


def _rectangles(ax, gid):
    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_gid() == gid]


def test_region_palette_is_distinct_and_cycles():
    for n in (1, 3, 10, 20):
        palette = plot.region_palette(n)
        assert palette.shape == (n, 3) and palette.dtype == np.uint8
        assert len({tuple(c) for c in palette}) == n
    big = plot.region_palette(25)
    assert big.shape == (25, 3) and np.array_equal(big[20], big[0])
    assert plot.region_palette(0).shape == (0, 3)


def test_overlay_array_blends_in_proportion_to_alpha():
    image = np.full((64, 48, 3), 100, np.uint8)
    labels = torch.tensor([[0, 1], [1, 0]])
    expected = plot.region_palette(2)[np.array([[0, 1], [1, 0]]).repeat(32, 0).repeat(24, 1)].astype(float)
    assert np.array_equal(plot.overlay_array(image, labels, alpha=0.0), image)
    assert np.array_equal(plot.overlay_array(image, labels, alpha=1.0), expected.astype(np.uint8))
    half = plot.overlay_array(Image.fromarray(image), labels.numpy(), alpha=0.5)
    assert half.shape == (64, 48, 3) and half.dtype == np.uint8
    assert np.abs(half - (image + 0.5 * (expected - image))).max() <= 0.5
    quarter = plot.overlay_array(image, labels, alpha=0.25).astype(float)
    np.testing.assert_allclose(quarter - image, 0.25 * (expected - image), atol=0.5)


def test_overlay_of_real_regions_upsamples_the_latent_grid(staged):
    prepared, _, seg, _, _ = staged
    out = plot.overlay_array(prepared.image(0), seg.labels[0], alpha=0.5)
    assert out.shape == (256, 256, 3)
    assert np.abs(out.astype(int) - np.asarray(prepared.image(0)).astype(int)).mean() > 5


def test_region_overlay_legend_has_one_entry_per_region(staged):
    prepared, _, seg, _, _ = staged
    fig = plot.region_overlay(prepared.image(0), seg.labels[0])
    assert isinstance(fig, Figure)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    n = seg.n_regions(0)
    assert len(texts) == n and all(t.startswith(f"region {r} (") for r, t in enumerate(texts))
    shares = [int(t.split("(")[1].rstrip("%)")) for t in texts]
    assert abs(sum(shares) - 100) <= n
    assert _images(fig)[0].get_array().shape == (256, 256, 3)
    # drawing into an existing axes returns that axes' figure; legend=False draws none
    host = Figure()
    ax = host.add_subplot()
    assert plot.region_overlay(prepared.pixels[0], seg.labels[0], ax=ax, legend=False) is host
    assert ax.get_legend() is None


def test_silhouette_curve_marks_the_chosen_k(staged):
    _, _, seg, _, _ = staged
    scores = {"2": 0.30, "3": 0.41, "4": 0.35}
    fig = plot.silhouette_curve(scores)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines["silhouette"].get_xdata()) == [2, 3, 4]
    assert list(lines["silhouette"].get_ydata()) == [0.30, 0.41, 0.35]
    assert list(lines["best k = 3"].get_xdata()) == [3]  # the best k by default
    fig = plot.silhouette_curve(scores, chosen=4)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines["chosen k = 4"].get_xdata()) == [4] and lines["chosen k = 4"].get_marker() == "*"
    assert isinstance(plot.silhouette_curve(seg.silhouette[0], seg.chosen_k[0]), Figure)


def test_pca_image_separates_planted_features(staged):
    _, inversion, _, _, _ = staged
    image = plot.pca_image(inversion.features[0])
    assert image.shape == (32, 32, 3) and image.dtype.kind == "f"
    assert image.min() >= 0 and image.max() <= 1 and np.allclose(image.max((0, 1)), 1)
    features = np.zeros((8, 6, 6))
    features[:, :, 3:] = np.arange(8)[:, None, None]
    features += np.random.default_rng(0).normal(0, 0.01, features.shape)
    planted = plot.pca_image(torch.from_numpy(features))
    left, right = planted[:, :3, 0], planted[:, 3:, 0]
    assert abs(left.mean() - right.mean()) > 0.9  # the first component splits the halves
    fig = plot.feature_pca(inversion.features[1])
    assert isinstance(fig, Figure) and _images(fig)[0].get_array().shape == (32, 32, 3)


def test_trajectory_shows_evenly_spaced_steps(pipe, staged):
    _, inversion, _, _, _ = staged
    fig = plot.trajectory(inversion, index=1, count=4)
    axes = [ax for ax in fig.axes if ax.get_images()]
    assert len(axes) == 4
    assert axes[0].get_title() == "clean latent"
    assert axes[-1].get_title().endswith(f"t = {inversion.timesteps[-1]}")
    assert _images(fig)[0].get_array().shape == (32, 32, 3)
    decoded = plot.trajectory(inversion, count=2, decode=pipe.decode)
    assert [im.get_array().shape for im in _images(decoded)] == [(256, 256, 3)] * 2


def test_match_matrix_marks_one_match_per_row(staged):
    _, _, seg, matching, _ = staged
    n_content, n_style = seg.n_regions(0), seg.n_regions(1) + seg.n_regions(2)
    fig = plot.match_matrix(matching)
    ax = fig.axes[0]
    assert isinstance(fig, Figure) and ax.get_images()[0].get_array().shape == (n_content, n_style)
    marks = _rectangles(ax, "match")
    assert len(marks) == n_content and not _rectangles(ax, "keep")
    for r, (mark, match) in enumerate(zip(marks, matching.matches)):
        assert mark.get_xy() == (matching.columns.index(match) - 0.5, r - 0.5)
    texts = [t.get_text() for t in ax.texts]
    assert "style 1" in texts and "style 2" in texts
    assert len(ax.get_lines()) == 1  # one separator between the two references

    edited = copy.deepcopy(matching)
    edited.override(0, 1, 0)
    edited.keep_content(1)
    ax = plot.match_matrix(edited, part="semantic").axes[0]
    np.testing.assert_allclose(ax.get_images()[0].get_array(), edited.semantic.numpy())
    marks, kept = _rectangles(ax, "match"), _rectangles(ax, "keep")
    assert len(marks) == n_content - 1 and len(kept) == 1 and kept[0].get_hatch()
    assert marks[0].get_linestyle() != marks[-1].get_linestyle()  # the override looks different
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "0: override" and labels[1] == "1: keep"
    with pytest.raises(ValueError):
        plot.match_matrix(matching, part="colour")


def test_match_parts_has_four_panels(staged):
    _, _, _, matching, _ = staged
    fig = plot.match_parts(matching)
    assert len(_images(fig)) == 4
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert titles[0] == "score" and titles[1].startswith("statistical") and titles[3].startswith("geometric")


def test_matched_pairs_colour_each_pair_alike(staged):
    prepared, _, seg, matching, _ = staged
    fig = plot.matched_pairs(prepared, seg, matching)
    images = _images(fig)
    assert len(images) == 1 + prepared.n_styles
    palette = plot.region_palette(seg.n_regions(0)).astype(float)
    r = 0
    reference, region = matching.matches[r]
    style = prepared.pixels[reference + 1].permute(1, 2, 0).numpy().astype(float)
    full = np.asarray(Image.fromarray(seg.labels[reference + 1].numpy().astype(np.uint8)).resize((256, 256), Image.NEAREST))
    shown = images[reference + 1].get_array().astype(float)
    inside = full == region
    np.testing.assert_allclose(shown[inside], 0.4 * style[inside] + 0.6 * palette[r], atol=0.51)
    involved = {m[1] for m in matching.matches if m is not None and m[0] == reference}
    faded = ~np.isin(full, list(involved))
    np.testing.assert_allclose(shown[faded], 0.35 * style[faded] + 0.65 * 245, atol=0.51)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(legend) == seg.n_regions(0)
    assert legend[r] == f"{r} -> style {reference + 1}, region {region}"


def test_image_names_are_the_short_file_names():
    names = ["content_astronaut.jpg", "style_brick.jpg", "teach_meadow.jpg", "my.photo.png", "image", ""]
    assert plot.image_names(names) == ["astronaut", "brick", "meadow", "my.photo", "style 4", "style 5"]
    assert plot.image_names(["image", "image"]) == ["content", "style 1"]  # images given in memory


def test_figures_name_the_references_as_the_tables_do(staged):
    prepared, _, seg, matching, result = staged
    named = dataclasses.replace(prepared, names=["content_cat.jpg", "style_brick.jpg", "style_grass.png"])
    titles = [ax.get_title() for ax in plot.before_after(named, result).axes]
    assert titles[0] == "content: cat" and titles[2:] == ["brick", "grass"]
    fig = plot.matched_pairs(named, seg, matching)
    assert [ax.get_title() for ax in fig.axes] == ["content: cat", "brick", "grass"]
    legend = fig.legends[0]
    reference, region = matching.matches[0]
    assert legend.get_texts()[0].get_text() == f"0 -> {['brick', 'grass'][reference]}, region {region}"
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 10  # as large as the panel labels
    texts = [t.get_text() for t in plot.match_matrix(matching, names=["brick", "grass"]).axes[0].texts]
    assert "brick" in texts and "grass" in texts and "style 1" not in texts
    parts = plot.match_parts(matching, names=["brick", "grass"])
    assert all("brick" in [t.get_text() for t in ax.texts] for ax in parts.axes if ax.get_images())


def test_match_circles_stay_inside_the_pictures_with_one_label_per_region(staged):
    prepared, _, seg, matching, _ = staged
    fig = plot.match_circles(prepared, seg, matching)
    axes = [ax for ax in fig.axes if ax.get_images()]
    assert len(axes) == 1 + prepared.n_styles
    for i, ax in enumerate(axes):
        assert ax.get_xlim() == (-0.5, 255.5) and ax.get_ylim() == (255.5, -0.5)  # circles are cut at the edge
        full = plot.upsample_labels(seg.labels[i], (256, 256))
        spots = [tuple(np.round(t.get_position()).astype(int)) for t in ax.texts]
        assert len(set(spots)) == len(spots)  # no label on top of another
        for text, (x, y) in zip(ax.texts, spots):
            owners = [int(o) for o in text.get_text().split(",")]
            expected = owners[0] if i == 0 else matching.matches[owners[0]][1]
            assert full[y, x] == expected  # the label sits inside the region it names
        circles = [p for p in ax.patches if isinstance(p, Circle)]
        assert len(circles) == len(ax.texts) and all(c.get_clip_on() for c in circles)
    content = [p for p in axes[0].patches if isinstance(p, Circle)]
    cy, cx, radius = (enclosing_circles(seg.labels[0])[0] * 32).tolist()  # grid units (a 32 x 32 grid)
    np.testing.assert_allclose([*content[0].center, content[0].radius], [cx * 8 + 3.5, cy * 8 + 3.5, radius * 8],
                               atol=1e-4)


def test_loss_curves_have_total_content_and_each_region(staged):
    _, _, seg, _, result = staged
    fig = plot.loss_curves(result.history)
    lines = fig.axes[0].get_lines()
    n = seg.n_regions(0)
    assert len(lines) == 2 + n
    assert [l.get_label() for l in lines] == ["total", "content"] + [f"style, region {r}" for r in range(n)]
    assert list(lines[0].get_xdata()) == [h["step"] for h in result.history]
    assert list(lines[0].get_ydata()) == [h["total"] for h in result.history]
    assert list(lines[2].get_ydata()) == [h["style_per_region"]["0"] for h in result.history]
    empty = plot.loss_curves([])
    assert isinstance(empty, Figure) and not empty.axes[0].get_lines()


def test_before_after_strip(staged):
    prepared, _, _, _, result = staged
    fig = plot.before_after(prepared, result)
    images = _images(fig)
    assert len(images) == 2 + prepared.n_styles
    assert np.array_equal(images[1].get_array(), result.pixels.permute(1, 2, 0).numpy())
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "content" and titles[1].startswith("result") and titles[2] == "style 1"


def test_figures_render_and_stay_out_of_pyplot(staged, tmp_path):
    prepared, _, seg, _, _ = staged
    fig = plot.region_overlay(prepared.image(0), seg.labels[0])
    fig.savefig(tmp_path / "overlay.png")
    assert fig._repr_png_().startswith(b"\x89PNG")
    code = (
        "import sys, numpy as np; from stylegallery import plot; "
        "plot.region_overlay(np.zeros((16, 16, 3), np.uint8), np.zeros((2, 2), int)).savefig(sys.argv[1]); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('IPython', 'ipywidgets', 'ipykernel') "
        "or m == 'matplotlib.pyplot']; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "tiny.png")], check=True)
