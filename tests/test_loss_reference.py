"""The stylize stage against an independent reference written from docs/method.md's formulas (stage 4): see
``reference_loss.py``, which shares no code with ``stylegallery.stages``."""

import pytest
import torch

from reference_loss import C_RATIO, LR, STEPS, reference_run, reference_unet


@pytest.mark.parametrize("mode", ["zeroed", "masked"])
def test_stylize_follows_the_formulas_of_design_stage_4(pipe, planted_run, model_dir, mode, monkeypatch):
    prepared, inversion, _ = planted_run
    # both loops on torch's threads: another thread count sums in another order, and after a few Adam steps the
    # rounding differences exceed the tolerance on the latent
    monkeypatch.setattr(pipe, "cpu_threads", None)
    seg = pipe.segment(prepared, inversion, use_depth=False, progress=False)
    matching = pipe.match(prepared, inversion, seg)
    assert sum(m is not None for m in matching.matches) >= 2
    ours = pipe.stylize(prepared, inversion, seg, matching, steps=STEPS, lr=LR, c_ratio=C_RATIO,
                        region_attention=mode, feature_precision=torch.float32, progress=False)

    unet, store = reference_unet(model_dir)
    latents = prepared.latents.float()
    losses, z = reference_run(unet, store, pipe.backbone.embedding.float(), pipe.scheduler,
                               latents[:1], [latents[i : i + 1] for i in range(1, len(latents))],
                               inversion.final_latents[:1].float(), seg.labels, matching.matches, mode)
    for step, (style, content) in enumerate(losses):
        assert ours.history[step]["style"] == pytest.approx(style, rel=1e-5, abs=1e-7)
        assert ours.history[step]["content"] == pytest.approx(content, rel=1e-5, abs=1e-7)
    torch.testing.assert_close(ours.latent, z, rtol=1e-5, atol=1e-5)
