"""DDIM inversion with capture of the decoder-block features and their temporal weighting."""

from __future__ import annotations

import math

import torch



def eps_from_v(v: torch.Tensor, latent: torch.Tensor, alpha: float) -> torch.Tensor:
    """The noise a v-prediction means: ``eps = sqrt(a) v + sqrt(1 - a) x_t`` (``v = sqrt(a) eps - sqrt(1 - a) x0``)."""
    return math.sqrt(alpha) * v + math.sqrt(1.0 - alpha) * latent


def temporal_weights(n: int, steepness: float = 5.0, midpoint: float = 0.7) -> torch.Tensor:
    """``w_i = 1 / (1 + exp(steepness * (i / n - midpoint)))`` for i = 0..n-1, normalised to sum to 1."""
    w = torch.tensor([1.0 / (1.0 + math.exp(steepness * (i / n - midpoint))) for i in range(n)], dtype=torch.float64)
    return (w / w.sum()).float()


def ddim_inversion_step(latent, noise_pred, alpha_prev: float, alpha_next: float):
    """Move ``latent`` from noise level ``alpha_prev`` up to ``alpha_next`` with the deterministic DDIM update.

    ``x0 = (z - sqrt(1 - a_prev) * eps) / sqrt(a_prev)`` and ``z' = sqrt(a_next) * x0 + sqrt(1 - a_next) * eps``.
    """
    x0 = (latent - math.sqrt(1.0 - alpha_prev) * noise_pred) / math.sqrt(alpha_prev)
    return math.sqrt(alpha_next) * x0 + math.sqrt(1.0 - alpha_next) * noise_pred


def inversion_timesteps(scheduler, steps: int) -> list[int]:
    """The scheduler's ``steps`` timesteps in increasing order (clean to noisy)."""
    scheduler.set_timesteps(steps)
    return sorted(int(t) for t in scheduler.timesteps)


@torch.no_grad()
def invert(unet, scheduler, latents, embedding, steps: int, feature_block: int, progress=None, added_cond_kwargs=None):
    """Invert a batch of clean latents; return (trajectory (B, steps+1, 4, h, w), features per step list).

    At each step the UNet runs on the current latent at the next (higher) timestep t, the latent moves from
    ``alphas_cumprod[max(0, t - T // steps)]`` to ``alphas_cumprod[t]`` (so the first step starts from
    ``alphas_cumprod[0]``, as in the authors' release), and the output of decoder block ``feature_block`` is
    captured.
    A v-prediction model's output is turned into the noise it implies (:func:`eps_from_v`, at the alpha of
    the timestep the UNet was given). ``added_cond_kwargs``: SDXL's extra conditions.
    """
    timesteps = inversion_timesteps(scheduler, steps)
    alphas = scheduler.alphas_cumprod
    captured: list[torch.Tensor] = []
    hook = unet.up_blocks[feature_block].register_forward_hook(
        lambda _m, _i, out: captured.append((out[0] if isinstance(out, tuple) else out).float().cpu())
    )
    latent = latents.to(unet.device, torch.float32)
    trajectory = [latent.cpu()]
    stride = scheduler.config.num_train_timesteps // steps
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    try:
        for t in timesteps:
            noise = unet(latent.to(unet.dtype), t, encoder_hidden_states=embedding, added_cond_kwargs=added_cond_kwargs,
                         return_dict=False)[0].float()
            if v_prediction:
                noise = eps_from_v(noise, latent, float(alphas[t]))
            # as in the authors' release: the step starts at the timestep one stride below t (the previous one),
            # and the first at alphas_cumprod[0], not at 1.0
            alpha_prev, alpha_next = float(alphas[max(0, t - stride)]), float(alphas[t])
            latent = ddim_inversion_step(latent, noise, alpha_prev, alpha_next)
            trajectory.append(latent.cpu())
            if progress is not None:
                progress.update(1)
    finally:
        hook.remove()
    return torch.stack(trajectory, dim=1), timesteps, captured


def aggregate_features(per_step: list[torch.Tensor], weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Weighted sum of the per-step feature maps, each resized to the latent grid ``size``."""
    total = None
    for w, f in zip(weights.tolist(), per_step):
        if f.shape[-2:] != size:
            f = torch.nn.functional.interpolate(f, size=size, mode="bilinear", align_corners=False)
        total = f * w if total is None else total + f * w
    return total
