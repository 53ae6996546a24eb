"""Per-region metrics: known answers on constructed results, a real tiny-model run, the CLI report, LPIPS errors."""

import io
import json
import math
import sys

import numpy as np
import pytest
import torch

from stylegallery import Matching, Prepared, Segmentation, StyleGalleryError, Stylization
from stylegallery import plot
from stylegallery.metrics import (
    RegionScores, latent_stat_distance, latent_stats, lpips, region_scores, sliced_wasserstein, ssim,
)

SIZE, GRID = 64, 8


def _noisy(rng, colour, count):
    return np.clip(rng.normal(colour, 12.0, (count, 3)), 0, 255).astype(np.uint8)


def _constructed(keep_second=False):
    """Content in two rows (top 0, bottom 1); two references of two bands each. The result paints content region 0
    with exactly the pixels (and latent values) of reference 0's region 0 and region 1 with reference 1's region 1."""
    rng = np.random.default_rng(0)
    half = SIZE * SIZE // 2
    colours = [[(200, 40, 40), (40, 60, 220)], [(40, 180, 60), (230, 220, 40)]]
    rows = np.repeat(np.arange(2), GRID // 2)[:, None].repeat(GRID, 1)  # (8, 8): top 0, bottom 1
    bands = rows.T.copy()  # left 0, right 1
    pixel_bands = np.repeat(np.repeat(bands, SIZE // GRID, 0), SIZE // GRID, 1)

    refs, ref_latents = [], []
    for reference in range(2):
        image = np.zeros((SIZE, SIZE, 3), np.uint8)
        for region in range(2):
            image[pixel_bands == region] = _noisy(rng, colours[reference][region], half)
        refs.append(image)
        latent = rng.normal(0, 1, (4, GRID, GRID)) + np.where(bands == 1, 1.5 * (reference + 1), -reference)[None]
        ref_latents.append(latent)
    content = np.concatenate([_noisy(rng, (120, 120, 120), half), _noisy(rng, (90, 140, 200), half)]).reshape(SIZE, SIZE, 3)

    # the result: top half = reference 0's region 0 pixels, bottom half = reference 1's region 1 pixels
    result = np.concatenate([refs[0][pixel_bands == 0], refs[1][pixel_bands == 1]]).reshape(SIZE, SIZE, 3)
    stylized = np.concatenate([ref_latents[0][:, bands == 0], ref_latents[1][:, bands == 1]], axis=1)
    stylized = stylized.reshape(4, GRID, GRID)

    chw = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)  # noqa: E731
    prepared = Prepared(["content.png", "style_a.png", "style_b.png"], ["0"] * 3,
                        torch.stack([chw(content), chw(refs[0]), chw(refs[1])]),
                        torch.from_numpy(np.stack([rng.normal(0, 1, (4, GRID, GRID))] + ref_latents)).float(), "test")
    labels = torch.from_numpy(np.stack([rows, bands, bands])).long()
    segmentation = Segmentation(labels, [{}, {}, {}], [2, 2, 2], {})
    columns = [[0, 0], [0, 1], [1, 0], [1, 1]]
    zeros = torch.zeros(2, 4)
    matching = Matching(zeros, zeros, zeros, zeros, columns, [[0, 0], None if keep_second else [1, 1]])
    stylization = Stylization(torch.from_numpy(stylized).float()[None], chw(result), [], False, {})
    return prepared, segmentation, matching, stylization


def test_sliced_wasserstein_is_zero_to_itself_symmetric_and_deterministic():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 10, (500, 3)), rng.normal(5, 20, (300, 3))
    assert sliced_wasserstein(a, a) == 0.0
    assert sliced_wasserstein(a, rng.permutation(a)) == 0.0  # order does not matter
    assert sliced_wasserstein(a, b) == pytest.approx(sliced_wasserstein(b, a), rel=1e-12)
    assert sliced_wasserstein(a, b) == sliced_wasserstein(a, b) > 0
    assert sliced_wasserstein(a, np.concatenate([a, a])) == pytest.approx(0.0, abs=1e-9)  # same distribution
    # a translation by t: every projection shifts by d.t, so SW2 = sqrt(mean (d.t)^2) over the directions
    t = np.array([3.0, -4.0, 12.0])
    from stylegallery.metrics import projection_directions

    expected = math.sqrt(np.mean((projection_directions(3, 64, 0) @ t) ** 2))
    assert sliced_wasserstein(a, a + t) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(StyleGalleryError, match="non-empty"):
        sliced_wasserstein(a, np.zeros((0, 3)))


def test_latent_stat_distance_known_answers():
    latent = torch.randn(1, 4, 8, 8)
    assert latent_stat_distance(latent, latent) == 0.0
    assert latent_stat_distance(latent, latent + 0.5) == pytest.approx(1.0, abs=1e-6)  # |(0.5,)*4| = 1
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:, :4] = True
    mean, std = latent_stats(latent, mask)
    np.testing.assert_allclose(mean, latent[0, :, :, :4].double().mean((1, 2)).numpy(), rtol=1e-6)
    assert std.shape == (4,)


def test_shuffled_pixels_lose_ssim():
    from synthetic import planted

    image, labels = planted(64, "bands")
    pixels = np.asarray(image)
    shuffled = np.random.default_rng(0).permutation(pixels.reshape(-1, 3)).reshape(pixels.shape)
    whole, per_region = ssim(pixels, pixels, labels)
    assert whole == pytest.approx(1.0) and np.allclose(per_region, 1.0) and len(per_region) == 3
    whole, per_region = ssim(pixels, shuffled, labels)
    assert whole < 0.5 and np.all(per_region < 0.5)


def test_a_region_painted_with_its_match_is_nearest_to_it():
    scores = region_scores(*_constructed())
    assert isinstance(scores, RegionScores) and scores.colour.shape == (2, 4) and scores.latent.shape == (2, 4)
    assert scores.colour[0, 0] == pytest.approx(0.0, abs=1e-9) and scores.colour[1, 3] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.delete(scores.colour[0], 0) > 5) and np.all(np.delete(scores.colour[1], 3) > 5)
    assert scores.latent[0, 0] == pytest.approx(0.0, abs=1e-6) and scores.latent[1, 3] == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.delete(scores.latent[0], 0) > 0.3)
    assert scores.moved_toward_match == [True, True]
    assert np.all(scores.colour_before[:, [0, 3]] > 5)  # the content image was far from its matches
    rows = scores.table()
    assert [r["content_region"] for r in rows] == [0, 1]
    assert rows[0]["nearest_colour"] == [0, 0] and rows[1]["nearest_latent"] == [1, 1]
    assert rows[1]["share"] == 0.5 and rows[0]["colour_distance"] == pytest.approx(0.0, abs=1e-9)
    assert rows[0]["ssim"] < 0.5 and scores.ssim_whole < 0.5  # the result is not the content
    json.dumps(scores.as_dict(), allow_nan=False)
    json.dumps(rows, allow_nan=False)
    assert region_scores(*_constructed()).as_dict() == scores.as_dict()  # deterministic


def test_kept_region_has_no_match_scores():
    scores = region_scores(*_constructed(keep_second=True))
    row = scores.table()[1]
    assert row["style_image"] is None and row["colour_distance"] is None and row["moved_toward_match"] is None
    assert row["nearest_colour"] == [1, 1]  # still measured against every style region
    fig = plot.region_scores(scores, names=["a", "b"])
    assert len([p for p in fig.axes[0].patches if p.get_gid() == "keep"]) == 1
    fig.savefig(io.BytesIO(), format="png")


def test_real_tiny_run_gives_one_finite_row_per_content_region(pipe, planted_run):
    prepared, inversion, _ = planted_run
    segmentation = pipe.segment(prepared, inversion, n_clusters=3, use_depth=False, progress=False)
    matching = pipe.match(prepared, inversion, segmentation)
    stylization = pipe.stylize(prepared, inversion, segmentation, matching, steps=2, progress=False)
    scores = region_scores(prepared, segmentation, matching, stylization)
    rows = scores.table()
    assert len(rows) == segmentation.n_regions(0) == len(matching.matches)
    assert scores.colour.shape == (segmentation.n_regions(0), len(matching.columns))
    assert np.all(np.isfinite(scores.colour)) and np.all(np.isfinite(scores.latent)) and np.all(np.isfinite(scores.ssim))
    assert -1 <= scores.ssim_whole <= 1
    for row, match in zip(rows, matching.matches):
        assert [row["style_image"], row["style_region"]] == (match or [None, None])
        if match is not None:
            assert all(math.isfinite(row[k]) for k in ("colour_distance", "latent_stat_distance", "ssim"))
            assert isinstance(row["moved_toward_match"], bool)
    json.dumps(rows, allow_nan=False)
    fig = plot.region_scores(scores, plot.image_names(prepared.names)[1:])
    assert len([p for p in fig.axes[0].patches if p.get_gid() == "match"]) == sum(m is not None for m in matching.matches)


def test_cli_report_has_region_scores(model_dir, tmp_path, capsys):
    from stylegallery.tools.cli import main
    from synthetic import planted

    planted(64, "bands")[0].save(tmp_path / "content.png")
    planted(64, "rows", ("yellow", "green", "red"))[0].save(tmp_path / "style.png")
    report = tmp_path / "r.json"
    code = main([str(a) for a in ["run", tmp_path / "content.png", tmp_path / "style.png", "-o", tmp_path / "o.png",
                                  "--model", model_dir / "sd", "--no-semantic", "--no-depth", "--size", 64,
                                  "--steps", 2, "--inversion-steps", 2, "--max-clusters", 3, "--report", report,
                                  "--quiet"]])
    assert code == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert len(data["region_scores"]) == data["regions"]["content"]
    assert {"content_region", "colour_distance", "latent_stat_distance", "moved_toward_match", "ssim"} <= set(data["region_scores"][0])
    assert -1 <= data["ssim"] <= 1 and data["content_loss"] > 0
    assert all(row["content_loss"] > 0 for row in data["region_scores"])


def test_lpips_without_torchmetrics_says_what_to_install(monkeypatch):
    for name in ("torchmetrics", "torchmetrics.image", "torchmetrics.image.lpip"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(StyleGalleryError, match=r"stylegallery\[metrics\]"):
        lpips(image, image)


def test_lpips_offline_without_weights_says_what_to_download(monkeypatch, tmp_path):
    pytest.importorskip("torchmetrics")
    pytest.importorskip("torchvision")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))  # an empty cache: nothing is downloaded
    try:
        image = np.zeros((64, 64, 3), np.uint8)
        with pytest.raises(StyleGalleryError, match="offline"):
            lpips(image, image)
    finally:
        torch.hub.set_dir(old)


def test_content_loss_per_region_is_zero_for_the_content_and_averages_to_the_whole(pipe, planted_run):
    from stylegallery.stages.style_loss import token_labels

    prepared, inversion, _ = planted_run
    segmentation = pipe.segment(prepared, inversion, n_clusters=3, use_depth=False, progress=False)
    layers = pipe.default_loss_layers
    settings = dict(steps=4, scheduler="ddim", loss_layers=layers[:1], model=pipe.stylize_model)
    pixels = prepared.pixels[0]
    same = Stylization(prepared.latents[:1].clone(), pixels, [], False, settings)
    noise = Stylization(torch.randn(1, *prepared.latents.shape[1:], generator=torch.Generator().manual_seed(0)),
                        pixels, [], False, settings)
    whole0, regions0 = pipe.content_loss_regions(prepared, segmentation, same, feature_precision=torch.float32)
    whole, regions = pipe.content_loss_regions(prepared, segmentation, noise, feature_precision=torch.float32)
    assert whole0 == pytest.approx(0.0, abs=1e-5) and np.allclose(regions0, 0.0, atol=1e-5)
    assert whole > 0 and np.all(regions > 0) and len(regions) == segmentation.n_regions(0)
    # one layer: the token-weighted mean of the per-region values is the whole image's mean |Q - Q_c|
    tokens = pipe.recorder.run(pipe.unet, prepared.latents[:1], pipe.timesteps(4)[-1], pipe.backbone.embedding,
                               keep=("q",))[layers[0]]["q"].shape[-2]
    counts = np.bincount(token_labels(segmentation.labels[0], tokens).numpy(), minlength=len(regions))
    assert np.average(regions, weights=counts) == pytest.approx(whole, rel=1e-5)
    with pytest.raises(StyleGalleryError, match="another model"):
        pipe.content_loss_regions(prepared, segmentation, Stylization(noise.latent, pixels, [], False,
                                                                      dict(settings, model="other")))
