"""Cheap pictures of a latent during stylize: a fixed linear latent-to-RGB map, or a tiny autoencoder."""

from __future__ import annotations

import torch
from PIL import Image

#: Stable Diffusion 1.5's approximate linear map from a (scaled) latent to RGB in [-1, 1], one row per latent
#: channel: the published fit that fast latent previews use. SD's latents are close to linear in colour.
SD_LATENT_TO_RGB = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
#: diffusers' ``AutoencoderTiny`` for SD 1.5 latents (a few MB): a sharper preview where the user has it.
DEFAULT_TINY_VAE = "madebyollin/taesd"
PREVIEWS = ("linear", "tiny-vae", "vae")


def linear_preview(latent: torch.Tensor) -> Image.Image:
    """An RGB picture of a (1, 4, h, w) latent at the latent's resolution, by :data:`SD_LATENT_TO_RGB`."""
    to_rgb = torch.tensor(SD_LATENT_TO_RGB, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latent[0].detach().float().cpu(), to_rgb)
    return Image.fromarray(((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy())


@torch.no_grad()
def tiny_vae_preview(decoder, latent: torch.Tensor, scaling_factor: float) -> Image.Image:
    """An RGB picture of a (1, 4, h, w) latent at full size, decoded by an ``AutoencoderTiny``."""
    param = next(decoder.parameters())
    image = decoder.decode(latent.detach().to(param.device, param.dtype) / scaling_factor).sample[0]
    array = ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)
