"""Which models a name means: the one place where model names are resolved.

``None`` is the default model (SD 1.5 from the Hub, with DINOv2 and Depth Anything); when it cannot be loaded (no
network and no local copy) it falls back, and says so in one line, to the random-weight test models. The test models' names
(``tiny``, ``sd15``, ``tiny-sd2``, ``tiny-sdxl``, ``sdxl``: :data:`stylegallery.testing.ARCHITECTURES`) mean their
cached folders, built on first use; a folder written by ``stylegallery make-test-model`` brings its own random
DINOv2, depth model, LoRA and SAM beside it. Any other name is a diffusers folder, a Hub id or a single-file checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..testing import ARCHITECTURES, TEST_MODEL_MARKER, cached_test_models
from .backbone import Backbone, load_backbone
from .encoders import DEFAULT_DEPTH_MODEL, DEFAULT_SEMANTIC_MODEL
from .families import BASE_MODELS
from .hub import ModelUnavailable
from .sam import DEFAULT_SAM_MODEL

DEFAULT_MODEL = BASE_MODELS["sd1"]
#: DINOv2, Depth Anything and SAM of a test-model folder, by kind.
_COMPANION_FOLDERS = {"semantic": "dinov2", "depth": "depth", "sam": "sam"}
_DEFAULTS = {"semantic": DEFAULT_SEMANTIC_MODEL, "depth": DEFAULT_DEPTH_MODEL, "sam": DEFAULT_SAM_MODEL}


@dataclass
class Resolved:
    """A loaded backbone; ``companions``: for test models, the folder holding their ``dinov2/``, ``depth/``,
    ``lora/`` and ``sam/`` (else None)."""

    backbone: Backbone
    companions: Path | None

    @property
    def test_models(self) -> bool:
        return self.companions is not None


def is_test_model(name) -> bool:
    """Whether ``name`` is the name of a random-weight test architecture."""
    return name in ARCHITECTURES


def load_named_backbone(model: str | None, config: str | None, device: torch.device, dtype: torch.dtype) -> Resolved:
    """The backbone ``model`` means (see the module's docstring); ``config`` goes with a single-file ``model``."""
    if is_test_model(model):
        return _test_backbone(model, cached_test_models(model), config, device, dtype)
    if model is None:
        try:
            return Resolved(load_backbone(DEFAULT_MODEL, device, dtype, config=config), None)
        except ModelUnavailable as exc:
            print(f"StyleGallery: {str(exc).rstrip('.')}. Using the tiny random-weight test models instead: their "
                  "pictures show how StyleGallery works, not real stylization (connect to the internet, or pass a "
                  "local Stable Diffusion 1.5 folder, for real results).")
            return _test_backbone(None, cached_test_models("tiny"), config, device, dtype)
    backbone = load_backbone(model, device, dtype, config=config)
    folder = Path(config if config is not None else model)
    made = (folder / TEST_MODEL_MARKER).is_file()  # a make-test-model folder: its own DINOv2, depth, LoRA and SAM
    return Resolved(backbone, folder.parent if made else None)


def _test_backbone(name, folder: Path, config, device, dtype) -> Resolved:
    backbone = load_backbone(str(folder / "sd"), device, dtype, config=config)
    backbone.name = name or "tiny"
    return Resolved(backbone, folder)


def extra_model(kind: str, name: str | bool | None, companions: Path | None) -> str | None:
    """The folder or Hub id of the ``"semantic"`` (DINOv2), ``"depth"`` or ``"sam"`` model for ``name``: ``False`` is
    none, a test model's name its folder, ``None`` the test models' own (``companions``) or else the default."""
    if name is False:
        return None
    if is_test_model(name):
        return str(cached_test_models(name) / _COMPANION_FOLDERS[kind])
    if name is None and companions is not None and (companions / _COMPANION_FOLDERS[kind]).is_dir():
        return str(companions / _COMPANION_FOLDERS[kind])
    return name or _DEFAULTS[kind]
