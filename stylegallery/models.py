"""Loading the diffusion backbone, DINOv2 and Depth Anything, with device and dtype choices."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import StyleGalleryError
from .families import SUPPORTED, added_conditions, check_pipeline_folder, family_of

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL_BASE_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
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
    except StyleGalleryError:
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


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def is_single_file(name: str) -> bool:
    """Whether ``name`` names a single-file checkpoint (``.safetensors`` or ``.ckpt``) rather than a folder or Hub id."""
    return Path(name).suffix.lower() in SINGLE_FILE_SUFFIXES


def _checkpoint_keys(path: Path) -> list[str]:
    """The weight names of a single-file checkpoint, read without unpickling code (safetensors, or a ``.ckpt``
    through ``torch.load(weights_only=True)``)."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:
                return list(handle.keys())
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        while isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        return list(state) if isinstance(state, dict) else []
    except pickle.UnpicklingError:
        raise ModelUnavailable(f"cannot read the checkpoint {path} safely: torch.load(weights_only=True) refused "
                               "it (corrupt, or it holds objects whose unpickling could run code); convert it to "
                               ".safetensors where you trust it") from None
    except Exception as exc:  # safetensors, zip and unpickler errors have no common type
        raise ModelUnavailable(f"cannot read the checkpoint {path}: {_first_line(exc)} (is it a complete "
                               ".safetensors or .ckpt file?)") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _single_file_pipeline(path: Path):
    """The diffusers pipeline class that reads ``path``: SDXL for the SGM layout, SD for the CompVis one."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    keys = _checkpoint_keys(path)
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return StableDiffusionXLPipeline
    if any(k.startswith("conditioner.") for k in keys):
        raise StyleGalleryError(f"{path} is an SDXL refiner (one text encoder): StyleGallery supports {SUPPORTED}")
    if any(k.startswith("model.diffusion_model.input_blocks.") for k in keys):
        return StableDiffusionPipeline
    raise StyleGalleryError(f"{path} is not a Stable Diffusion UNet checkpoint in the original single-file layout "
                            f"(no model.diffusion_model.input_blocks weights; a DiT such as SD3 or FLUX?): "
                            f"StyleGallery supports {SUPPORTED}")


def load_backbone(name: str, device: torch.device, dtype: torch.dtype, config: str | None = None) -> Backbone:
    """Load UNet, VAE, DDIM scheduler and the empty-prompt embedding from a Hub id, a diffusers folder or a
    single-file checkpoint (``.safetensors``/``.ckpt`` in the original layout, read by diffusers'
    ``from_single_file``) of any supported family (:mod:`stylegallery.families`; picked from the UNet's config).

    ``config``: for a single file, the diffusers folder or Hub id whose configs, tokenizers and scheduler go
    with it; by default diffusers picks the base model (SD 1.5, 2.1 768-v or SDXL base) from the file's weights.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    single = is_single_file(name)
    if config is not None and not single:
        raise StyleGalleryError(f"a model config ({config}) goes with a single-file checkpoint (.safetensors or "
                                f".ckpt), not with {name}, whose folder has its own configs")
    if single:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"checkpoint file not found: {name}")
        pipeline_class = _single_file_pipeline(path)

        def loader(config_source, local_only):
            try:
                pipe = pipeline_class.from_single_file(str(path), config=config_source, torch_dtype=dtype,
                                                       local_files_only=local_only)
            except (KeyError, RuntimeError) as exc:  # a weight missing or of another shape than the configs say
                raise StyleGalleryError(f"the checkpoint {path} does not fit the configs of "
                                        f"{config_source or 'the base model diffusers picked'} ({type(exc).__name__}: "
                                        f"{_first_line(exc)}): give the config of its own family and size") from None
            # the text encoders in float32, as from a folder: the empty prompt is encoded once
            encoders = [(pipe.tokenizer, pipe.text_encoder.float())]
            if getattr(pipe, "text_encoder_2", None) is not None:
                encoders.append((pipe.tokenizer_2, pipe.text_encoder_2.float()))
            return pipe.unet, pipe.vae, DDIMScheduler.from_config(pipe.scheduler.config), encoders

        if config is None:  # diffusers picks the base model's configs: from the Hub cache, else the Hub
            base = SDXL_BASE_MODEL if pipeline_class.__name__.startswith("StableDiffusionXL") else DEFAULT_MODEL
            unet, vae, scheduler, encoders = _load_single_file(path, loader, base)
        else:
            unet, vae, scheduler, encoders = _load("base", config, loader)
    else:
        if Path(name).is_dir():
            check_pipeline_folder(Path(name))

        def loader(path, local_only):
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

        unet, vae, scheduler, encoders = _load("diffusion", name, loader)
    family = family_of(dict(unet.config))
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


def _load_single_file(path: Path, loader, base: str):
    """``loader(None, local_only)`` for a single file whose configs diffusers looks up: the Hub cache first, the
    Hub only if it answers; errors say how to give the configs instead (``base``: an example)."""
    from diffusers.utils import logging as diffusers_logging

    hint = f"pass config= (--model-config) the diffusers folder or Hub id of its base model, e.g. {base}"
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # not its 'attempting to download' when the Hub is out of reach
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return loader(None, hub_is_offline() or not hub_reachable())
    except StyleGalleryError:
        raise
    except Exception as exc:  # diffusers' single-file loader raises many unrelated types
        raise ModelUnavailable(f"cannot load the checkpoint {path}: {_first_line(exc)}; {hint}") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)


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
