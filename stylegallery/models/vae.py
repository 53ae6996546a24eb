"""The VAE: pictures to latents (the distribution's mean, times the scaling factor) and latents back to pictures,
in the precision the VAE's config asks for."""

from __future__ import annotations

import contextlib

import torch


def vae_dtype(vae, dtype: torch.dtype) -> torch.dtype:
    """The dtype a VAE runs in within a pipeline of ``dtype``: float32 where ``dtype`` is float16 and the VAE's
    config sets ``force_upcast`` (SDXL's VAE overflows in float16 and decodes black), else ``dtype``; diffusers'
    pipelines follow the same rule. bfloat16 has float32's range and stays; an "fp16-fix" VAE sets the flag false."""
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        return torch.float32
    return dtype


def upcast(vae, dtype: torch.dtype):
    """The VAE, loaded in the pipeline's ``dtype``, cast to float32 where :func:`vae_dtype` says so (by
    ``Module.float``, which diffusers' ``to`` does not warn about)."""
    return vae.float() if vae_dtype(vae, dtype) == torch.float32 else vae


@torch.no_grad()
def encode(vae, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 pixels (N, 3, H, W) -> float32 latents (N, 4, H/8, W/8) on the CPU, already times the scaling factor;
    one image at a time, in the VAE's own dtype."""
    scaled = pixels.to(device, vae.dtype) / 127.5 - 1.0
    latents = [vae.encode(x[None]).latent_dist.mean for x in scaled]
    return (torch.cat(latents).float() * vae.config.scaling_factor).cpu()


@torch.no_grad()
def decode(vae, latent: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A latent (1, 4, h, w) -> uint8 pixels (3, H, W) on the CPU, decoded in the VAE's own dtype."""
    decoded = vae.decode(latent.to(device, vae.dtype) / vae.config.scaling_factor).sample[0]
    return ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


#: Smallest VAE tile (pixels) when tiling: diffusers' default tile is the VAE config's ``sample_size``, which is
#: tiny for test models; SD's VAEs were trained at 512 and more.
MIN_TILE = 512


@contextlib.contextmanager
def tiled(vae, size: tuple[int, int]):
    """Within the block, the VAE encodes and decodes pictures of ``size`` = (H, W) pixels in overlapping tiles
    (diffusers' ``enable_tiling``, tiles of at least :data:`MIN_TILE` px) when a side exceeds the tile; memory is
    then set by the tile. Back to whole-picture passes after."""
    tile = max(int(vae.tile_sample_min_size), MIN_TILE)
    if max(size) <= tile:
        yield vae
        return
    saved = vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size
    vae.enable_tiling()
    vae.tile_sample_min_size = tile
    vae.tile_latent_min_size = tile // 2 ** (len(vae.config.block_out_channels) - 1)
    try:
        yield vae
    finally:
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = saved
