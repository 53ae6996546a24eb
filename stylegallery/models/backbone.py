"""The Stable Diffusion backbone: UNet, VAE, DDIM scheduler and the empty prompt's embedding, from a Hub id, a
diffusers folder or a single-file checkpoint, of any supported family."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import StyleGalleryError
from .families import added_conditions, check_pipeline_folder, family_of
from .hub import load_model
from .single_file import is_single_file, load_single_file
from .vae import upcast


@dataclass
class Backbone:
    """The Stable Diffusion components StyleGallery uses."""

    unet: object
    vae: object
    scheduler: object
    embedding: torch.Tensor  # empty-prompt text embedding, (1, 77, D)
    name: str
    fingerprint: str
    family: str = "sd1"  # see stylegallery.models.families
    pooled: torch.Tensor | None = None  # SDXL: the empty prompt's pooled embedding, (1, D2)

    def added_conditions(self, batch: int, size: tuple[int, int]) -> dict | None:
        """The UNet's ``added_cond_kwargs`` for ``batch`` images of ``size`` = (H, W) pixels (SDXL; else None)."""
        return added_conditions(self.family, self.pooled, batch, size)


def fingerprint(*modules, name: str = "") -> str:
    """A short hash of the configs and a sample of every weight tensor: changes whenever the weights do."""
    digest = hashlib.sha256(name.encode())
    for module in modules:
        digest.update(json.dumps(dict(module.config), sort_keys=True, default=str).encode())
        for param in module.state_dict().values():
            digest.update(param.flatten()[:8].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_backbone(name: str, device: torch.device, dtype: torch.dtype, config: str | None = None) -> Backbone:
    """Load UNet, VAE, DDIM scheduler and the empty-prompt embedding from a Hub id, a diffusers folder or a
    single-file checkpoint (``.safetensors``/``.ckpt`` in the original layout, read by diffusers'
    ``from_single_file``) of any supported family (:mod:`stylegallery.models.families`; picked from the UNet's
    config).

    ``config``: for a single file, the diffusers folder or Hub id whose configs, tokenizers and scheduler go
    with it; by default diffusers picks the base model (SD 1.5, 2.1 768-v or SDXL base) from the file's weights.
    """
    if is_single_file(name):
        unet, vae, scheduler, encoders = load_single_file(name, dtype, config)
    elif config is not None:
        raise StyleGalleryError(f"a model config ({config}) goes with a single-file checkpoint (.safetensors or "
                                f".ckpt), not with {name}, whose folder has its own configs")
    else:
        if Path(name).is_dir():
            check_pipeline_folder(Path(name))
        unet, vae, scheduler, encoders = load_model("diffusion", name, lambda path, local: _components(path, local, dtype))
    family = family_of(dict(unet.config))
    embedding, pooled = _empty_prompt(encoders, family)
    unet.requires_grad_(False).eval().to(device)
    upcast(vae.requires_grad_(False).eval().to(device), dtype)  # float32 where its config asks
    return Backbone(unet, vae, scheduler, embedding.to(device, dtype), name, fingerprint(unet, vae, name=name), family,
                    None if pooled is None else pooled.to(device, dtype))


def _components(path: str, local_only: bool, dtype: torch.dtype):
    """UNet, VAE, DDIM scheduler and [(tokenizer, text encoder)] of a diffusers folder or Hub id (SDXL: two)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    kw = dict(local_files_only=local_only)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype, **kw)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **kw)
    scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler", **kw)
    encoders = [(CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **kw),
                 CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw))]
    if family_of(dict(unet.config)) == "sdxl":
        encoders.append((CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2", **kw),
                         CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **kw)))
    return unet, vae, scheduler, encoders


@torch.no_grad()
def _empty_prompt(encoders, family: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The empty prompt's embedding (the encoders' states side by side) and, for SDXL, its pooled embedding."""
    from transformers import CLIPTextModelWithProjection

    pooled = None
    states = []
    for tokenizer, encoder in encoders:
        ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        out = encoder(ids, output_hidden_states=True)
        # SDXL reads the penultimate layer of both encoders and the second one's pooled projection
        states.append(out.hidden_states[-2] if family == "sdxl" else out[0])
        if isinstance(encoder, CLIPTextModelWithProjection):
            pooled = out.text_embeds
    return torch.cat(states, dim=-1), pooled
