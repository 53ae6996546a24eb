"""Half precision without a GPU. Most failures on a GPU are dtype and device mistakes, so the whole pipeline runs
here on the CPU in float16 and bfloat16, on the tiny models, against the same run in float32 (README, "GPUs and
precision").

The checks are: finite losses and maps, the optimized latent kept in float32, a result close to the float32 one,
LoRA fuse and unfuse exact in half precision, previews, attention maps, region scores and a batch. A last test
reads the package for tensors put on a hard-coded device.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from whole_runs import PIXEL_TOLERANCE, finite_history, load, lora_round_trip, planted, run_batch, whole_run

HALF = [torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def scene():
    return planted()


@pytest.fixture(scope="module")
def full_run(model_dir, scene):
    """The whole run in float32."""
    return whole_run(load(model_dir, torch.float32), scene)


@pytest.fixture(scope="module", params=HALF, ids=["float16", "bfloat16"])
def half_run(request, model_dir, scene):
    """(dtype, pipeline, the whole run in that dtype with a full-VAE preview every 2 steps, the previews)."""
    pipe = load(model_dir, request.param)
    previews = []
    out = whole_run(pipe, scene, preview="vae", preview_every=2, callback=lambda info: previews.append(info.preview))
    return request.param, pipe, out, previews


def test_every_stage_runs_in_half_precision(half_run):
    dtype, pipe, out, previews = half_run
    assert pipe.unet.dtype == dtype and pipe.dtype == dtype
    assert out.prepared.latents.dtype == torch.float32 and out.prepared.latents.isfinite().all()
    assert out.inversion.features.isfinite().all() and out.inversion.trajectories.isfinite().all()
    assert torch.isfinite(out.matching.score).all()
    assert finite_history(out.stylization) and len(out.stylization.history) == 4
    assert out.stylization.latent.dtype == torch.float32  # the optimized latent stays in float32
    assert [p.size for p in previews if p is not None] == [(128, 128), (128, 128)]
    assert pipe.preview(out.stylization.latent, "linear").size == (16, 16)


def test_half_precision_gives_the_float32_result(half_run, full_run):
    dtype, _, out, _ = half_run
    agree = (out.segmentation.labels == full_run.segmentation.labels).float().mean()
    assert agree >= 0.95 and out.matching.matches == full_run.matching.matches
    for ours, theirs in zip(out.stylization.history, full_run.stylization.history):
        assert ours["total"] == pytest.approx(theirs["total"], rel=0.05)
    difference = (out.stylization.pixels.float() - full_run.stylization.pixels.float()).abs().mean()
    assert difference < PIXEL_TOLERANCE[dtype]


def test_lora_fuses_and_unfuses_exactly_in_half_precision(half_run, model_dir):
    _, pipe, out, _ = half_run
    base, after, result = lora_round_trip(pipe, out, model_dir / "lora")
    assert finite_history(result)
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)
    assert all(v.dtype == base[k].dtype for k, v in after.items())


def test_attention_maps_and_region_scores_in_half_precision(half_run):
    dtype, pipe, out, _ = half_run
    maps = pipe.attention_maps(out.prepared, out.segmentation, out.matching, [(30, 40), (100, 20)])
    weights = [float(sum(np.asarray(m).sum() for m in point)) for point in maps.maps]
    assert weights == pytest.approx([1.0, 1.0], abs=1e-3)  # each point's weights over all references sum to 1
    scores = pipe.region_scores(out.prepared, out.segmentation, out.matching, out.stylization)
    table = scores.table()
    assert len(table) == out.segmentation.n_regions(0)
    assert all(row["content_loss"] is not None and row["ssim"] is not None for row in table)  # None: NaN


def test_a_batch_in_float16_gives_the_float32_pictures(model_dir, scene, tmp_path):
    results = {dtype: run_batch(model_dir, scene, tmp_path, "cpu", dtype) for dtype in ("float32", "float16")}
    assert [results[d]["dtype"] for d in results] == ["float32", "float16"]
    assert np.abs(results["float16"]["pixels"] - results["float32"]["pixels"]).mean() < PIXEL_TOLERANCE[torch.float16]


def test_no_tensor_is_put_on_a_hard_coded_device():
    """Devices come from the models or the user: no ``.cuda()``, and no literal device given to a tensor."""
    package = Path(__file__).resolve().parent.parent / "stylegallery"
    widgets = Path(__file__).resolve().parent.parent / "widgets"
    pattern = re.compile(r"\.cuda\(|device=[\"'](cuda|mps)|\.to\([\"'](cuda|mps)")
    found = [f"{path.name}:{n}: {line.strip()}" for folder in (package, widgets) for path in folder.rglob("*.py")
             for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found
