"""Single-file checkpoints (``.safetensors``, or ``.ckpt`` read with ``weights_only``) in the original Stable Diffusion
layout, read by diffusers' ``from_single_file``: which pipeline reads a file, and its components."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from ..errors import StyleGalleryError, first_line
from .families import BASE_MODELS, SUPPORTED
from ..progress import quiet_loading
from .hub import ModelUnavailable, hub_is_offline, hub_reachable, load_model

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def is_single_file(name: str) -> bool:
    """Whether ``name`` names a single-file checkpoint (``.safetensors`` or ``.ckpt``) rather than a folder or Hub id."""
    return Path(name).suffix.lower() in SINGLE_FILE_SUFFIXES


def checkpoint_keys(path: Path) -> list[str]:
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
        raise ModelUnavailable(f"cannot read the checkpoint {path}: {first_line(exc)} (is it a complete "
                               ".safetensors or .ckpt file?)") from None


def single_file_pipeline(path: Path):
    """The diffusers pipeline class that reads ``path``: SDXL for the SGM layout, SD for the CompVis one."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    keys = checkpoint_keys(path)
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return StableDiffusionXLPipeline
    if any(k.startswith("conditioner.") for k in keys):
        raise StyleGalleryError(f"{path} is an SDXL refiner (one text encoder): StyleGallery supports {SUPPORTED}")
    if any(k.startswith("model.diffusion_model.input_blocks.") for k in keys):
        return StableDiffusionPipeline
    raise StyleGalleryError(f"{path} is not a Stable Diffusion UNet checkpoint in the original single-file layout "
                            f"(no model.diffusion_model.input_blocks weights; a DiT such as SD3 or FLUX?): "
                            f"StyleGallery supports {SUPPORTED}")


def load_single_file(name: str, dtype: torch.dtype, config: str | None):
    """UNet, VAE, DDIM scheduler and [(tokenizer, text encoder)] of a single file; ``config``: the diffusers folder
    or Hub id of its base model (by default diffusers picks SD 1.5, 2.1 768-v or SDXL base from the weights and looks
    up its configs: in the Hub cache, and on the Hub only if it answers)."""
    from diffusers import DDIMScheduler

    path = Path(name).expanduser()
    if not path.is_file():
        raise ModelUnavailable(f"checkpoint file not found: {name}")
    pipeline_class = single_file_pipeline(path)

    def loader(config_source, local_only):
        try:
            pipe = pipeline_class.from_single_file(str(path), config=config_source, torch_dtype=dtype,
                                                   local_files_only=local_only)
        except (KeyError, RuntimeError) as exc:  # a weight missing or of another shape than the configs say
            raise StyleGalleryError(f"the checkpoint {path} does not fit the configs of "
                                    f"{config_source or 'the base model diffusers picked'} ({type(exc).__name__}: "
                                    f"{first_line(exc)}): give the config of its own family and size") from None
        # the text encoders in float32, as from a folder: the empty prompt is encoded once
        encoders = [(pipe.tokenizer, pipe.text_encoder.float())]
        if getattr(pipe, "text_encoder_2", None) is not None:
            encoders.append((pipe.tokenizer_2, pipe.text_encoder_2.float()))
        return pipe.unet, pipe.vae, DDIMScheduler.from_config(pipe.scheduler.config), encoders

    if config is not None:
        return load_model("base", config, loader)
    base = BASE_MODELS["sdxl" if pipeline_class.__name__.startswith("StableDiffusionXL") else "sd1"]
    return _with_looked_up_configs(path, loader, base)


def _with_looked_up_configs(path: Path, loader, base: str):
    """``loader(None, local_only)``: the Hub cache first, the Hub only if it answers; errors say how to give the
    configs instead (``base``: an example)."""
    from diffusers.utils import logging as diffusers_logging

    hint = f"pass config= (--model-config) the diffusers folder or Hub id of its base model, e.g. {base}"
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # not its 'attempting to download' when the Hub is out of reach
    try:
        with warnings.catch_warnings(), quiet_loading():
            warnings.simplefilter("ignore")
            return loader(None, hub_is_offline() or not hub_reachable())
    except StyleGalleryError:
        raise
    except Exception as exc:  # diffusers' single-file loader raises many unrelated types
        raise ModelUnavailable(f"cannot load the checkpoint {path}: {first_line(exc)}; {hint}") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
