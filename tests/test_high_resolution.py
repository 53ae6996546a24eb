"""Beyond the working size: output_size refined in overlapping windows (stylegallery.stages.windows)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from stylegallery import StyleGalleryError
from stylegallery.stages.stylize import LossParts
from stylegallery.stages.windows import WindowedAdam, output_pixels, window_cells, window_grid, window_plan, windowed_loss
from stylegallery.tools.cli import main


@pytest.fixture
def exact_threads(pipe):
    """Pin torch's threads: results compared to the last bit must not depend on how many threads each stage got."""
    saved, pipe.cpu_threads = pipe.cpu_threads, None
    yield pipe
    pipe.cpu_threads = saved


def test_windows_cover_the_grid_and_their_weights_sum_to_one():
    plan = window_plan((64, 40), 24, 17)
    starts = sorted({w.top for w in plan.windows})
    assert starts == [0, 17, 34, 40]  # every 17 cells, the last flush with the edge
    assert sorted({w.left for w in plan.windows}) == [0, 16]  # 40 - 24: one step covers the width
    total = torch.zeros(64, 40)
    for window, weight in zip(plan.windows, plan.weights):
        assert window.top + window.height <= 64 and window.left + window.width <= 40
        assert (weight >= 0).all()
        total[window.slices] += weight
    assert torch.allclose(total, torch.ones(64, 40), atol=1e-6)
    # a window has no say over the edge of its crop inside the picture (the neighbour sees past it) ...
    first = plan.windows[0]
    assert first.top == 0 and first.left == 0
    assert (plan.weights[0][-1] == 0).all() and (plan.weights[0][:, -1] == 0).all()
    # ... and full say at the picture's own border
    assert (plan.weights[0][0, :16] == 1).all() and (plan.weights[0][:17, 0] == 1).all()
    assert window_grid((10, 12), 24, 17) == [window_grid((10, 12), 24, 17)[0]]  # a window larger than the grid is cut
    assert window_grid((10, 12), 24, 17)[0].height == 10


def _quadratic_window_loss(targets):
    def window_loss_at(t, i):
        def loss(crop):
            value = ((crop - targets[i]) ** 2).sum()
            return LossParts(value, value * 0, value, value[None])
        return loss
    return window_loss_at


def test_windowed_adam_fuses_each_windows_own_adam_step():
    """After one step the latent is sum_i w_i (crop_i - lr g_i / (|g_i| + eps)): Adam's first step on each window's
    crop (its bias-corrected moments are g and g^2), blended by the weights."""
    plan = window_plan((20, 30), 12, 8)
    targets = [torch.full((1, 4, w.height, w.width), float(i)) for i, w in enumerate(plan.windows)]
    z0 = torch.randn(1, 4, 20, 30)
    z = z0.clone()
    adam = WindowedAdam(plan, lr=0.1).attach(z)
    seen = []
    adam.zero_grad()
    parts = windowed_loss(plan, _quadratic_window_loss(targets), adam, seen.append)(5)(z)
    adam.step()
    assert not parts.total.requires_grad and seen == list(range(len(plan.windows)))
    expected = torch.zeros_like(z0)
    for window, weight, target in zip(plan.windows, plan.weights, targets):
        crop = z0[(..., *window.slices)]
        grad = 2 * (crop - target)
        expected[(..., *window.slices)] += weight * (crop - 0.1 * grad / (grad.abs() + 1e-8))
    assert torch.allclose(z, expected, atol=1e-6)


def test_windowed_adam_with_one_window_is_adam():
    plan = window_plan((6, 7), 8, 6)
    assert len(plan.windows) == 1
    target = torch.randn(1, 4, 6, 7)
    z, reference = torch.randn(1, 4, 6, 7), None
    reference = z.clone().requires_grad_(True)
    adam, plain = WindowedAdam(plan, lr=0.05).attach(z), torch.optim.Adam([reference], lr=0.05)
    for _ in range(5):
        adam.zero_grad()
        windowed_loss(plan, _quadratic_window_loss([target]), adam)(0)(z)
        adam.step()
        plain.zero_grad()
        ((reference - target) ** 2).sum().backward()
        plain.step()
    assert torch.equal(z, reference.detach())


def test_output_sizes_keep_the_aspect_and_round_to_the_vae_grid():
    assert output_pixels(2048, (1536, 2048), (512, 512)) == (1536, 2048)
    assert output_pixels(1000, (3000, 4000), (512, 512)) == (768, 1024)  # 750 -> 768, 1000 -> 1024
    assert output_pixels((700, 900), (1, 1), (512, 512)) == (704, 896)
    assert window_cells(512, None) == (64, 48)  # the stride defaults to 3/4 of the window
    with pytest.raises(StyleGalleryError, match="smaller than the working size"):
        output_pixels(256, (100, 100), (512, 512))
    with pytest.raises(StyleGalleryError, match="larger than the window"):
        window_cells(256, 512)


def test_one_window_over_the_working_grid_is_a_warm_rerun(exact_threads, planted_stages):
    """With one window over the whole latent the windowed refinement is today's path: a warm re-run of the
    working result over the same timesteps."""
    pipe = exact_threads
    prepared, inversion, segmentation, matching = planted_stages
    windowed = pipe.stylize(prepared, inversion, segmentation, matching, steps=4, output_size=256, window=256,
                            refine_steps=2, progress=False)
    assert windowed.settings["output"]["windows"] == 1
    working = type(windowed)(windowed.latent, windowed.pixels, windowed.history, False, dict(windowed.settings))
    today = pipe.stylize(prepared, inversion, segmentation, matching, steps=4, init=working, start_step=2,
                         progress=False)
    assert (windowed.output_latent - today.latent).abs().max() <= 1e-6
    assert [h["total"] for h in windowed.output_history] == pytest.approx([h["total"] for h in today.history], abs=1e-6)
    assert np.array_equal(np.asarray(windowed.image), np.asarray(today.image))


def _gradient_scene(size):
    yy, xx = np.mgrid[:size, :size] / size
    return Image.fromarray(np.stack([200 * xx + 30, 200 * yy + 30, 120 + 80 * xx * yy], -1).astype(np.uint8))


def _step(image, at, axis):
    """Mean absolute difference between pixel rows (axis 0) or columns (axis 1) ``at - 1`` and ``at``."""
    a = image.astype(np.float64)
    return float(np.abs(np.take(a, at, axis) - np.take(a, at - 1, axis)).mean())


def test_window_borders_do_not_show(pipe):
    """On a scene of smooth gradients, the step across every window border is within 10% of the step at the same
    kind of place away from borders.

    "The same kind of place" is two latent pixels (16 px) away: the tiny test models draw their own grids, the VAE
    decoding each latent pixel as an 8 x 8 block and the UNet working on cells of 2 x 2 latent pixels, so a step
    one image pixel away (inside a block) or 8 px away (on the other half of a UNet cell) measures the model's grid,
    not the windows. The working size is the output size, so the start is the working latent itself and no
    upsampling adds block edges of its own. Without the edge margin (a window has no say over the last latent
    pixels of its crop inside the picture) this scene shows its borders: 1.24x on one axis."""
    from synthetic import planted_scene

    content = _gradient_scene(512)
    (_, *refs), _ = planted_scene(128)
    settings = dict(size=512, inversion_steps=3, n_clusters=2, use_depth=False, steps=20, lr=0.2, output_size=512,
                    refine_steps=10, progress=False)
    windowed = pipe(content, refs, window=192, **settings).stylization
    single = pipe(content, refs, window=512, **settings).stylization
    assert windowed.settings["output"]["windows"] == 16 and single.settings["output"]["windows"] == 1
    plan = window_plan((64, 64), 24, 18)
    borders = sorted({w.top * 8 for w in plan.windows if w.top} | {(w.top + w.height) * 8 for w in plan.windows
                                                                    if w.top + w.height < 64})
    assert borders == [144, 192, 288, 320, 336, 480]
    a, b = np.asarray(windowed.output_pixels.permute(1, 2, 0)), np.asarray(single.output_pixels.permute(1, 2, 0))
    assert np.abs(a.astype(float) - b).mean() > 5  # the windows changed the picture
    for axis in (0, 1):
        across = np.mean([_step(a, x, axis) for x in borders])
        away = np.mean([_step(a, x + d, axis) for x in borders for d in (-16, 16)])
        assert across <= 1.1 * away, (axis, across, away)


def test_impossible_sizes_are_refused_before_any_work(pipe, monkeypatch):
    from synthetic import planted_scene

    import stylegallery.pipeline as pipeline

    (content, *refs), _ = planted_scene(64)
    monkeypatch.setattr(pipe, "prepare", lambda *a, **k: pytest.fail("a stage ran"))
    monkeypatch.setattr(pipeline, "free_memory", lambda device: 2**30)
    with pytest.raises(StyleGalleryError, match=r"needs about .* GiB but 1.0 GiB is free .* smaller window"):
        pipe(content, refs, size=64, output_size=4096, window=1024)
    for settings, message in (
        (dict(output_size=32), "output_size must be"),
        (dict(output_size=128, size=256), "smaller than the working size"),
        (dict(window=128), "only apply with output_size"),
        (dict(output_size=256, window=100), "multiple of 64"),
        (dict(output_size=256, window=128, window_stride=256), "larger than the window"),
        (dict(output_size=256, steps=3, refine_steps=4), "at most steps"),
    ):
        with pytest.raises(StyleGalleryError, match=message):
            pipe(content, refs, **{"size": 64, **settings})


def test_the_cli_stylizes_a_2048_photo_in_512_windows(model_dir, tmp_path, capsys):
    """The 2048 x 1536 sample photo at its own size through the CLI, in 512 px windows, on the tiny models."""
    out, report = tmp_path / "big.png", tmp_path / "report.json"
    code = main(["run", "data/content_coffee_2048.jpg", "data/style_brick.jpg", "-o", str(out), "--model",
                 str(model_dir / "sd"), "--no-semantic", "--no-depth", "--size", "128", "--steps", "3",
                 "--inversion-steps", "2", "--max-clusters", "3", "--output-size", "2048", "--window", "512",
                 "--refine-steps", "1", "--report", str(report), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert Image.open(out).size == (2048, 1536)
    written = json.loads(report.read_text())
    assert written["settings"]["output_size"] == 2048 and written["settings"]["window"] == 512
    assert written["output"]["size"] == [1536, 2048] and written["output"]["windows"] == 20  # 4 x 5 at stride 384


@pytest.mark.parametrize("extra, message", [
    (["--output-size", "64"], "smaller than the working size"),
    (["--window", "512"], "only apply with --output-size"),
    (["--output-size", "512", "--window", "100"], "multiple of 64"),
])
def test_cli_size_errors_exit_2_with_one_line(model_dir, tmp_path, capsys, extra, message):
    code = main(["run", "data/content_coffee.jpg", "data/style_brick.jpg", "-o", str(tmp_path / "o.png"), "--model",
                 str(model_dir / "sd"), "--no-semantic", "--no-depth", "--size", "128", *extra, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o.png").exists()


def test_a_batch_plan_sets_output_size_per_row(model_dir, tmp_path):
    from synthetic import planted

    planted(64, "bands", ("red", "green", "blue"), seed=0)[0].save(tmp_path / "c.png")
    planted(64, "rows", ("yellow", "green", "red"), seed=5)[0].save(tmp_path / "s.png")
    (tmp_path / "plan.csv").write_text("content,styles,output_size\nc.png,s.png,\nc.png,s.png,192\n")
    out = tmp_path / "out"
    assert main(["batch", str(tmp_path / "plan.csv"), "-o", str(out), "--model", str(model_dir / "sd"),
                 "--no-semantic", "--no-depth", "--size", "64", "--steps", "2", "--inversion-steps", "2",
                 "--max-clusters", "3", "--quiet"]) == 0
    sizes = sorted(Image.open(p).size for p in (out / "jobs").glob("*/*.png") if "result" in p.name or "output" in p.name)
    assert sizes == [(64, 64), (192, 192)], sorted(p.name for p in (out / "jobs").glob("*/*"))
