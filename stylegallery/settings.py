"""Every stage's settings, declared once: name, default (the paper's), allowed values and meaning.

The stage methods of :class:`~stylegallery.StyleGallery` take their keyword parameters, defaults and the
settings part of their docstrings from :data:`STAGE_SETTINGS`; :func:`check_settings`, ``StyleGallery.__call__``,
:class:`~stylegallery.Session`, ``stylegallery batch`` plans and the explorer's controls read the same table. A
setting marked *runtime* is an option of one run (a progress bar, a callback): it never changes a result, so it is
neither recorded in the result nor kept by a session.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .errors import StyleGalleryError
from .images import check_size

STAGES = ("prepare", "invert", "segment", "match", "stylize")
#: ``region_attention``: the authors' region masking, or ours (queries attend only inside their region).
REGION_ATTENTION_MODES = ("zeroed", "masked")
#: ``scheduler``: whose timesteps stylize visits (the paper's DDIM, or the fast presets' schedulers).
SCHEDULERS = ("ddim", "euler-trailing", "lcm")
#: ``preview``: how a picture of the latent is made during stylize.
PREVIEWS = ("linear", "tiny-vae", "vae")
#: ``region_source``: what the base regions of segment are (the paper's k-means clusters, or SAM's masks).
REGION_SOURCES = ("clusters", "sam")


# ---------------------------------------------------------------------------------------------- checks
def number(low: float | None = None, *, strict: bool = False, whole: bool = False) -> Callable[[str, Any], None]:
    """A check: a finite number (a whole one if ``whole``), at least ``low`` (above it if ``strict``)."""

    def check(name: str, value) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or (whole and not isinstance(value, numbers.Integral)):
            raise StyleGalleryError(f"{name} must be {'a whole number' if whole else 'a number'} (got {value!r})")
        if not math.isfinite(value):
            raise StyleGalleryError(f"{name} must be a finite number (got {value})")
        if low is not None and (value <= low if strict else value < low):
            bound = "positive" if strict and low == 0 else f"{'greater than' if strict else 'at least'} {low}"
            raise StyleGalleryError(f"{name} must be {bound} (got {value})" + _HINTS.get(name, ""))

    return check


def choice(options: tuple[str, ...]) -> Callable[[str, Any], None]:
    """A check: one of ``options``."""

    def check(name: str, value) -> None:
        if value not in options:
            raise StyleGalleryError(f"{name} must be one of {', '.join(options)} (got {value!r})")

    return check


def _fraction(name: str, value) -> None:
    number(0)(name, value)
    if value > 1:
        raise StyleGalleryError(f"{name} must be between 0 and 1 (got {value})")


def flag(name: str, value) -> None:
    """A check: True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise StyleGalleryError(f"{name} must be True or False (got {value!r})")


def _size(name: str, value) -> None:
    check_size(value)


def _output_size(name: str, value) -> None:
    sides = [value] if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if (isinstance(value, (str, bytes, bool)) or not isinstance(sides, (list, tuple)) or len(sides) not in (1, 2)
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 64 for v in sides)):
        raise StyleGalleryError(f"output_size must be the long side in pixels (an int of at least 64) or (height, "
                                f"width) (got {value!r}); it is rounded to multiples of 64")


def _pixels(multiple: int, low: int) -> Callable[[str, Any], None]:
    """A check: a whole number of pixels, at least ``low``, a multiple of ``multiple``."""

    def check(name: str, value) -> None:
        number(low, whole=True)(name, value)
        if value % multiple:
            raise StyleGalleryError(f"{name} must be a multiple of {multiple} pixels (got {value}): the UNet works on "
                                    f"latent pixels of 8 and downsamples them by 8")

    return check


def _forced_k(name: str, value) -> None:
    for k in value if isinstance(value, (list, tuple)) else [value]:
        if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
            raise StyleGalleryError(f"n_clusters must be at least 1, or None for the automatic choice (got {k!r})")


def _masks(name: str, value) -> None:
    if not isinstance(value, Mapping):
        raise StyleGalleryError(f"user_masks must be a dict {{image index: label map}} (got {type(value).__name__})")


def _region_weights(name: str, value) -> None:
    if not isinstance(value, Mapping):
        raise StyleGalleryError(f"{name} must be a dict {{content region: weight}} (got {value!r}), e.g. {{2: 0.3}}; "
                                f"on the command line 2=0.3")
    for region, weight in value.items():
        if isinstance(region, bool) or not isinstance(region, numbers.Integral) or region < 0:
            raise StyleGalleryError(f"{name}: regions are numbered from 0 (got {region!r})")
        number(0)(f"{name}[{region}]", weight)


def region_weights(text: str) -> dict[int, float]:
    """``"2=0.3;0=1.5"`` (or ``,``-separated, as in a plan cell or on the command line) as ``{2: 0.3, 0: 1.5}``."""
    out = {}
    for item in (part.strip() for part in str(text).replace(",", ";").split(";")):
        if not item:
            continue
        region, sep, weight = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[int(region)] = float(weight)
        except ValueError:
            raise StyleGalleryError(f"cannot read {item!r} as REGION=WEIGHT (e.g. 2=0.3)") from None
    return out


def _layers(name: str, value) -> None:
    if isinstance(value, (str, bytes)) or not all(isinstance(i, numbers.Integral) for i in value) or not len(value):
        raise StyleGalleryError(f"loss_layers must be a list of self-attention layer indices (got {value!r})")


def _dtype(name: str, value) -> None:
    if value not in (torch.float16, torch.bfloat16, torch.float32):
        raise StyleGalleryError(f"{name} must be torch.float16, torch.bfloat16 or torch.float32 (got {value!r})")


_HINTS = {"c_ratio": "; it weighs the content loss", "max_clusters": "; one region cannot be matched"}


# ---------------------------------------------------------------------------------------------- declaration
@dataclass(frozen=True)
class Setting:
    """One setting of a stage. ``check`` validates a given value (None means "not given" for settings whose
    default is None); ``runtime``: an option of one run, never recorded in the result."""

    name: str
    default: Any
    annotation: str
    doc: str
    check: Callable[[str, Any], None] | None = None
    runtime: bool = False
    parse: Callable[[str], Any] | None = None  # its value from text (a plan cell, a command-line value)

    def validate(self, value) -> None:
        if self.check is not None and not (value is None and self.default is None):
            self.check(self.name, value)


class Values(Mapping):
    """A stage's resolved settings (every declared one, defaults filled in), read as ``values.name``."""

    def __init__(self, values: dict):
        self._values = dict(values)

    def __getattr__(self, name: str):
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Values({self._values!r})"


class StageSettings:
    """The declared settings of one stage, in order."""

    def __init__(self, stage: str, *settings: Setting):
        self.stage = stage
        self.declared = {s.name: s for s in settings}

    def __iter__(self):
        return iter(self.declared.values())

    def __contains__(self, name) -> bool:
        return name in self.declared

    def __getitem__(self, name: str) -> Setting:
        return self.declared[name]

    @property
    def recorded(self) -> dict[str, Setting]:
        """The settings that change a result (every one but the runtime options)."""
        return {n: s for n, s in self.declared.items() if not s.runtime}

    def resolve(self, given: Mapping) -> Values:
        """Every setting of the stage: the given values, checked, and the defaults for the rest; an unknown name is
        an error."""
        unknown = sorted(set(given) - set(self.declared))
        if unknown:
            raise StyleGalleryError(f"unknown {self.stage} setting(s): {', '.join(unknown)} (the {self.stage} settings "
                                    f"are: {', '.join(self.declared)})")
        for name, value in given.items():
            self.declared[name].validate(value)
        return Values({n: given.get(n, s.default) for n, s in self.declared.items()})

    def record(self, values: Mapping) -> dict:
        """The non-runtime values as plain JSON (what a result keeps in its ``settings``)."""
        return {name: _plain(values[name]) for name in self.recorded}

    def signature(self, function: Callable) -> inspect.Signature:
        """``function``'s positional parameters (its last one, which receives the :class:`Values`, dropped) followed by
        the stage's settings as keyword-only parameters with their defaults."""
        positional = list(inspect.signature(function).parameters.values())[:-1]
        keywords = [inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=s.default, annotation=s.annotation)
                    for s in self]
        return inspect.Signature(positional + keywords)

    def doc(self) -> str:
        """The settings part of a docstring."""
        lines = ["", "Settings (the paper's defaults unless a setting says it is ours):", ""]
        for s in self:
            lines.append(f"- ``{s.name}`` = ``{s.default!r}``{' (option of this run)' if s.runtime else ''}: {s.doc}")
        return "\n".join(lines)


def _plain(value):
    """A setting's value as JSON: dtypes by name, tuples as lists, per-region weights as they are, a user's masks by
    their hashes."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, Mapping) and all(isinstance(v, numbers.Real) for v in value.values()):
        return {str(k): float(v) for k, v in sorted(value.items())}
    if isinstance(value, Mapping):
        return {str(k): hashlib.sha256(np.ascontiguousarray(np.asarray(v)).tobytes()).hexdigest()[:16]
                for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value


_PROGRESS = Setting("progress", True, "bool", "show a progress bar (tqdm.auto)", flag, runtime=True)

#: The settings of every stage (the paper's numbers; ours marked).
STAGE_SETTINGS = {
    "prepare": StageSettings(
        "prepare",
        Setting("size", 512, "int | tuple[int, int]",
                "working size, an int or (height, width), multiples of 64 (512 as in the paper)", _size),
        Setting("keep_aspect", False, "bool", "scale to cover and centre-crop instead of stretching", flag),
    ),
    "invert": StageSettings(
        "invert",
        Setting("inversion_steps", 15, "int", "DDIM inversion steps", number(1, whole=True)),
        Setting("weight_steepness", 5.0, "float",
                "per-step features weigh ``1 / (1 + exp(weight_steepness * (i / n - weight_midpoint)))``", number()),
        Setting("weight_midpoint", 0.7, "float", "see ``weight_steepness``", number()),
        _PROGRESS,
    ),
    "segment": StageSettings(
        "segment",
        Setting("max_clusters", 10, "int", "largest k tried (k = 2..max_clusters, best silhouette wins)",
                number(2, whole=True)),
        Setting("n_clusters", None, "int | list[int | None] | None",
                "force k, for all images (int) or per image (list, None = automatic); no merging or thin-strip "
                "removal then", _forced_k),
        Setting("n_components", 60, "int", "principal components kept of the standardised features",
                number(1, whole=True)),
        Setting("n_init", 10, "int", "k-means++ restarts (scikit-learn, seeded; the release uses random starts)",
                number(1, whole=True)),
        Setting("silhouette_sample", 5000, "int", "most points the silhouette score is computed on",
                number(2, whole=True)),
        Setting("merge_threshold", 0.85, "float",
                "link k-means clusters whose mean latents are closer than this; linked clusters merge (connected "
                "components, as in the authors' release)", number(0)),
        Setting("use_depth", True, "bool", "split regions by depth, then merge again (needs the depth model)", flag),
        Setting("depth_span", 0.75, "float", "a region whose depth spans this much (5th to 95th percentile) is split",
                number(0)),
        Setting("depth_merge_threshold", 0.35, "float", "after the split, merge pairs closer than this in latent",
                number(0)),
        Setting("depth_difference", 0.3, "float", "... and closer than this in mean depth", number(0)),
        Setting("user_masks", None, "dict | None",
                "{image index: (h, w) or (H, W) int array}: each non-zero label becomes a region", _masks),
        Setting("min_region_size", 20, "int", "4-connected specks smaller than this (latent pixels) join a neighbour",
                number(1, whole=True)),
        Setting("min_region_width", 1, "int",
                "ours, off at 1: strips nowhere this many latent pixels thick go to the nearest region",
                number(1, whole=True)),
        Setting("seed", 0, "int", "seed of PCA, k-means and the silhouette sample", number(0, whole=True)),
        Setting("region_source", "clusters", "str",
                "the base regions: clusters (the paper's k-means) or sam (the release's use_sam, off by default and "
                "called by its authors 'simply to verify scalability, perhaps not very practical': SAM's automatic "
                "masks, then only the sam_merge_threshold merge, the user's mask and speck removal; needs "
                "``pipe.load_sam()``)", choice(REGION_SOURCES)),
        Setting("sam_points_per_side", 16, "int", "with sam: SAM's point grid per side (the release's)",
                number(1, whole=True)),
        Setting("sam_pred_iou_thresh", 0.98, "float", "with sam: keep masks whose predicted IoU is above this "
                "(the release's)", _fraction),
        Setting("sam_stability_score_thresh", 0.95, "float", "with sam: keep masks whose stability score is above "
                "this (the release's)", _fraction),
        Setting("sam_crop_layers", 1, "int", "with sam: layers of crops SAM runs on again, 4**i crops in layer i, "
                "with half the points per side each layer (the release's)", number(0, whole=True)),
        Setting("sam_merge_threshold", 0.5, "float", "with sam: merge SAM's regions whose mean latents are closer "
                "than this (connected components, as merge_threshold; the release's)", number(0)),
        _PROGRESS,
    ),
    "match": StageSettings(
        "match",
        Setting("statistical_weight", 0.25, "float", "weight of the statistical similarity in the score", number(0)),
        Setting("semantic_weight", 1.0, "float", "weight of the DINOv2 semantic similarity", number(0)),
        Setting("geometric_weight", 0.125, "float", "weight of the enclosing circles' overlap", number(0)),
        Setting("block_threshold", 0.01, "float",
                "share of a DINOv2 patch block a region must cover for the block's token to count", number(0)),
        Setting("semantic_size", 224, "int",
                "DINOv2 input height (224: a 16x16 grid); DINOv2 sees the whole image, uncropped (ours: the release "
                "centre-crops)", number(14, whole=True)),
    ),
    "stylize": StageSettings(
        "stylize",
        Setting("steps", 150, "int", "timesteps, noisy to clean", number(1, whole=True)),
        Setting("iters", 1, "int", "Adam steps per timestep", number(1, whole=True)),
        Setting("lr", 0.05, "float", "Adam learning rate", number(0, strict=True)),
        Setting("c_ratio", 0.26, "float", "weight of the content loss", number(0)),
        Setting("scheduler", "ddim", "str",
                "whose timesteps: ddim (the paper's), lcm or euler-trailing (the fast presets')", choice(SCHEDULERS)),
        Setting("query_scale", 1.5, "float", "scale of the current latent's queries in the target attention",
                number(0, strict=True)),
        Setting("region_attention", "zeroed", "str",
                "zeroed (the authors' masking, with which the paper tuned c_ratio and lr) or masked (ours: queries "
                "attend only inside their matched region)", choice(REGION_ATTENTION_MODES)),
        Setting("loss_layers", None, "list[int] | None",
                "self-attention call indices of the loss (default: the decoder layers at the two highest resolutions)",
                _layers),
        Setting("feature_precision", torch.float16, "torch.dtype",
                "dtype the content and reference attention features are rounded to and cached in (half precision, "
                "cached or not, so a re-run gives the same image)", _dtype),
        Setting("gradient_checkpointing", False, "bool", "recompute activations in the backward pass: less memory, "
                "slower", flag),
        Setting("output_size", None, "int | tuple[int, int] | None",
                "ours: the result's size, refined in windows at that size after the working-size run: the long side "
                "(the content's own aspect kept) or (height, width), rounded to multiples of 64; None: the working "
                "size", _output_size),
        Setting("window", None, "int | None",
                "ours: with output_size, the windows' side in pixels (a multiple of 64; default the model's native "
                "size: 512 for SD 1.x and 2.x, 1024 for SDXL)", _pixels(64, 64)),
        Setting("window_stride", None, "int | None",
                "ours: pixels from one window to the next (a multiple of 8; default 3/4 of the window, so "
                "neighbours overlap by a quarter)", _pixels(8, 8)),
        Setting("refine_steps", None, "int | None",
                "ours: with output_size, how many of the last timesteps refine at the output size (default 30% of "
                "steps)", number(1, whole=True)),
        Setting("region_strength", None, "dict[int, float] | None",
                "ours: a weight per content region on its style loss (0 keeps the content there, 1 the paper's, above 1 "
                "stronger); regions not named weigh 1", _region_weights, parse=region_weights),
        Setting("region_content_weight", None, "dict[int, float] | None",
                "ours: a weight per content region on its content loss (above 1 holds the content closer there); "
                "regions not named weigh 1", _region_weights, parse=region_weights),
        Setting("keep_colours", False, "bool",
                "ours: the result keeps the content's colours: its lightness with the content's chroma (CIELAB a*, "
                "b*)", flag),
        Setting("init", None, "Stylization | None",
                "ours: an earlier result of the same images to continue from (a warm re-run)", runtime=True),
        Setting("start_step", None, "int | None",
                "with init: index of the first timestep run (default: where a stopped result stopped, else the last "
                "30%)", number(0, whole=True), runtime=True),
        Setting("callback", None, "Callable[[StepInfo], bool] | None",
                "called after every step; returning True stops and keeps the current latent", runtime=True),
        Setting("window_callback", None, "Callable[[int, int], None] | None",
                "ours: with output_size, called after each window of a refinement step with (window index, windows)",
                runtime=True),
        Setting("preview_every", 0, "int", "put a picture of the latent in the callback's StepInfo every N steps "
                "(0: never)", number(0, whole=True), runtime=True),
        Setting("preview", "linear", "str", "how that picture is made: linear (next to free), tiny-vae or vae",
                choice(PREVIEWS), runtime=True),
        _PROGRESS,
    ),
}


def stage_of(name: str) -> str:
    """The stage whose setting ``name`` is (``progress``, an option of several, is the first one's)."""
    for stage, declared in STAGE_SETTINGS.items():
        if name in declared:
            return stage
    raise StyleGalleryError(f"unknown setting {name!r}")


def check_settings(**settings) -> None:
    """Raise :class:`StyleGalleryError` for an impossible value of any setting given (None = not given).

    Every number must be finite (NaN and infinities are refused) and within its setting's range.
    """
    for name, value in settings.items():
        if value is not None:
            STAGE_SETTINGS[stage_of(name)][name].validate(value)


def split_by_stage(settings: Mapping) -> dict[str, dict]:
    """The settings of one whole run, by stage (``progress`` goes to every stage that has it); unknown names are an
    error."""
    unknown = sorted(n for n in settings if not any(n in declared for declared in STAGE_SETTINGS.values()))
    if unknown:
        raise StyleGalleryError(f"unknown setting(s): {', '.join(unknown)}")
    return {stage: {n: v for n, v in settings.items() if n in declared} for stage, declared in STAGE_SETTINGS.items()}
