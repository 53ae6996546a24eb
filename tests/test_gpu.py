"""The CUDA path on the tiny models: every stage in float16 and bfloat16, model CPU offload, gradient checkpointing,
LoRA fuse and unfuse, a re-run from the cache, the stylize loss against the independent reference, and the batch
command on one GPU.

Marked ``gpu`` and skipped without CUDA; ``pytest -m gpu`` runs them (``benchmarks/gpu_check.py`` does).
``STYLEGALLERY_GPU_TEST_DEVICE=cpu`` runs the same checks on the CPU, to try this file on a machine without a GPU.
"""

import os

import numpy as np
import pytest
import torch

from whole_runs import PIXEL_TOLERANCE, finite_history, load, lora_round_trip, planted, run_batch, whole_run

DEVICE = torch.device(os.environ.get("STYLEGALLERY_GPU_TEST_DEVICE", "cuda"))
ON_CUDA = DEVICE.type == "cuda"
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _bfloat16_here() -> bool:
    return not ON_CUDA or torch.cuda.get_device_capability(DEVICE)[0] >= 8


@pytest.fixture(scope="module")
def scene():
    return planted()


@pytest.fixture(scope="module")
def cpu_run(model_dir, scene):
    """The whole run on the CPU in float32: what the GPU runs are compared with."""
    return whole_run(load(model_dir, torch.float32, "cpu"), scene)


@pytest.fixture(scope="module", params=[torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def gpu_run(request, model_dir, scene):
    """(dtype, pipeline on the device, the whole run with a full-VAE preview every 2 steps, the previews)."""
    if request.param == torch.bfloat16 and not _bfloat16_here():
        pytest.skip("this GPU has no native bfloat16")
    pipe = load(model_dir, device=DEVICE, dtype=request.param, low_memory=False)
    previews = []
    out = whole_run(pipe, scene, preview="vae", preview_every=2, callback=lambda info: previews.append(info.preview))
    return request.param, pipe, out, previews


def test_every_stage_runs_on_the_device(gpu_run):
    dtype, pipe, out, previews = gpu_run
    assert pipe.device.type == DEVICE.type and pipe.unet.device.type == DEVICE.type and pipe.unet.dtype == dtype
    assert out.prepared.latents.isfinite().all() and out.inversion.features.isfinite().all()
    assert torch.isfinite(out.matching.score).all()
    assert finite_history(out.stylization) and len(out.stylization.history) == 4
    assert out.stylization.latent.dtype == torch.float32
    assert [p.size for p in previews if p is not None] == [(128, 128), (128, 128)]
    maps = pipe.attention_maps(out.prepared, out.segmentation, out.matching, [(30, 40)])
    assert float(sum(np.asarray(m).sum() for m in maps.maps[0])) == pytest.approx(1.0, abs=1e-3)
    assert len(pipe.region_scores(out.prepared, out.segmentation, out.matching, out.stylization).table()) == 3


def test_the_device_gives_the_cpu_float32_result(gpu_run, cpu_run):
    dtype, _, out, _ = gpu_run
    assert (out.segmentation.labels == cpu_run.segmentation.labels).float().mean() >= 0.95
    assert out.matching.matches == cpu_run.matching.matches
    for ours, theirs in zip(out.stylization.history, cpu_run.stylization.history):
        assert ours["total"] == pytest.approx(theirs["total"], rel=0.05)
    difference = (out.stylization.pixels.float() - cpu_run.stylization.pixels.float()).abs().mean()
    assert difference < PIXEL_TOLERANCE[dtype]


def test_a_rerun_from_the_cache_is_identical(gpu_run):
    _, pipe, out, _ = gpu_run
    args = (out.prepared, out.inversion, out.segmentation, out.matching)
    first = pipe.stylize(*args, steps=3, progress=False)
    again = pipe.stylize(*args, steps=3, progress=False)  # the attention features now come from the cache
    assert torch.equal(first.latent, again.latent) and torch.equal(first.pixels, again.pixels)


def test_gradient_checkpointing_takes_the_same_steps(gpu_run):
    _, pipe, out, _ = gpu_run
    args = (out.prepared, out.inversion, out.segmentation, out.matching)
    plain = pipe.stylize(*args, steps=3, progress=False)
    checkpointed = pipe.stylize(*args, steps=3, progress=False, gradient_checkpointing=True)
    for a, b in zip(plain.history, checkpointed.history):
        assert a["total"] == pytest.approx(b["total"], rel=1e-3)
    assert (plain.pixels.float() - checkpointed.pixels.float()).abs().mean() < 1.0


def test_lora_fuses_and_unfuses_exactly_on_the_device(gpu_run, model_dir):
    _, pipe, out, _ = gpu_run
    base, after, result = lora_round_trip(pipe, out, model_dir / "lora")
    assert finite_history(result)
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)


def test_model_offload_keeps_the_result_and_frees_the_device_between_stages(model_dir, scene, gpu_run):
    dtype, plain, out, _ = gpu_run
    pipe = load(model_dir, device=DEVICE, dtype=dtype, low_memory=True)
    assert pipe.low_memory
    offloaded = whole_run(pipe, scene)
    if ON_CUDA:  # each model went back to the CPU when its stage ended
        assert all(next(m.parameters()).device.type == "cpu" for m in (pipe.unet, pipe.vae))
    assert offloaded.matching.matches == out.matching.matches
    for a, b in zip(offloaded.stylization.history, out.stylization.history):
        assert a["total"] == pytest.approx(b["total"], rel=1e-3)
    assert (offloaded.stylization.pixels.float() - out.stylization.pixels.float()).abs().mean() < 1.0


def test_stylize_follows_the_independent_reference_in_float16(model_dir, monkeypatch):
    """Our float16 stylize on the device against ``reference_loss.py`` (written from the formulas) in float32 on
    the CPU: the same losses within half precision's tolerance."""
    from reference_loss import C_RATIO, LR, STEPS, reference_run, reference_unet
    from synthetic import planted_scene

    pipe = load(model_dir, device=DEVICE, dtype=torch.float16, low_memory=False)
    (content, *refs), _ = planted_scene(256)
    prepared = pipe.prepare(content, refs, size=256)
    inversion = pipe.invert(prepared, progress=False)
    seg = pipe.segment(prepared, inversion, use_depth=False, progress=False)
    matching = pipe.match(prepared, inversion, seg)
    assert sum(m is not None for m in matching.matches) >= 2
    ours = pipe.stylize(prepared, inversion, seg, matching, steps=STEPS, lr=LR, c_ratio=C_RATIO,
                        feature_precision=torch.float32, progress=False)
    unet, store = reference_unet(model_dir)
    latents = prepared.latents.float().cpu()
    losses, z = reference_run(unet, store, pipe.backbone.embedding.float().cpu(), pipe.scheduler, latents[:1],
                              [latents[i : i + 1] for i in range(1, len(latents))],
                              inversion.final_latents[:1].float().cpu(), seg.labels, matching.matches, "zeroed")
    for step, (style, content_loss) in enumerate(losses):
        assert ours.history[step]["style"] == pytest.approx(style, rel=0.02, abs=1e-4)
        assert ours.history[step]["content"] == pytest.approx(content_loss, rel=0.02, abs=1e-4)
    # Adam's first steps are nearly sign steps: where a gradient is close to 0, half precision may flip a few
    gap = (ours.latent.cpu() - z).abs()
    assert gap.mean() < 2e-3 and (gap > 0.02).float().mean() < 0.01


def test_the_batch_command_on_one_device(model_dir, scene, tmp_path):
    report = run_batch(model_dir, scene, tmp_path, DEVICE, "float16")
    assert report["device"].startswith(DEVICE.type) and report["dtype"] == "float16"
    assert all(np.isfinite(step["total"]) for step in report["loss_history"])
