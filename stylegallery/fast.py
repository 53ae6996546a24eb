"""Fast mode: a step-distilled LoRA (LCM-LoRA, Hyper-SD) fused into the UNet for stylize, and its presets.

As in the authors' ``demo_accelerate.py``, clustering and matching run on the base model; only the
optimization of stage 4 (its feature passes included) runs with the LoRA fused and a few-step scheduler.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass

import torch

from .errors import StyleGalleryError

ADAPTER = "stylegallery"
SCHEDULERS = ("ddim", "euler-trailing", "lcm")


@dataclass(frozen=True)
class Preset:
    """A LoRA with the scheduler and optimization settings tuned for it."""

    name: str
    lora: str  # Hub repo id of the LoRA
    weight_name: str | None  # file inside the repo (None: diffusers' default name)
    scheduler: str
    steps: int
    iters: int
    lr: float
    c_ratio: float

    def settings(self) -> dict:
        """The stylize settings the preset sets."""
        return dict(steps=self.steps, iters=self.iters, lr=self.lr, c_ratio=self.c_ratio, scheduler=self.scheduler)


#: The release's ``demo_accelerate.py`` modes, values as its ``mode_defaults``: ``lcm`` (its default mode:
#: LCM-LoRA fused, ``LCMScheduler``) and ``hyper-sd`` (``Hyper-SD15-4steps-lora`` fused, ``EulerDiscreteScheduler``
#: with trailing timestep spacing); both 28 timesteps x 3 Adam iterations.
PRESETS = {
    "lcm": Preset("lcm", "latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors", "lcm",
                  28, 3, 0.25, 0.33),
    "hyper-sd": Preset("hyper-sd", "ByteDance/Hyper-SD", "Hyper-SD15-4steps-lora.safetensors", "euler-trailing",
                       28, 3, 0.15, 0.38),
}
#: The same modes for SDXL, with the step-distilled LoRAs made for it. The release has no SDXL variant: the
#: settings are its SD 1.5 values, not tuned for SDXL.
SDXL_PRESETS = {
    "lcm": Preset("lcm", "latent-consistency/lcm-lora-sdxl", "pytorch_lora_weights.safetensors", "lcm",
                  28, 3, 0.25, 0.33),
    "hyper-sd": Preset("hyper-sd", "ByteDance/Hyper-SD", "Hyper-SDXL-4steps-lora.safetensors", "euler-trailing",
                       28, 3, 0.15, 0.38),
}
#: ``fast`` is the release's default accelerated mode.
ALIASES = {"fast": "lcm"}
_BY_FAMILY = {"sd1": PRESETS, "sdxl": SDXL_PRESETS}


def get_preset(name: str, family: str = "sd1") -> Preset:
    """The preset called ``name`` (``fast``, ``lcm`` or ``hyper-sd``) for a model of ``family``."""
    table = _BY_FAMILY.get(family)
    if table is None:
        raise StyleGalleryError(f"there is no fast preset for {family} models (only for SD 1.x and SDXL): load a "
                                "step-distilled LoRA made for the model with load_lora_weights or --lora, and choose "
                                "steps, lr and c_ratio yourself")
    preset = table.get(ALIASES.get(name, name))
    if preset is None:
        raise StyleGalleryError(f"unknown preset {name!r}; choose one of {', '.join([*ALIASES, *table])}")
    return preset


def optimization_timesteps(kind: str, base, steps: int) -> list[int]:
    """The ``steps`` timesteps, noisy to clean, of scheduler ``kind`` built from the base scheduler's config."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, LCMScheduler

    if kind not in SCHEDULERS:
        raise StyleGalleryError(f"scheduler must be one of {', '.join(SCHEDULERS)} (got {kind!r})")
    if kind == "ddim":
        scheduler = DDIMScheduler.from_config(base.config)
    elif kind == "euler-trailing":
        scheduler = EulerDiscreteScheduler.from_config(base.config, timestep_spacing="trailing")
    else:
        scheduler = LCMScheduler.from_config(base.config)
        limit = scheduler.config.original_inference_steps
        if steps > limit:
            raise StyleGalleryError(f"the lcm scheduler takes at most {limit} steps (got {steps})")
    scheduler.set_timesteps(steps)
    return [int(round(float(t))) for t in scheduler.timesteps]


@dataclass(frozen=True)
class LoraInfo:
    """Which LoRA is loaded: where from, and a hash of its tensors (part of every stylize cache key)."""

    source: str
    weight_name: str | None
    digest: str

    def as_dict(self) -> dict:
        return asdict(self)


def _digest(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            digest.update(value.detach().float().cpu().numpy().tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()[:16]


class FusedLora:
    """One LoRA loaded into a UNet through diffusers (peft backend), fused while stylize runs.

    :meth:`fuse` keeps a copy of every weight it changes and :meth:`unfuse` puts it back, so the base model
    returns bit for bit (peft's own unmerge subtracts the update again, which rounds).
    """

    def __init__(self, unet, state_dict: dict, network_alphas, metadata, info: LoraInfo):
        from diffusers.loaders import StableDiffusionLoraLoaderMixin

        self.unet, self.info = unet, info
        self.fused = False
        self._saved: dict[str, torch.Tensor] = {}
        quiet = logging.getLogger("diffusers.loaders.peft")  # it logs the error we raise below
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            StableDiffusionLoraLoaderMixin.load_lora_into_unet(
                state_dict, network_alphas, unet=unet, adapter_name=ADAPTER, metadata=metadata)
        except (ValueError, KeyError, RuntimeError) as exc:
            self._remove()
            raise StyleGalleryError(f"the LoRA {info.source!r} does not fit this UNet: {_first_line(exc)}") from None
        finally:
            quiet.setLevel(level)
        if not self._layers():
            self._remove()
            raise StyleGalleryError(f"the LoRA {info.source!r} has no weight for any layer of this UNet")
        unet.disable_lora()

    def _layers(self) -> dict:
        from peft.tuners.tuners_utils import BaseTunerLayer

        return {name: m for name, m in self.unet.named_modules() if isinstance(m, BaseTunerLayer)}

    def fuse(self) -> None:
        """Merge the LoRA into the UNet's weights (the base weights are kept aside for :meth:`unfuse`)."""
        if self.fused:
            return
        layers = self._layers()
        self._saved = {name: m.get_base_layer().weight.detach().to("cpu", copy=True) for name, m in layers.items()}
        self.unet.enable_lora()
        self.unet.fuse_lora(adapter_names=[ADAPTER])
        self.fused = True

    def unfuse(self) -> None:
        """Restore the base weights exactly and switch the LoRA off."""
        if not self.fused:
            return
        self.unet.unfuse_lora()
        with torch.no_grad():
            for name, module in self._layers().items():
                weight = module.get_base_layer().weight
                weight.copy_(self._saved[name].to(weight.device))
        self._saved = {}
        self.unet.disable_lora()
        self.fused = False

    def unload(self) -> None:
        """Unfuse, then take the LoRA layers out of the UNet."""
        self.unfuse()
        self._remove()

    def _remove(self) -> None:
        if self._layers():
            self.unet.unload_lora()


def read_lora(source: str, weight_name: str | None, local_files_only: bool):
    """The LoRA's tensors through diffusers' loader (diffusers, peft and kohya formats), checked to be UNet-only."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    state_dict, alphas, metadata = StableDiffusionLoraLoaderMixin.lora_state_dict(
        source, weight_name=weight_name, local_files_only=local_files_only, return_lora_metadata=True)
    if not state_dict or not all("lora" in k for k in state_dict):
        raise StyleGalleryError(f"{source!r} is not a LoRA checkpoint (its tensor names do not say 'lora')")
    if any(k.startswith("text_encoder") for k in state_dict):
        raise StyleGalleryError(f"the LoRA {source!r} also changes the text encoder; StyleGallery uses a fixed "
                                "empty-prompt embedding and supports UNet LoRAs only (such as LCM-LoRA and Hyper-SD)")
    return state_dict, alphas, metadata, LoraInfo(source, weight_name, _digest(state_dict))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
