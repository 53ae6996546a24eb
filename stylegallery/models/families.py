"""Stable Diffusion families: which one a model is, read from its configs, and what differs between them.

| family | text conditioning | UNet extras | prediction | trained at |
| --- | --- | --- | --- | --- |
| ``sd1`` (SD 1.x and fine-tunes) | CLIP ViT-L, last hidden state | none | epsilon | 512 px |
| ``sd2`` (SD 2.x) | OpenCLIP ViT-H, last hidden state | none | epsilon (base) or v (768-v) | 512 / 768 px |
| ``sdxl`` | two encoders, their penultimate hidden states side by side | pooled embedding and size ids (``added_cond_kwargs``) | epsilon | 1024 px |

The working size is a setting of ``prepare`` (512 by default for every family, as in the paper); the last column
says where each family sees what it was trained on.

The family is read from the configs, never from a name: an SDXL UNet has ``addition_embed_type="text_time"``;
SD 2.x uses linear projections in its transformers (``use_linear_projection``), SD 1.x does not. The layer
roles (feature block, loss layers) are found from the UNet's structure (:mod:`stylegallery.stages.attention`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import StyleGalleryError

#: The base model of each family on the Hugging Face Hub; SD 1.5 is the paper's and StyleGallery's default.
BASE_MODELS = {"sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5", "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}
SUPPORTED = "Stable Diffusion 1.x, 2.x and XL (text-to-image UNet models, as diffusers folders or single files)"


def family_of(unet_config: dict) -> str:
    """``"sdxl"``, ``"sd2"`` or ``"sd1"`` from a UNet config (see the module's table)."""
    if unet_config.get("in_channels", 4) != 4:
        raise StyleGalleryError(f"a UNet with {unet_config['in_channels']} input channels (an inpainting or "
                                f"image-conditioned model) is not a family StyleGallery supports ({SUPPORTED})")
    if unet_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    if unet_config.get("addition_embed_type") not in (None, ""):
        raise StyleGalleryError(f"a UNet with addition_embed_type={unet_config['addition_embed_type']!r} is not a "
                                f"family StyleGallery supports ({SUPPORTED})")
    return "sd2" if unet_config.get("use_linear_projection") else "sd1"


def check_pipeline_folder(folder: Path) -> None:
    """Refuse, with a clear message, a diffusers folder of another architecture (a DiT such as SD3 or FLUX)."""
    index = folder / "model_index.json"
    if not index.is_file():
        return
    try:
        name = json.loads(index.read_text()).get("_class_name", "")
    except (OSError, ValueError):
        return
    if not (folder / "unet").is_dir():
        kind = " (a diffusion transformer)" if (folder / "transformer").is_dir() else ""
        raise StyleGalleryError(f"{folder} is a {name or 'pipeline'} without a UNet{kind}: StyleGallery supports "
                                f"{SUPPORTED}")


def added_conditions(family: str, pooled: torch.Tensor | None, batch: int, size: tuple[int, int]) -> dict | None:
    """SDXL's ``added_cond_kwargs`` for ``batch`` images of ``size`` = (H, W) pixels: the pooled text embedding and
    the size ids (original size, crop top-left (0, 0), target size); None for the other families."""
    if family != "sdxl":
        return None
    height, width = size
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=pooled.dtype, device=pooled.device)
    return {"text_embeds": pooled.expand(batch, -1), "time_ids": ids.expand(batch, -1)}
