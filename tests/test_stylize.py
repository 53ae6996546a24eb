"""Stylize: loss descent, the region attention modes, callbacks, determinism, re-running from saved stages."""

import math

import pytest
import torch

from stylegallery import Matching, Prepared, Segmentation, Inversion, StyleGalleryError
from stylegallery.stages.style_loss import region_plan, region_style_loss, style_targets


@pytest.fixture(scope="module")
def staged(planted_stages):
    return planted_stages


def test_stylize_lowers_the_total_loss(pipe, staged):
    result = pipe.stylize(*staged, steps=30, progress=False)
    totals = [h["total"] for h in result.history]
    assert len(totals) == 30
    assert sum(totals[-5:]) < 0.85 * sum(totals[:5])
    assert result.image.size == (256, 256)
    h = result.history[0]
    assert math.isclose(h["total"], h["style"] + 0.26 * h["content"], rel_tol=1e-4)
    assert math.isclose(h["style"], sum(h["style_per_region"].values()), rel_tol=1e-4)


def _toy_plan():
    # 4 content queries: regions [0, 0, 1, 1]; region 0 -> (ref 0, region 1), region 1 -> (ref 1, region 0)
    content = torch.tensor([[0, 0], [1, 1]])
    style = [torch.tensor([[0, 1], [0, 1]]), torch.tensor([[0, 0], [1, 1]])]
    return region_plan(content, style, [[0, 1], [1, 0]], tokens=4, device="cpu")


def test_masked_region_attention_attends_only_inside_the_matched_region():
    plan = _toy_plan()
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 8), torch.randn(1, 8, 8), torch.eye(8)[None]  # identity values expose the weights
    weights = style_targets(q, k, v, plan, "masked", 1.0)[0]  # (4 queries, 8 keys): attention weights
    allowed = torch.tensor([[0, 1, 0, 1, 0, 0, 0, 0]] * 2 + [[0, 0, 0, 0, 1, 1, 0, 0]] * 2, dtype=torch.bool)
    assert torch.all(weights[~allowed] == 0)
    torch.testing.assert_close(weights.sum(1), torch.ones(4))
    logits = (q[0] @ k[0].T) / math.sqrt(8)
    expected = torch.where(allowed, logits, torch.tensor(-torch.inf)).softmax(1)
    torch.testing.assert_close(weights, expected)


def test_zeroed_region_attention_keeps_weight_on_zeroed_keys():
    plan = _toy_plan()
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 8), torch.randn(1, 8, 8), torch.eye(8)[None]
    out = style_targets(q, k, v, plan, "zeroed", 1.0)[0]
    assert torch.all(out[:2, [0, 2]] == 0) and torch.all(out[:, 4:][:2] == 0)
    assert torch.all(out[:2].sum(1) < 1)  # zeroed keys of the same reference took weight (logit 0)


def test_region_loss_normalisation():
    plan = _toy_plan()
    out, target = torch.zeros(1, 4, 2), torch.ones(1, 4, 2)
    target[0, 2:] = 3
    torch.testing.assert_close(region_style_loss(out, target, plan, 2, "masked"), torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(region_style_loss(out, target, plan, 2, "zeroed"), torch.tensor([0.5, 1.5]))
    plan.query_reference[2:] = -1  # region 1 keeps its content
    assert region_style_loss(out, target, plan, 2, "masked")[1] == 0


def test_both_modes_run_and_differ_and_zeroed_is_the_default(pipe, staged):
    a = pipe.stylize(*staged, steps=3, progress=False, region_attention="masked")
    b = pipe.stylize(*staged, steps=3, progress=False, region_attention="zeroed")
    assert not torch.equal(a.latent, b.latent)
    assert torch.equal(pipe.stylize(*staged, steps=3, progress=False).latent, b.latent)


def test_callback_sees_every_step_and_can_stop_early(pipe, staged):
    seen = []

    def callback(info):
        seen.append((info.step, info.timestep, info.preview is not None))
        return info.step == 4

    result = pipe.stylize(*staged, steps=10, preview_every=2, callback=callback, progress=False)
    assert result.stopped_early and len(result.history) == 4 and len(seen) == 4
    assert [s[2] for s in seen] == [False, True, False, True]
    assert seen[0][1] > seen[-1][1]  # from noisy to clean
    assert result.image.size == (256, 256)


def test_same_seed_same_settings_same_image(pipe, staged, planted_run):
    first = pipe.stylize(*staged, steps=4, progress=False)
    pipe.feature_cache.clear()  # recomputed features must give the identical image
    second = pipe.stylize(*staged, steps=4, progress=False)
    assert torch.equal(first.pixels, second.pixels)
    prepared, inversion, _ = planted_run
    seg_a = pipe.segment(prepared, inversion, use_depth=False, progress=False)
    seg_b = pipe.segment(prepared, inversion, use_depth=False, progress=False)
    assert torch.equal(seg_a.labels, seg_b.labels)


def test_rerun_match_and_stylize_from_saved_stages(pipe, staged, tmp_path):
    prepared, inversion, seg, matching = staged
    for result in (prepared, inversion, seg, matching):
        result.save(tmp_path / f"{result.stage}.safetensors")
    p, i, s = (cls.load(tmp_path / f"{cls.stage}.safetensors") for cls in (Prepared, Inversion, Segmentation))
    rematched = pipe.match(p, i, s)
    assert rematched.matches == matching.matches
    rematched.keep_content(0)
    from_disk = pipe.stylize(p, i, s, Matching.load(tmp_path / "match.safetensors"), steps=3, progress=False)
    direct = pipe.stylize(prepared, inversion, seg, matching, steps=3, progress=False)
    assert torch.equal(from_disk.pixels, direct.pixels)
    kept = pipe.stylize(p, i, s, rematched, steps=3, progress=False)
    assert kept.history[0]["style_per_region"]["0"] == 0


def test_feature_cache_serves_a_rerun(pipe, staged):
    pipe.feature_cache.clear()
    pipe.stylize(*staged, steps=3, progress=False)
    hits, size = pipe.feature_cache.hits, pipe.feature_cache.nbytes
    assert size > 0
    pipe.stylize(*staged, steps=3, c_ratio=0.5, progress=False)
    assert pipe.feature_cache.hits == hits + 3 * 3  # every image at every timestep came from the cache


def test_a_rerun_gives_the_first_runs_result_for_any_feature_precision(pipe, staged):
    pipe.feature_cache.clear()
    first32 = pipe.stylize(*staged, steps=3, feature_precision=torch.float32, progress=False)
    again32 = pipe.stylize(*staged, steps=3, feature_precision=torch.float32, progress=False)  # from the cache
    assert torch.equal(first32.latent, again32.latent)
    first16 = pipe.stylize(*staged, steps=3, progress=False)  # half precision: another cache entry
    assert not torch.equal(first16.latent, first32.latent)
    after16 = pipe.stylize(*staged, steps=3, feature_precision=torch.float32, progress=False)
    assert torch.equal(after16.latent, first32.latent)  # never served the half-precision features
    pipe.feature_cache.clear()
    assert torch.equal(pipe.stylize(*staged, steps=3, progress=False).latent, first16.latent)


def test_impossible_stylize_settings(pipe, staged):
    with pytest.raises(StyleGalleryError, match="c_ratio"):
        pipe.stylize(*staged, steps=2, c_ratio=-0.1, progress=False)
    with pytest.raises(StyleGalleryError, match="region_attention"):
        pipe.stylize(*staged, steps=2, region_attention="both", progress=False)


def test_one_call(pipe):
    from synthetic import planted

    content, _ = planted(128, "bands")
    style, _ = planted(128, "rows", ("yellow", "green", "red"))
    out = pipe(content, [style], size=128, steps=3, inversion_steps=4, max_clusters=4, progress=False)
    assert out.image.size == (128, 128)
    assert set(out.timings) == {"prepare", "invert", "segment", "match", "stylize"}
    assert len(out.stylization.history) == 3
    with pytest.raises(StyleGalleryError, match="unknown setting"):
        pipe(content, [style], size=128, colour="red")


def test_keyboard_interrupt_keeps_the_current_result(pipe, staged):
    def interrupt(info):
        if info.step == 2:
            raise KeyboardInterrupt

    result = pipe.stylize(*staged, steps=6, callback=interrupt, progress=False)
    assert result.stopped_early and len(result.history) == 2 and result.image.size == (256, 256)


def test_feature_cache_keeps_what_fits_when_a_run_outgrows_it(pipe, staged):
    from stylegallery import TensorCache

    pipe.feature_cache.clear()
    pipe.stylize(*staged, steps=4, progress=False)
    full = pipe.feature_cache.nbytes
    small = TensorCache(max_bytes=full // 2)
    old, pipe.feature_cache = pipe.feature_cache, small
    try:
        with pytest.warns(UserWarning, match="TensorCache is full"):
            pipe.stylize(*staged, steps=4, progress=False)
        assert 0 < small.nbytes <= full // 2
        hits = small.hits
        with pytest.warns(UserWarning, match="TensorCache is full"):  # its misses still do not fit
            pipe.stylize(*staged, steps=4, c_ratio=0.5, progress=False)
        # an LRU cache would have evicted every entry just before the re-run asked for it: 0 hits
        assert small.hits - hits >= 3  # the first timesteps (3 images each) are served from the cache
    finally:
        pipe.feature_cache = old


def test_model_cpu_offload_runs_every_stage_and_gives_the_same_image(pipe, staged, model_dir):
    from stylegallery import StyleGallery

    offloaded = StyleGallery.from_pretrained(
        str(model_dir / "sd"), semantic_model=str(model_dir / "dinov2"), depth_model=str(model_dir / "depth"), device="cpu"
    ).enable_model_cpu_offload("cpu")  # the hooks' code path; on a GPU the models also change device
    assert len(offloaded._offload_hooks) == 4  # UNet, VAE, DINOv2, Depth Anything
    prepared, inversion, _, _ = staged
    torch.testing.assert_close(torch.from_numpy(offloaded.depth_maps(prepared)[1]),
                               torch.from_numpy(pipe.depth_maps(prepared)[1]))
    seg = offloaded.segment(prepared, inversion, n_clusters=3, use_depth=False, progress=False)
    assert offloaded.match(prepared, inversion, seg).matches == staged[3].matches
    a = offloaded.stylize(prepared, inversion, staged[2], staged[3], steps=2, progress=False)
    b = pipe.stylize(*staged, steps=2, progress=False)
    assert torch.equal(a.pixels, b.pixels)
