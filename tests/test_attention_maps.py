"""Attention maps: the target attention of content points over the references, checked against the formula."""

import math

import numpy as np
import pytest
import torch

from stylegallery import StyleGalleryError
from stylegallery.stages.attention_maps import attention_maps


@pytest.fixture(scope="module")
def staged(pipe, planted_run):
    prepared, inversion, _ = planted_run
    segmentation = pipe.segment(prepared, inversion, n_clusters=3, use_depth=False, progress=False)
    return prepared, segmentation, pipe.match(prepared, inversion, segmentation)


def _toy():
    """2 heads, a 2 x 2 content grid (regions [[0, 0], [1, 1]]) and two references of 2 x 2 tokens each."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 8), torch.randn(2, 8, 8)
    content = torch.tensor([[0, 0], [1, 1]])
    refs = [torch.tensor([[0, 1], [0, 1]]), torch.tensor([[0, 0], [1, 1]])]
    return q, k, content, refs, [[0, 1], [1, 0]]  # region 0 -> ref 0 region 1; region 1 -> ref 1 region 0


def _expected(q, k, row, allowed, zero, scale=1.5):
    """softmax(scale * q.k / sqrt(d)) of one query row with zeroed keys at logit 0 and others excluded."""
    logits = (q[:, row] @ k.transpose(1, 2)[:, :, :]).squeeze(1) * scale / math.sqrt(q.shape[-1])
    logits = torch.where(torch.tensor(zero), torch.zeros_like(logits), logits)
    logits = torch.where(torch.tensor(allowed), logits, torch.tensor(-torch.inf))
    return logits.softmax(-1).mean(0)


def test_the_three_modes_follow_the_formula():
    q, k, content, refs, matches = _toy()
    # token 1 (y=0, x=1 on a 2 x 2 grid over a 2 x 2 image) lies in content region 0 -> ref 0 region 1: keys 1, 3
    inside = [False, True, False, True, False, False, False, False]
    ref0 = [True] * 4 + [False] * 4
    cases = {"masked": (inside, [False] * 8), "zeroed": (ref0, [a and not b for a, b in zip(ref0, inside)]),
             "plain": ([True] * 8, [False] * 8)}
    for mode, (allowed, zero) in cases.items():
        maps = attention_maps(q, k, content, refs, matches, [(0, 1)], (2, 2), mode=mode)
        got = np.concatenate([m.flatten() for m in maps.maps[0]])
        torch.testing.assert_close(torch.from_numpy(got), _expected(q, k, [1], allowed, zero))
        assert maps.share_inside[0] == pytest.approx(float(got[inside].sum()), abs=1e-6)
        assert maps.regions == [0] and maps.matches == [[0, 1]]
    assert attention_maps(q, k, content, refs, matches, [(0, 1)], (2, 2), mode="masked").share_inside[0] == pytest.approx(1.0)
    zeroed = attention_maps(q, k, content, refs, matches, [(0, 1)], (2, 2), mode="zeroed")
    assert 0 < zeroed.share_inside[0] < 1 and zeroed.maps[0][1].sum() == 0  # nothing lands on the other reference


def test_one_head_and_whole_regions():
    q, k, content, refs, matches = _toy()
    one = attention_maps(q, k, content, refs, matches, [(1, 0)], (2, 2), mode="plain", head=1)
    logits = q[1, 2] @ k[1].T * 1.5 / math.sqrt(8)
    np.testing.assert_allclose(np.concatenate([m.flatten() for m in one.maps[0]]), logits.softmax(-1).numpy(), atol=1e-6)
    region = attention_maps(q, k, content, refs, matches, [1], (2, 2), mode="zeroed")
    rows = [attention_maps(q, k, content, refs, matches, [p], (2, 2), mode="zeroed") for p in [(1, 0), (1, 1)]]
    mean = (np.concatenate([m.flatten() for m in rows[0].maps[0]]) + np.concatenate([m.flatten() for m in rows[1].maps[0]])) / 2
    np.testing.assert_allclose(np.concatenate([m.flatten() for m in region.maps[0]]), mean, atol=1e-6)
    assert region.inside[0][1].tolist() == [[True, True], [False, False]]  # ref 1, region 0


def test_a_region_that_keeps_its_content_has_no_share():
    q, k, content, refs, _ = _toy()
    maps = attention_maps(q, k, content, refs, [None, [1, 0]], [(0, 0)], (2, 2), mode="zeroed")
    assert math.isnan(maps.share_inside[0]) and maps.matches == [None]


def test_pipeline_maps_reuse_the_feature_cache(pipe, staged):
    prepared, segmentation, matching = staged
    t = pipe.timesteps(steps=10)[3]
    first = pipe.attention_maps(prepared, segmentation, matching, [(10, 10)], timestep=t, mode="masked")
    misses = pipe.feature_cache.misses
    again = pipe.attention_maps(prepared, segmentation, matching, [(200, 240), 0], timestep=t, mode="zeroed")
    assert pipe.feature_cache.misses == misses  # another point: no UNet pass
    assert first.share_inside == [pytest.approx(1.0)] and first.timestep == t
    assert all(0 < s < 1 for s in again.share_inside)  # every reference has keys outside its matched region here
    grid = first.grid
    assert first.maps[0][0].shape == grid and len(first.maps[0]) == prepared.n_styles
    assert sum(float(m.sum()) for m in again.maps[1]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(points=[(999, 5)]), "outside"),
    (dict(points=[7]), "does not exist"),
    (dict(points=["here"]), "pixel coordinates or a region id"),
    (dict(points=[(5, 5)], layer=0), "loss layers"),
    (dict(points=[(5, 5)], head=99), "head must be"),
    (dict(points=[(5, 5)], mode="soft"), "mode must be"),
    (dict(points=[(5, 5)], timestep=5000), "timestep must be"),
])
def test_impossible_requests_are_clear_errors(pipe, staged, kwargs, message):
    with pytest.raises(StyleGalleryError, match=message):
        pipe.attention_maps(*staged, **kwargs)


def test_the_plot_marks_the_point_and_outlines_the_region(pipe, staged):
    from stylegallery import plot

    prepared = staged[0]
    maps = pipe.attention_maps(*staged, [(30, 40)])
    fig = plot.attention_map(prepared, maps)
    content_axes, *reference_axes = fig.axes
    assert len(reference_axes) == prepared.n_styles
    marks = [(line.get_xdata()[0], line.get_ydata()[0]) for line in content_axes.lines if line.get_marker() == "+"]
    assert marks and set(marks) == {(40, 30)}  # the point (y=30, x=40), drawn at x=40, y=30
    reference, _region = maps.matches[0]
    size = tuple(prepared.pixels.shape[-2:])
    for j, ax in enumerate(reference_axes):
        green = [c for c in ax.collections if np.allclose(np.asarray(c.get_edgecolor())[:, :3], (0.3, 1.0, 0.3))]
        if j != reference:
            assert not green  # only the matched reference has the region outlined
            continue
        # the outline runs round the matched style region: its extent is the region's, to half a pixel
        vertices = np.concatenate([path.vertices for c in green for path in c.get_paths()])
        inside = np.asarray(maps.inside[0][j], dtype=bool)
        rows = np.arange(size[0]) * inside.shape[0] // size[0]
        cols = np.arange(size[1]) * inside.shape[1] // size[1]
        ys, xs = np.nonzero(inside[rows][:, cols])
        np.testing.assert_allclose(vertices[:, 0].min(), xs.min() - 0.5, atol=0.5)
        np.testing.assert_allclose(vertices[:, 0].max(), xs.max() + 0.5, atol=0.5)
        np.testing.assert_allclose(vertices[:, 1].min(), ys.min() - 0.5, atol=0.5)
        np.testing.assert_allclose(vertices[:, 1].max(), ys.max() + 0.5, atol=0.5)
        share = float(maps.maps[0][j].sum())
        assert ax.get_title().endswith(f"{share:.0%} of the weight")


def test_maps_from_a_results_queries(pipe, staged):
    """With ``stylization=`` the queries are the result latent's: for the content's own latent they are the content's
    queries; another point at the same timestep runs no UNet pass."""
    from stylegallery import Stylization

    prepared, segmentation, matching = staged
    t = pipe.timesteps(steps=10)[5]
    settings = dict(model=pipe.stylize_model)
    same = Stylization(prepared.latents[:1].clone(), prepared.pixels[0], [], False, settings)
    noise = Stylization(torch.randn(1, *prepared.latents.shape[1:], generator=torch.Generator().manual_seed(1)),
                        prepared.pixels[0], [], False, settings)
    kwargs = dict(timestep=t, mode="plain", feature_precision=torch.float32)
    content = pipe.attention_maps(prepared, segmentation, matching, [(40, 50)], **kwargs)
    own = pipe.attention_maps(prepared, segmentation, matching, [(40, 50)], stylization=same, **kwargs)
    np.testing.assert_allclose(own.maps[0][0], content.maps[0][0], atol=1e-5)
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        moved = pipe.attention_maps(prepared, segmentation, matching, [(40, 50)], stylization=noise, **kwargs)
        pipe.attention_maps(prepared, segmentation, matching, [(100, 20), 1], stylization=noise, **kwargs)
    finally:
        hook.remove()
    assert len(calls) == 1  # one pass for the result's queries, none for the next points
    assert not np.allclose(moved.maps[0][0], content.maps[0][0], atol=1e-4)
    with pytest.raises(StyleGalleryError, match="another model"):
        pipe.attention_maps(prepared, segmentation, matching, [(5, 5)], timestep=t,
                            stylization=Stylization(noise.latent, noise.pixels, [], False, dict(model="other")))
