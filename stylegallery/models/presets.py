"""The fast presets: the release's accelerated variant (``demo_accelerate.py``), a step-distilled LoRA fused for
stylize with the scheduler and optimization settings tuned for it."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import StyleGalleryError


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
