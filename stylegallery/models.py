"""Loading the diffusion backbone, DINOv2 and Depth Anything, with device and dtype choices."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import StyleGalleryError
from .families import added_conditions, check_pipeline_folder, family_of

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_SEMANTIC_MODEL = "facebook/dinov2-base"
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
TEST_MODEL_NAMES = ("tiny", "sd15", "tiny-sd2", "tiny-sdxl", "sdxl")  # the random-weight architectures of testing.py

logger = logging.getLogger("stylegallery")


class ModelUnavailable(StyleGalleryError):
    """A model could not be found locally nor loaded from the Hub."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise StyleGalleryError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StyleGalleryError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise StyleGalleryError("device 'mps' was asked for but MPS is not available; use --device cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on CUDA and float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in names:
        raise StyleGalleryError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return names[dtype]


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers within ``timeout`` seconds (through the configured proxies)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
        return True
    except Exception:
        return False


def _load(kind: str, name: str, loader):
    """``loader(path_or_id, local_files_only)`` with clear errors; a Hub id is looked up in the local cache
    first, and the Hub is asked only if it answers within a few seconds (no minute of retries offline)."""
    local = Path(name).expanduser()
    looks_local = local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not local.is_dir():
        raise ModelUnavailable(f"{kind} model folder not found: {name} (give an existing folder or a Hub id)")
    errors = (OSError, ValueError, KeyError, json.JSONDecodeError)
    where = "in the folder" if looks_local else "on the Hugging Face Hub or in the local cache"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if looks_local:
                return loader(str(local), False)
            try:
                return loader(name, True)
            except errors:
                if hub_is_offline():
                    raise
            print(f"stylegallery: no local copy of the {kind} model {name}; asking the Hugging Face Hub...",
                  file=sys.stderr, flush=True)
            if not hub_reachable():
                raise ModelUnavailable(f"cannot load the {kind} model {name!r}: no local copy, and the Hugging Face "
                                       "Hub did not answer within 3 s (no network?)")
            return loader(name, False)
    except ModelUnavailable:
        raise
    except errors as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailable(f"cannot load the {kind} model {name!r} {where}: {first}") from None


@dataclass
class Backbone:
    """The Stable Diffusion components StyleGallery uses."""

    unet: object
    vae: object
    scheduler: object
    embedding: torch.Tensor  # empty-prompt text embedding, (1, 77, D)
    name: str
    fingerprint: str
    family: str = "sd1"  # see stylegallery.families
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


def load_backbone(name: str, device: torch.device, dtype: torch.dtype) -> Backbone:
    """Load UNet, VAE, DDIM scheduler and the empty-prompt embedding from a Hub id or diffusers folder of any
    supported family (:mod:`stylegallery.families`; picked from the UNet's config)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    if Path(name).is_dir():
        check_pipeline_folder(Path(name))

    def loader(path, local_only):
        kw = dict(local_files_only=local_only)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype, **kw)
        family = family_of(dict(unet.config))
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **kw)
        scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler", **kw)
        encoders = [(CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **kw),
                     CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw))]
        if family == "sdxl":
            encoders.append((CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2", **kw),
                             CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **kw)))
        return unet, vae, scheduler, encoders, family

    unet, vae, scheduler, encoders, family = _load("diffusion", name, loader)
    pooled = None
    with torch.no_grad():
        states = []
        for tokenizer, encoder in encoders:
            ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
            out = encoder(ids, output_hidden_states=True)
            # SDXL reads the penultimate layer of both encoders and the second one's pooled projection
            states.append(out.hidden_states[-2] if family == "sdxl" else out[0])
            if isinstance(encoder, CLIPTextModelWithProjection):
                pooled = out.text_embeds
        embedding = torch.cat(states, dim=-1)
    unet.requires_grad_(False).eval().to(device)
    vae.requires_grad_(False).eval().to(device)
    return Backbone(unet, vae, scheduler, embedding.to(device, dtype), name, fingerprint(unet, vae, name=name), family,
                    None if pooled is None else pooled.to(device, dtype))


def load_semantic(name: str, device: torch.device):
    """DINOv2 model and image processor (float32: it is small and its tokens feed cosine similarities)."""
    from transformers import AutoImageProcessor, AutoModel

    model, processor = _load("semantic", name, lambda p, local: (AutoModel.from_pretrained(p, local_files_only=local),
                                                                 AutoImageProcessor.from_pretrained(p, local_files_only=local)))
    return model.eval().to(device), processor


def load_depth(name: str, device: torch.device):
    """Depth Anything (or any transformers depth-estimation model) and its image processor."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    model, processor = _load("depth", name, lambda p, local: (
        AutoModelForDepthEstimation.from_pretrained(p, local_files_only=local),
        AutoImageProcessor.from_pretrained(p, local_files_only=local),
    ))
    return model.eval().to(device), processor


def test_model_folder(name: str) -> Path:
    """Folder of the cached random-weight test models ``name`` (one of ``TEST_MODEL_NAMES``), built on first use."""
    from .testing import cached_test_models

    return cached_test_models(name)


def hub_is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
