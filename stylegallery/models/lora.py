"""A LoRA (such as the step-distilled LCM-LoRA and Hyper-SD of the fast presets) loaded through diffusers and fused
into the UNet for stylize only.

As in the authors' ``demo_accelerate.py``, clustering and matching run on the base model; only the
optimization of stage 4 (its feature passes included) runs with the LoRA fused.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..cache import cache_key
from ..errors import StyleGalleryError, first_line
from .hub import load_model
from .presets import Preset, get_preset

ADAPTER = "stylegallery"


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
            raise StyleGalleryError(f"the LoRA {info.source!r} does not fit this UNet: {first_line(exc)}") from None
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


class LoraLoaderMixin:
    """Loading a LoRA into a pipeline for stylize, and the fast presets that use one (as diffusers' pipelines get
    ``load_lora_weights`` from a loader mixin). The pipeline has ``unet``, ``backbone``, ``lora``, ``_lora_preset``
    and ``_companions`` (the test models' folder, whose random LoRA stands in for the presets')."""

    def load_lora_weights(self, source: str, *, weight_name: str | None = None) -> "LoraLoaderMixin":
        """Load a LoRA for stylize through diffusers' LoRA loading (peft backend), replacing any loaded one.

        ``source``: Hub id, folder, or ``.safetensors`` file (diffusers, peft or Kohya format; UNet LoRAs such
        as LCM-LoRA and Hyper-SD). As in the release, the LoRA is fused into the UNet for stylize only; the
        inversion, and so clustering and matching, run on the base model. Every stylize cache key includes
        the LoRA's hash. A LoRA that cannot be loaded is an error, never a silent run without it.
        """
        path = Path(str(source)).expanduser()
        if path.is_file():
            try:
                state = read_lora(str(path), None, True)
            except (OSError, ValueError, KeyError) as exc:
                raise StyleGalleryError(f"cannot read the LoRA file {path}: {first_line(exc)}") from None
        else:
            state = load_model("LoRA", str(source), lambda src, local: read_lora(src, weight_name, local))
        self.unload_lora_weights()
        self.lora = FusedLora(self.unet, *state)
        self._lora_preset = None
        return self

    def unload_lora_weights(self) -> "LoraLoaderMixin":
        """Remove the LoRA: the UNet is the base model again, bit for bit."""
        if self.lora is not None:
            self.lora.unload()
        self.lora, self._lora_preset = None, None
        return self

    def use_preset(self, name: str) -> dict:
        """Get ready for a preset (``fast`` = ``lcm``, or ``hyper-sd``; see
        :data:`stylegallery.models.presets.PRESETS`, and ``SDXL_PRESETS`` for an SDXL model) and return its stylize
        settings.

        Loads the preset's LoRA unless a LoRA of your own is loaded (which is kept). With the random-weight
        test models (``tiny``, ``sd15`` or a ``make-test-model`` folder) the preset uses their random LoRA.
        """
        preset = get_preset(name, self.backbone.family)
        if self.lora is None or (self._lora_preset is not None and self._lora_preset != preset.name):
            self._load_preset_lora(preset)
        return preset.settings()

    def _load_preset_lora(self, preset: Preset) -> None:
        if self._companions is not None:
            self.load_lora_weights(str(self._companions / "lora"))
        else:
            self.load_lora_weights(preset.lora, weight_name=preset.weight_name)
        self._lora_preset = preset.name

    @property
    def lora_preset(self) -> str | None:
        """The preset whose LoRA is loaded (``lcm``, ``hyper-sd``), or None (no LoRA, or one of your own)."""
        return self._lora_preset

    @property
    def stylize_model(self) -> str:
        """Fingerprint of the model stylize runs: the backbone's, combined with the LoRA's hash if one is loaded."""
        if self.lora is None:
            return self.backbone.fingerprint
        return cache_key(model=self.backbone.fingerprint, lora=self.lora.info.digest)[:16]

    def _use_lora(self, on: bool) -> None:
        """Fuse the loaded LoRA (stylize) or restore the base UNet (inversion); no-op when already so."""
        if self.lora is not None:
            self.lora.fuse() if on else self.lora.unfuse()
