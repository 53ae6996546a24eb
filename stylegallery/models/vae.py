"""The VAE: pictures to latents (the distribution's mean, times the scaling factor) and latents back to pictures."""

from __future__ import annotations

import torch


@torch.no_grad()
def encode(vae, pixels: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 pixels (N, 3, H, W) -> float32 latents (N, 4, H/8, W/8) on the CPU, already times the scaling factor;
    one image at a time."""
    scaled = pixels.to(device, dtype) / 127.5 - 1.0
    latents = [vae.encode(x[None]).latent_dist.mean for x in scaled]
    return (torch.cat(latents).float() * vae.config.scaling_factor).cpu()


@torch.no_grad()
def decode(vae, latent: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A latent (1, 4, h, w) -> uint8 pixels (3, H, W) on the CPU."""
    decoded = vae.decode(latent.to(device, dtype) / vae.config.scaling_factor).sample[0]
    return ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
