"""The StyleGallery pipeline: load models once, then run the stages one by one or in one call."""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import matching as M
from .attention import feature_block_index, install_recorder
from .attention_maps import AttentionMaps, attention_maps
from .cache import TensorCache, cache_key
from .errors import StyleGalleryError
from .fast import SCHEDULERS, FusedLora, Preset, get_preset, optimization_timesteps, read_lora
from .images import check_size, fit_to_size, load_image
from .inversion import aggregate_features, invert, temporal_weights
from .models import (
    DEFAULT_DEPTH_MODEL, DEFAULT_MODEL, DEFAULT_SEMANTIC_MODEL, TEST_MODEL_NAMES, Backbone, ModelUnavailable, _load,
    is_single_file, load_backbone, load_depth, load_semantic, resolve_device, resolve_dtype, test_model_folder,
)
from .metrics import RegionScores, region_scores
from .preview import DEFAULT_TINY_VAE, PREVIEWS, linear_preview, tiny_vae_preview
from .progress import tqdm
from .results import Inversion, Matching, Prepared, Segmentation, Stylization, to_pixels
from .segmentation import segment_features
from .style_loss import (
    REGION_ATTENTION_MODES, content_loss, region_plan, region_style_loss, style_targets, token_labels,
)

STAGES = ("prepare", "invert", "segment", "match", "stylize")


# (lowest allowed value, whether it must be exceeded, whether it must be a whole number); any other number given
# to check_settings need only be finite
_LIMITS = {
    "inversion_steps": (1, False, True), "steps": (1, False, True), "iters": (1, False, True),
    "max_clusters": (2, False, True), "n_components": (1, False, True), "n_init": (1, False, True),
    "silhouette_sample": (2, False, True), "min_region_size": (1, False, True), "min_region_width": (1, False, True),
    "preview_every": (0, False, True), "lr": (0, True, False), "query_scale": (0, True, False),
    "c_ratio": (0, False, False), "merge_threshold": (0, False, False), "depth_span": (0, False, False),
    "depth_merge_threshold": (0, False, False), "depth_difference": (0, False, False),
    "statistical_weight": (0, False, False), "semantic_weight": (0, False, False),
    "geometric_weight": (0, False, False), "block_threshold": (0, False, False), "semantic_size": (14, False, True),
    "seed": (0, False, True), "start_step": (0, False, True),
}


def check_settings(**settings) -> None:
    """Raise :class:`StyleGalleryError` for an impossible value of any setting given (None = not given).

    Every number must be finite (NaN and infinities are refused) and within its setting's range.
    """
    for name, value in settings.items():
        if value is None:
            continue
        if name == "size":
            check_size(value)
            continue
        choices = {"region_attention": REGION_ATTENTION_MODES, "scheduler": SCHEDULERS, "preview": PREVIEWS}.get(name)
        if choices is not None:
            if value not in choices:
                raise StyleGalleryError(f"{name} must be one of {', '.join(choices)} (got {value!r})")
            continue
        low, strict, whole = _LIMITS.get(name, (None, False, False))
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or (whole and not isinstance(value, numbers.Integral)):
            raise StyleGalleryError(f"{name} must be {'a whole number' if whole else 'a number'} (got {value!r})")
        if not math.isfinite(value):
            raise StyleGalleryError(f"{name} must be a finite number (got {value})")
        if low is not None and (value <= low if strict else value < low):
            bound = "positive" if strict and low == 0 else f"{'greater than' if strict else 'at least'} {low}"
            raise StyleGalleryError(f"{name} must be {bound} (got {value})"
                                    + ("; it weighs the content loss" if name == "c_ratio" else "")
                                    + ("; one region cannot be matched" if name == "max_clusters" else ""))


@dataclass
class StepInfo:
    """What :meth:`StyleGallery.stylize` reports to its callback after every optimization step."""

    step: int
    total_steps: int
    timestep: int
    loss: float
    content: float
    style: float
    style_per_region: dict[int, float]
    latent: torch.Tensor
    preview: Image.Image | None = None


@dataclass
class StyleGalleryOutput:
    """Everything one call produced: the image and every stage's result, with seconds per stage."""

    image: Image.Image
    prepared: Prepared
    inversion: Inversion
    segmentation: Segmentation
    matching: Matching
    stylization: Stylization
    timings: dict[str, float] = field(default_factory=dict)


def _spare_core_threads() -> int:
    """Torch's intra-op thread count less one, leaving a core free (at least 1 thread)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores - 1))


def _stage(stage):
    """Run ``stage`` with ``self.cpu_threads`` torch threads on a CPU (torch's own setting is restored after);
    then move models under CPU offload back to the CPU (see ``enable_model_cpu_offload``)."""

    @functools.wraps(stage)
    def run(self, *args, **kwargs):
        threads = torch.get_num_threads()
        if self.device.type == "cpu" and self.cpu_threads and self.cpu_threads != threads:
            torch.set_num_threads(self.cpu_threads)
        try:
            return stage(self, *args, **kwargs)
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            for hook in self._offload_hooks:
                hook.offload()

    return run


class StyleGallery:
    """Training-free, semantic-aware style transfer on a Stable Diffusion backbone.

    Build with :meth:`from_pretrained`; run ``prepare → invert → segment → match → stylize`` one by one (each
    returns a saveable result) or everything at once by calling the object.
    """

    def __init__(self, backbone: Backbone, semantic=None, depth=None, *, cache: TensorCache | None = None):
        self.backbone = backbone
        self.unet, self.vae, self.scheduler = backbone.unet, backbone.vae, backbone.scheduler
        self.device, self.dtype = self.unet.device, self.unet.dtype
        self.semantic_model, self.semantic_processor = semantic or (None, None)
        self.depth_model, self.depth_processor = depth or (None, None)
        self.recorder = install_recorder(self.unet)
        self.default_loss_layers = list(self.recorder.layers)
        self.feature_block = feature_block_index(self.unet)
        self.feature_cache = cache if cache is not None else TensorCache()
        self.inversion_cache = TensorCache(max_bytes=1 << 30, dtype=torch.float32)
        self.test_models = False
        # Torch threads for the stages on a CPU (None: torch's own setting). One core is left free: with a thread
        # on every core, each parallel region waits whenever another process (a browser, a Jupyter server, a test
        # run) takes a core, and stylize steps got 3 to 5 times slower on a 2-core machine.
        self.cpu_threads: int | None = _spare_core_threads()
        self._offload_hooks: list = []
        self.lora: FusedLora | None = None  # see load_lora_weights
        self._lora_preset: str | None = None  # the preset that loaded self.lora, if one did
        self._test_folder = None
        self._tiny_vae = None
        self._last_result_queries = None  # (stylization, (t, model), queries): see _result_queries

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        config: str | None = None,
        semantic_model: str | None | bool = None,
        depth_model: str | None | bool = None,
        device: str = "auto",
        torch_dtype: str | torch.dtype = "auto",
        cache: TensorCache | None = None,
        lora: str | None = None,
        lora_weight_name: str | None = None,
    ) -> "StyleGallery":
        """Load the backbone (Hub id, diffusers folder, or single-file ``.safetensors``/``.ckpt`` checkpoint;
        ``tiny``, ``sd15``, ``tiny-sd2``, ``tiny-sdxl``, ``sdxl`` = random-weight test models).

        ``None`` means the default model. Only the default falls back, with a warning, to the tiny test models
        when it cannot be loaded (no network and no local copy); a model you name never falls back.
        ``semantic_model`` / ``depth_model``: ``False`` switches DINOv2 / Depth Anything off; by default the Hub's,
        or for a ``make-test-model`` folder (``DIR/sd``) its random ones. The family (SD 1.x, 2.x, XL) is read
        from the model's configs (:mod:`stylegallery.families`); other architectures are refused.
        ``lora``: a LoRA (Hub id, folder or file) for stylize, see :meth:`load_lora_weights`.
        ``config``: for a single-file model, the diffusers folder or Hub id with its configs, tokenizers and
        scheduler (by default diffusers picks the base model from the file's weights), see :meth:`from_single_file`.
        """
        device = resolve_device(device)
        dtype = resolve_dtype(torch_dtype, device)
        test_folder = None
        if model in TEST_MODEL_NAMES:
            test_folder = test_model_folder(model)
        elif model is None:
            try:
                backbone = load_backbone(DEFAULT_MODEL, device, dtype, config=config)
            except ModelUnavailable as exc:
                warnings.warn(
                    f"{exc}. Falling back to the tiny random-weight test models: the pictures show the "
                    "mechanics of StyleGallery, not real stylization. Connect to the internet or pass a local "
                    "Stable Diffusion 1.5 folder for real results.",
                    stacklevel=2,
                )
                test_folder = test_model_folder("tiny")
        else:
            backbone = load_backbone(model, device, dtype, config=config)
        if test_folder is not None:
            backbone = load_backbone(str(test_folder / "sd"), device, dtype, config=config)
            backbone.name = model or "tiny"
        folder = config if config is not None else model
        made = folder is not None and (Path(folder) / "stylegallery_test_model.json").is_file()
        siblings = Path(folder).parent if made else test_folder  # a make-test-model folder: its own DINOv2 and depth
        defaults = {"semantic": DEFAULT_SEMANTIC_MODEL, "depth": DEFAULT_DEPTH_MODEL}
        extras = {}
        for kind, name, loader in (("semantic", semantic_model, load_semantic), ("depth", depth_model, load_depth)):
            if name is False:
                extras[kind] = None
            elif name in TEST_MODEL_NAMES:
                extras[kind] = loader(str(test_model_folder(name) / ("dinov2" if kind == "semantic" else kind)), device)
            elif name is None and siblings is not None and (siblings / "dinov2").is_dir():
                extras[kind] = loader(str(siblings / ("dinov2" if kind == "semantic" else kind)), device)
            else:
                extras[kind] = loader(name or defaults[kind], device)
        pipe = cls(backbone, extras["semantic"], extras["depth"], cache=cache)
        pipe.test_models = test_folder is not None or made
        pipe._test_folder = siblings  # the presets of test models use their random LoRA
        if lora is not None:
            pipe.load_lora_weights(lora, weight_name=lora_weight_name)
        return pipe

    @classmethod
    def from_single_file(cls, path: str, *, config: str | None = None, **kwargs) -> "StyleGallery":
        """Load a single-file checkpoint (``.safetensors``, or ``.ckpt`` read with ``weights_only``) in the original
        Stable Diffusion layout, e.g. a fine-tune shared as one file, through diffusers' ``from_single_file``.

        ``config``: a diffusers folder or Hub id of the model it was fine-tuned from (its configs, tokenizers and
        scheduler); needed offline, and for an SD 2.x base (epsilon, 512 px) model, since diffusers otherwise
        picks SD 1.5, SD 2.1 (768-v) or SDXL base from the weights. Other keywords as in :meth:`from_pretrained`.
        """
        if not is_single_file(str(path)):
            raise StyleGalleryError(f"{path} is not a .safetensors or .ckpt file; load folders and Hub ids with "
                                    "from_pretrained")
        return cls.from_pretrained(str(path), config=config, **kwargs)

    # ------------------------------------------------------------------ fast mode
    def load_lora_weights(self, source: str, *, weight_name: str | None = None) -> "StyleGallery":
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
                raise StyleGalleryError(f"cannot read the LoRA file {path}: {str(exc).strip().splitlines()[0]}") from None
        else:
            state = _load("LoRA", str(source), lambda src, local: read_lora(src, weight_name, local))
        self.unload_lora_weights()
        self.lora = FusedLora(self.unet, *state)
        self._lora_preset = None
        return self

    def unload_lora_weights(self) -> "StyleGallery":
        """Remove the LoRA: the UNet is the base model again, bit for bit."""
        if self.lora is not None:
            self.lora.unload()
        self.lora, self._lora_preset = None, None
        return self

    def use_preset(self, name: str) -> dict:
        """Get ready for a preset (``fast`` = ``lcm``, or ``hyper-sd``; see :data:`stylegallery.fast.PRESETS`, and
        ``SDXL_PRESETS`` for an SDXL model)
        and return its stylize settings.

        Loads the preset's LoRA unless a LoRA of your own is loaded (which is kept). With the random-weight
        test models (``tiny``, ``sd15`` or a ``make-test-model`` folder) the preset uses their random LoRA.
        """
        preset = get_preset(name, self.backbone.family)
        if self.lora is None or (self._lora_preset is not None and self._lora_preset != preset.name):
            self._load_preset_lora(preset)
        return preset.settings()

    def _load_preset_lora(self, preset: Preset) -> None:
        if self._test_folder is not None:
            self.load_lora_weights(str(self._test_folder / "lora"))
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

    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> "StyleGallery":
        """Keep the models in CPU memory; each moves to ``device`` when a stage first runs it and back when the
        stage ends (accelerate's offload hooks, as in diffusers' ``enable_model_cpu_offload``).

        Only the models of one stage share the GPU (stylize: the UNet and the VAE), at the cost of moving each
        once per stage. With ``gradient_checkpointing=True`` in :meth:`stylize` this is the low-memory setting.
        """
        from accelerate import cpu_offload_with_hook

        device = torch.device(device)
        for hook in self._offload_hooks:
            hook.remove()
        models = [m for m in (self.unet, self.vae, self.semantic_model, self.depth_model) if m is not None]
        self._offload_hooks = [cpu_offload_with_hook(m, device)[1] for m in models]
        self.device = device
        return self

    # ------------------------------------------------------------------ stage 1a
    @_stage
    @torch.no_grad()
    def prepare(self, content, styles: Sequence, *, size: int | tuple[int, int] = 512, keep_aspect: bool = False) -> Prepared:
        """Read and validate the content image and style references, resize to ``size``, encode with the VAE.

        ``size``: working size, an int or (height, width), multiples of 64 (default 512 as in the paper).
        ``keep_aspect``: scale to cover and centre-crop instead of stretching.
        """
        if isinstance(styles, (str, Image.Image, np.ndarray)) or not hasattr(styles, "__len__"):
            styles = [styles]
        if len(styles) == 0:
            raise StyleGalleryError("no style images given: pass at least one style reference")
        hw = check_size(size)
        loaded = [load_image(content)] + [load_image(s) for s in styles]
        images = [fit_to_size(img, hw, keep_aspect) for img, _, _ in loaded]
        pixels = torch.stack([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img in images])
        scaled = pixels.to(self.device, self.dtype) / 127.5 - 1.0
        latents = [self.vae.encode(x[None]).latent_dist.mean for x in scaled]
        latents = torch.cat(latents).float() * self.vae.config.scaling_factor
        return Prepared([n for _, n, _ in loaded], [h for _, _, h in loaded], pixels, latents.cpu(), self.backbone.fingerprint)

    # ------------------------------------------------------------------ stage 1b
    @_stage
    def invert(self, prepared: Prepared, *, inversion_steps: int = 15, weight_steepness: float = 5.0,
               weight_midpoint: float = 0.7, progress: bool = True) -> Inversion:
        """DDIM inversion of every image with capture of the decoder features at latent resolution.

        ``inversion_steps``: DDIM steps (default 15). Per-step features are averaged with weights
        ``1 / (1 + exp(weight_steepness * (i / n - weight_midpoint)))`` (early steps weigh most).
        Results are cached by image hash, model and settings, so re-running never inverts twice.
        """
        check_settings(inversion_steps=inversion_steps, weight_steepness=weight_steepness,
                       weight_midpoint=weight_midpoint)
        self._check_model(prepared)
        weights = temporal_weights(inversion_steps, weight_steepness, weight_midpoint)
        grid = tuple(prepared.latents.shape[-2:])
        keys = [cache_key(kind="inversion", model=self.backbone.fingerprint, image=h, grid=grid,
                          steps=inversion_steps, weights=weights.tolist()) for h in prepared.hashes]
        self.inversion_cache.start_run()
        found = [self.inversion_cache.get(k) for k in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        timesteps = None
        if missing:
            self._use_lora(False)
            bar = tqdm(total=inversion_steps, desc="invert", disable=not progress, leave=False)
            latents = prepared.latents[missing]
            embedding = self.backbone.embedding.expand(len(missing), -1, -1)
            trajectory, timesteps, per_step = invert(self.unet, self.scheduler, latents, embedding,
                                                     inversion_steps, self.feature_block, bar,
                                                     self._conditions(prepared, len(missing)))
            bar.close()
            features = aggregate_features(per_step, weights, grid)
            for row, i in enumerate(missing):
                found[i] = {"trajectory": trajectory[row], "features": features[row], "timesteps": torch.tensor(timesteps)}
                self.inversion_cache.put(keys[i], found[i])
        timesteps = found[0]["timesteps"].tolist()
        return Inversion(
            torch.stack([e["trajectory"].float() for e in found]),
            torch.stack([e["features"].float() for e in found]),
            timesteps, weights.tolist(),
            {"inversion_steps": inversion_steps, "weight_steepness": weight_steepness, "weight_midpoint": weight_midpoint},
        )

    # ------------------------------------------------------------------ stage 2
    @torch.no_grad()
    def depth_maps(self, prepared: Prepared) -> list[np.ndarray] | None:
        """Normalised (0..1) depth of every image on the latent grid, or None without a depth model."""
        if self.depth_model is None:
            return None
        grid = tuple(prepared.latents.shape[-2:])
        maps = []
        for i in range(len(prepared.names)):
            inputs = self.depth_processor(images=prepared.image(i), return_tensors="pt").to(self.depth_model.device)
            depth = self.depth_model(**inputs).predicted_depth[:, None].float()
            depth = F.interpolate(depth, size=grid, mode="bilinear", align_corners=False)[0, 0]
            depth = (depth - depth.min()) / (depth.max() - depth.min()).clamp_min(1e-8)
            maps.append(depth.cpu().numpy())
        return maps

    @_stage
    def segment(
        self,
        prepared: Prepared,
        inversion: Inversion,
        *,
        max_clusters: int = 10,
        n_clusters: int | Sequence[int | None] | None = None,
        n_components: int = 60,
        n_init: int = 10,
        silhouette_sample: int = 5000,
        merge_threshold: float = 0.85,
        use_depth: bool = True,
        depth_span: float = 0.75,
        depth_merge_threshold: float = 0.35,
        depth_difference: float = 0.3,
        user_masks: dict | None = None,
        min_region_size: int = 20,
        min_region_width: int = 1,
        seed: int = 0,
        progress: bool = True,
    ) -> Segmentation:
        """Cluster every image's diffusion features into regions (DESIGN.md stage 2).

        ``max_clusters``: largest k tried (k = 2..max_clusters, best silhouette wins; default 10).
        ``n_components``, ``n_init``, ``seed``: exact PCA (60 components) and k-means++ with 10 restarts from
        scikit-learn, seeded (the release uses randomized PCA and random starts: a different but equally valid
        clustering; see the README's "Differences from the authors' release").
        ``n_clusters``: force k, for all images (int) or per image (list, None = automatic); no merging or
        thin-strip removal then.
        ``merge_threshold``: link k-means clusters whose mean latents are closer than this (0.85); linked
        clusters merge (connected components, as in the authors' release).
        ``use_depth``: split regions spanning ``depth_span`` of depth, then merge pairs closer than
        ``depth_merge_threshold`` in latent and ``depth_difference`` in depth (needs the depth model).
        ``user_masks``: {image index: (h, w) or (H, W) int array}; each non-zero label becomes a region.
        ``min_region_width``: ours, not in the paper, off by default (1): strips nowhere this many latent pixels
        thick (zero-padding artefacts along boundaries and the frame) go, pixel by pixel, to the nearest region.
        ``min_region_size``: 4-connected specks smaller than this many latent pixels join their neighbours.
        """
        check_settings(max_clusters=max_clusters, n_components=n_components, n_init=n_init,
                       silhouette_sample=silhouette_sample, merge_threshold=merge_threshold, depth_span=depth_span,
                       depth_merge_threshold=depth_merge_threshold, depth_difference=depth_difference,
                       min_region_size=min_region_size, min_region_width=min_region_width, seed=seed)
        count = len(prepared.names)
        forced = list(n_clusters) if isinstance(n_clusters, (list, tuple)) else [n_clusters] * count
        if len(forced) != count:
            raise StyleGalleryError(f"n_clusters has {len(forced)} entries for {count} images")
        for k in forced:
            if k is not None and k < 1:
                raise StyleGalleryError(f"n_clusters must be at least 1 (got {k})")
        depths = self.depth_maps(prepared) if use_depth else None
        grid = tuple(prepared.latents.shape[-2:])
        labels, scores, chosen = [], [], []
        for i in tqdm(range(count), desc="segment", disable=not progress, leave=False):
            mask = None if not user_masks or i not in user_masks else _mask_to_grid(user_masks[i], grid)
            lab, sc, k = segment_features(
                inversion.features[i].numpy(), prepared.latents[i].numpy(),
                max_clusters=max_clusters, n_clusters=forced[i], n_components=n_components, n_init=n_init,
                silhouette_sample=silhouette_sample, merge_threshold=merge_threshold,
                depth=None if depths is None else depths[i], depth_span=depth_span,
                depth_merge_threshold=depth_merge_threshold, depth_difference=depth_difference,
                user_mask=mask, min_region_size=min_region_size, min_region_width=min_region_width, seed=seed,
            )
            labels.append(torch.from_numpy(lab).long())
            scores.append({str(key): value for key, value in sc.items()})
            chosen.append(int(k))
        settings = dict(max_clusters=max_clusters, n_clusters=forced, merge_threshold=merge_threshold,
                        use_depth=depths is not None, min_region_size=min_region_size,
                        min_region_width=min_region_width, seed=seed)
        return Segmentation(torch.stack(labels), scores, chosen, settings)

    # ------------------------------------------------------------------ stage 3
    @torch.no_grad()
    def semantic_tokens(self, prepared: Prepared, semantic_size: int = 224) -> list[torch.Tensor] | None:
        """DINOv2 patch tokens (gh, gw, D) of every image (CLS dropped), or None without the model."""
        if self.semantic_model is None:
            return None
        patch = self.semantic_model.config.patch_size
        h, w = prepared.pixels.shape[-2:]
        side = max(patch, semantic_size // patch * patch)
        size = {"height": side, "width": max(patch, round(side * w / h / patch) * patch)}
        out = []
        for i in range(len(prepared.names)):
            inputs = self.semantic_processor(images=prepared.image(i), do_center_crop=False, size=size, return_tensors="pt")
            hidden = self.semantic_model(pixel_values=inputs.pixel_values.to(self.semantic_model.device)).last_hidden_state
            gh, gw = size["height"] // patch, size["width"] // patch
            out.append(hidden[0, 1 : 1 + gh * gw].reshape(gh, gw, -1).float().cpu())
        return out

    @_stage
    def match(
        self,
        prepared: Prepared,
        inversion: Inversion,
        segmentation: Segmentation,
        *,
        statistical_weight: float = 0.25,
        semantic_weight: float = 1.0,
        geometric_weight: float = 0.125,
        block_threshold: float = 0.01,
        semantic_size: int = 224,
    ) -> Matching:
        """Score every content region against every region of every reference and pick the best per region.

        ``score = statistical_weight * statistical + semantic_weight * semantic + geometric_weight * geometric``
        (0.25, 1.0, 0.125). The statistical part compares each region's true per-channel mean and variance
        of the features (ours: the release passes the features through an untrained random transformer and
        divides the variance of the zero-filled map by the pixel count). ``block_threshold``: share of a DINOv2
        patch block a region must cover for the block's token to count (about 1%). ``semantic_size``: DINOv2
        input height (224 gives a 16x16 grid); DINOv2 sees the whole working image, uncropped, so each block
        lies under its own token (ours: the release centre-crops).
        """
        check_settings(statistical_weight=statistical_weight, semantic_weight=semantic_weight,
                       geometric_weight=geometric_weight, block_threshold=block_threshold, semantic_size=semantic_size)
        labels = segmentation.labels
        stats = [M.region_statistics(inversion.features[i], labels[i]) for i in range(len(labels))]
        circles = [M.enclosing_circles(labels[i]) for i in range(len(labels))]
        tokens = self.semantic_tokens(prepared, semantic_size) if semantic_weight else None
        columns = [[j, s] for j in range(prepared.n_styles) for s in range(segmentation.n_regions(j + 1))]
        stat = torch.cat([M.cosine_matrix(stats[0], stats[j + 1]) for j in range(prepared.n_styles)], 1)
        geo = torch.cat([M.circle_iou(circles[0], circles[j + 1]) for j in range(prepared.n_styles)], 1)
        if tokens is None:
            sem = torch.zeros_like(stat)
        else:
            vec = [M.region_semantics(tokens[i], labels[i], block_threshold) for i in range(len(labels))]
            sem = torch.cat([M.cosine_matrix(vec[0], vec[j + 1]) for j in range(prepared.n_styles)], 1)
        score = statistical_weight * stat + semantic_weight * sem + geometric_weight * geo
        best = score.argmax(1).tolist()
        settings = dict(statistical_weight=statistical_weight, semantic_weight=semantic_weight if tokens is not None else 0.0,
                        geometric_weight=geometric_weight, block_threshold=block_threshold, semantic_size=semantic_size)
        return Matching(score, stat, sem, geo, columns, [list(columns[b]) for b in best], [], settings)

    # ------------------------------------------------------------------ stage 4
    def _attention_features(self, prepared: Prepared, t: int, layers: list[int], precision: torch.dtype):
        """Content queries and style keys/values of the loss layers at timestep ``t``, cached per image."""
        grid = tuple(prepared.latents.shape[-2:])
        roles = ["content"] + ["style"] * prepared.n_styles
        keys = [cache_key(kind="attention", model=self.stylize_model, image=h, grid=grid, t=int(t),
                          layers=layers, role=role, dtype=str(self.dtype), precision=str(precision))
                for h, role in zip(prepared.hashes, roles)]
        entries = [self.feature_cache.get(k, self.device, self.dtype) for k in keys]
        missing = [i for i, e in enumerate(entries) if e is None]
        if missing:
            latents = prepared.latents[missing].to(self.device, self.dtype)
            embedding = self.backbone.embedding.expand(len(missing), -1, -1)
            with torch.no_grad():
                records = self.recorder.run(self.unet, latents, t, embedding, keep=("q", "k", "v"),
                                            added_cond_kwargs=self._conditions(prepared, len(missing)))
            for row, i in enumerate(missing):
                names = ("q",) if roles[i] == "content" else ("k", "v")
                entry = {f"{n}{layer}": records[layer][n][row].to(precision).to(self.dtype) for layer in layers for n in names}
                self.feature_cache.put(keys[i], entry, dtype=precision)
                entries[i] = entry
        content = {layer: entries[0][f"q{layer}"] for layer in layers}
        style_k = {layer: torch.cat([e[f"k{layer}"] for e in entries[1:]], dim=1) for layer in layers}
        style_v = {layer: torch.cat([e[f"v{layer}"] for e in entries[1:]], dim=1) for layer in layers}
        return content, style_k, style_v

    def timesteps(self, steps: int = 150, scheduler: str = "ddim") -> list[int]:
        """The timesteps stylize runs, noisy to clean, for ``steps`` and ``scheduler``."""
        check_settings(steps=steps, scheduler=scheduler)
        return optimization_timesteps(scheduler, self.scheduler, steps)

    def attention_maps(self, prepared: Prepared, segmentation: Segmentation, matching: Matching, points, *,
                       timestep: int | None = None, layer: int | None = None, mode: str = "zeroed",
                       head: int | None = None, query_scale: float = 1.5, stylization: Stylization | None = None,
                       feature_precision: torch.dtype = torch.float16) -> AttentionMaps:
        """Where each content point attends in the references under the style loss's target attention.

        ``points``: (y, x) pixel coordinates of the working image, or content region ids (mean over the
        region). Queries are the clean content's at ``timestep`` (default: the first of a 150-step DDIM run; pass
        one of ``timesteps(steps, scheduler)`` to reuse a run's cached features), scaled by
        ``query_scale``; keys are the references' at ``layer`` (a loss layer, default the first). ``mode``:
        ``"zeroed"``, ``"masked"`` or ``"plain"`` (no region restriction). ``head``: one head, or the mean.
        The features come from the same cache as stylize's, so another point costs no UNet pass.
        ``stylization``: use the queries of that result's latent instead of the clean content's (the loss's target
        takes the current latent's own queries, so this shows where the result's points attended at the end of
        the run); one UNet pass per timestep, kept for the next call.
        """
        check_settings(query_scale=query_scale)
        self._check_model(prepared)
        if len(matching.matches) != segmentation.n_regions(0):
            raise StyleGalleryError("the matching does not belong to this segmentation: run match again")
        layers = list(self.recorder.layers)
        layer = layers[0] if layer is None else layer
        if layer not in layers:
            raise StyleGalleryError(f"layer must be one of the loss layers {layers} (got {layer})")
        t = self.timesteps()[0] if timestep is None else int(timestep)
        if not 0 <= t < self.scheduler.config.num_train_timesteps:
            raise StyleGalleryError(f"timestep must be between 0 and {self.scheduler.config.num_train_timesteps - 1}")
        self._use_lora(True)
        queries, keys, _ = self._attention_features(prepared, t, layers, feature_precision)
        if stylization is not None:
            queries = self._result_queries(prepared, stylization, t)
        return attention_maps(queries[layer].cpu(), keys[layer].cpu(), segmentation.labels[0],
                              list(segmentation.labels[1:]), matching.matches, points,
                              tuple(prepared.pixels.shape[-2:]), mode=mode, head=head, query_scale=query_scale,
                              timestep=t, layer=layer)

    @torch.no_grad()
    def content_loss_regions(self, prepared: Prepared, segmentation: Segmentation, stylization: Stylization, *,
                             timestep: int | None = None,
                             feature_precision: torch.dtype = torch.float16) -> tuple[float, np.ndarray]:
        """Stage 4's content loss of a result, ``sum over loss layers of mean |Q - Q_c|``, for the whole image and
        per content region (the mean over the region's tokens), as (whole, (R,) array; NaN for a region with no
        token at some layer). ``timestep``: default the last one the stylization ran; one UNet pass."""
        self._check_model(prepared)
        layers = sorted(stylization.settings.get("loss_layers") or self.default_loss_layers)
        if timestep is None:
            timestep = self.timesteps(stylization.settings.get("steps", 150),
                                      stylization.settings.get("scheduler", "ddim"))[-1]
        self._use_lora(True)
        q_content, _, _ = self._attention_features(prepared, int(timestep), layers, feature_precision)
        q_result = self._result_queries(prepared, stylization, int(timestep))
        n_regions = segmentation.n_regions(0)
        whole, per_region = 0.0, np.zeros(n_regions)
        for layer in layers:
            gap = (q_result[layer].float() - q_content[layer].float()).abs()  # (heads, N, d)
            whole += float(gap.mean())
            per_token = gap.mean((0, 2)).double().cpu()
            tokens = token_labels(segmentation.labels[0], per_token.shape[0])
            counts = torch.bincount(tokens, minlength=n_regions)[:n_regions].double()
            sums = torch.bincount(tokens, weights=per_token, minlength=n_regions)[:n_regions]
            per_region += (sums / counts).numpy()  # 0 / 0 = NaN for a region without tokens here
        return whole, per_region

    @torch.no_grad()
    def _result_queries(self, prepared: Prepared, stylization: Stylization, t: int) -> dict[int, torch.Tensor]:
        """The loss layers' queries (heads, N, d) of a result's latent at timestep ``t``; the last call's are kept."""
        made_with = stylization.settings.get("model")
        if made_with is not None and made_with != self.stylize_model:
            raise StyleGalleryError("this result was made with another model or LoRA than the one loaded now: load "
                                    "that model again to look inside the result")
        if tuple(stylization.latent.shape[-2:]) != tuple(prepared.latents.shape[-2:]):
            raise StyleGalleryError("this result does not belong to these prepared images (its size differs)")
        last = self._last_result_queries
        if last is None or last[0] is not stylization or last[1] != (t, self.stylize_model):
            self._use_lora(True)
            latent = stylization.latent.reshape(1, *stylization.latent.shape[-3:]).to(self.device, self.dtype)
            records = self.recorder.run(self.unet, latent, t, self.backbone.embedding, keep=("q",),
                                        added_cond_kwargs=self._conditions(prepared, 1))
            last = self._last_result_queries = (stylization, (t, self.stylize_model),
                                                {layer: r["q"][0] for layer, r in records.items()})
        return last[2]

    def region_scores(self, prepared: Prepared, segmentation: Segmentation, matching: Matching,
                      stylization: Stylization, **options) -> RegionScores:
        """:func:`stylegallery.metrics.region_scores` with the content loss per region
        (:meth:`content_loss_regions`) filled in; ``options`` go to ``metrics.region_scores``."""
        content_loss = self.content_loss_regions(prepared, segmentation, stylization)
        return region_scores(prepared, segmentation, matching, stylization, content_loss=content_loss, **options)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """VAE-decode a latent (1, 4, h, w) to uint8 pixels (3, H, W)."""
        decoded = self.vae.decode(latent.to(self.device, self.dtype) / self.vae.config.scaling_factor).sample
        return to_pixels(decoded[0])

    def load_tiny_vae(self, name: str = DEFAULT_TINY_VAE):
        """Load diffusers' ``AutoencoderTiny`` (Hub id or folder) for ``preview="tiny-vae"`` previews."""
        from diffusers import AutoencoderTiny

        model = _load("preview", name, lambda p, local: AutoencoderTiny.from_pretrained(p, local_files_only=local))
        self._tiny_vae = model.requires_grad_(False).eval().to(self.device, self.dtype)
        return self._tiny_vae

    def preview(self, latent: torch.Tensor, kind: str = "linear") -> Image.Image:
        """A picture of a stylize latent: ``linear`` (SD 1.5's fixed latent-to-RGB map, at the latent's
        resolution, next to free), ``tiny-vae`` (``AutoencoderTiny``, loaded on first use) or ``vae`` (a full
        decode, as the final image)."""
        check_settings(preview=kind)
        if kind == "linear":
            return linear_preview(latent)
        if kind == "tiny-vae":
            decoder = self._tiny_vae if self._tiny_vae is not None else self.load_tiny_vae()
            return tiny_vae_preview(decoder, latent, self.vae.config.scaling_factor)
        return Image.fromarray(self.decode(latent).permute(1, 2, 0).numpy())

    @_stage
    def stylize(
        self,
        prepared: Prepared,
        inversion: Inversion,
        segmentation: Segmentation,
        matching: Matching,
        *,
        steps: int = 150,
        iters: int = 1,
        lr: float = 0.05,
        c_ratio: float = 0.26,
        scheduler: str = "ddim",
        query_scale: float = 1.5,
        region_attention: str = "zeroed",
        loss_layers: Sequence[int] | None = None,
        feature_precision: torch.dtype = torch.float16,
        gradient_checkpointing: bool = False,
        init: Stylization | None = None,
        start_step: int | None = None,
        callback: Callable[[StepInfo], bool | None] | None = None,
        preview_every: int = 0,
        preview: str = "linear",
        progress: bool = True,
    ) -> Stylization:
        """Optimize the content's inverted latent under ``style loss + c_ratio * content loss``, then decode.

        ``steps``: timesteps from noisy to clean (150); ``iters``: Adam steps per timestep (1); ``lr``: Adam
        learning rate (0.05); ``c_ratio``: content-loss weight (0.26); ``scheduler``: whose timesteps, ``"ddim"``
        (the paper's), ``"lcm"`` or ``"euler-trailing"`` (for the fast presets, see :meth:`use_preset`);
        ``query_scale``: scale of the current latent's queries in the target attention (1.5);
        ``region_attention``: ``"zeroed"`` (the authors' masking, with which the paper tuned ``c_ratio`` and
        ``lr``; default) or ``"masked"`` (ours: queries attend only inside their matched region);
        ``loss_layers``: self-attention call indices (default: decoder layers at the two highest resolutions);
        ``feature_precision``: dtype the content and reference attention features are rounded to and cached in
        (half precision by default, cached or not, so a re-run gives the same image for any setting).

        The style target of each matched region is the attention of the current latent's own queries (from the
        gradient pass, detached, times ``query_scale``) over the matched style region's keys and values,
        recomputed at every iteration (DESIGN.md stage 4); the clean content's queries feed the content loss only.
        The reported style loss leaves out the rows outside the regions (a constant without gradient that the
        release adds under ``"zeroed"``). A loaded LoRA (:meth:`load_lora_weights`) is fused for this stage.

        Warm re-run (ours): ``init`` = an earlier result of the same images continues from its latent and runs
        only the timesteps from index ``start_step`` on, with a fresh Adam. By default an ``init`` that was
        stopped early resumes where it stopped (same ``steps``, ``iters`` and ``scheduler``), and a finished one
        is refined over the last 30% of the timesteps.

        ``callback(info)`` runs after every step; returning True stops early and keeps the current latent, as
        does a KeyboardInterrupt. ``preview_every``: put a picture of the latent in ``info.preview`` every N steps
        (0 = never), made by ``preview`` (see :meth:`preview`; ``"linear"`` costs next to nothing).
        """
        check_settings(steps=steps, iters=iters, lr=lr, c_ratio=c_ratio, query_scale=query_scale, scheduler=scheduler,
                       region_attention=region_attention, preview_every=preview_every, preview=preview,
                       start_step=start_step)
        self._check_model(prepared)
        layers = sorted(self.default_loss_layers if loss_layers is None else loss_layers)
        labels = segmentation.labels
        n_regions = segmentation.n_regions(0)
        if len(matching.matches) != n_regions:
            raise StyleGalleryError("the matching does not belong to this segmentation: run match again")
        timesteps = optimization_timesteps(scheduler, self.scheduler, steps)
        start = _start_index(init, start_step, prepared, steps, iters, scheduler)
        self._use_lora(True)

        if init is None:
            z_t = inversion.final_latents[:1].to(self.device, torch.float32)
            z = (z_t - z_t.mean(1, keepdim=True)) / (z_t.std(1, keepdim=True) + 1e-8)
        else:
            z = init.latent.to(self.device, torch.float32).clone()
        z.requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=lr)
        self.unet.train(gradient_checkpointing)  # checkpointing in diffusers is active in training mode only
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        plans: dict[int, object] = {}
        self.feature_cache.start_run()
        history: list[dict] = []
        stopped = False
        total = steps * iters
        bar = tqdm(total=total, initial=start * iters, desc="stylize", disable=not progress, leave=False)
        embedding = self.backbone.embedding
        conditions = self._conditions(prepared, 1)
        try:
            step = start * iters
            for t in timesteps[start:]:
                if stopped:
                    break
                q_content, style_k, style_v = self._attention_features(prepared, t, layers, feature_precision)
                for layer in layers:
                    tokens = q_content[layer].shape[1]
                    if tokens not in plans:
                        plans[tokens] = region_plan(labels[0], list(labels[1:]), matching.matches, tokens, self.device)
                for _ in range(iters):
                    records = self.recorder.run(self.unet, z.to(self.dtype), t, embedding, keep=("q", "o"),
                                                added_cond_kwargs=conditions)
                    l_content = sum(content_loss(records[l]["q"][0], q_content[l]) for l in layers)
                    per_region = 0
                    for l in layers:
                        plan = plans[q_content[l].shape[1]]
                        with torch.no_grad():  # the target: this pass's own queries over the matched regions
                            target = style_targets(records[l]["q"][0].detach(), style_k[l], style_v[l], plan,
                                                   region_attention, query_scale)
                        per_region = per_region + region_style_loss(records[l]["o"][0], target, plan, n_regions,
                                                                    region_attention)
                    l_style = per_region.sum()
                    loss = l_style + c_ratio * l_content
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    step += 1
                    bar.update(1)
                    record = dict(step=step, timestep=t, total=loss.item(), content=float(l_content.detach()), style=l_style.item(),
                                  style_per_region={str(r): v for r, v in enumerate(per_region.detach().tolist())})
                    history.append(record)
                    if callback is not None:
                        picture = None
                        if preview_every and (step % preview_every == 0 or step == total):
                            picture = self.preview(z.detach(), preview)
                        info = StepInfo(step, total, t, record["total"], record["content"], record["style"],
                                        {int(k): v for k, v in record["style_per_region"].items()}, z.detach().clone(), picture)
                        if callback(info):
                            stopped = True
                            break
        except KeyboardInterrupt:  # Jupyter's interrupt button acts as Stop: keep the current latent
            stopped = True
        finally:
            bar.close()
            self.unet.eval()
            if gradient_checkpointing:
                self.unet.disable_gradient_checkpointing()
        latent = z.detach()
        settings = dict(steps=steps, iters=iters, lr=lr, c_ratio=c_ratio, scheduler=scheduler, query_scale=query_scale,
                        region_attention=region_attention, loss_layers=layers, start_step=start, warm=init is not None,
                        model=self.stylize_model, lora=None if self.lora is None else self.lora.info.as_dict())
        return Stylization(latent.cpu(), self.decode(latent), history, stopped, settings)

    # ------------------------------------------------------------------ one call
    def __call__(self, content, styles: Sequence, *, preset: str | None = None, **settings) -> StyleGalleryOutput:
        """Run all stages; ``settings`` are the keyword parameters of the stage methods (e.g. ``size``,
        ``max_clusters``, ``c_ratio``, ``steps``). ``preset="fast"`` (or ``"lcm"``, ``"hyper-sd"``) runs the
        release's accelerated variant (:meth:`use_preset`); settings you give override the preset's."""
        if preset is not None:
            settings = {**self.use_preset(preset), **settings}
        by_stage = {}
        for stage in STAGES:
            params = inspect.signature(getattr(self, stage)).parameters
            by_stage[stage] = {k: settings.pop(k) for k in list(settings) if k in params and k != "progress"}
        progress = settings.pop("progress", True)
        if settings:
            raise StyleGalleryError(f"unknown setting(s): {', '.join(sorted(settings))}")
        timings = {}

        def timed(stage, *args):
            start = time.perf_counter()
            kwargs = dict(by_stage[stage], **({"progress": progress} if stage not in ("prepare", "match") else {}))
            result = getattr(self, stage)(*args, **kwargs)
            timings[stage] = time.perf_counter() - start
            return result

        prepared = timed("prepare", content, styles)
        inversion = timed("invert", prepared)
        segmentation = timed("segment", prepared, inversion)
        matching = timed("match", prepared, inversion, segmentation)
        stylization = timed("stylize", prepared, inversion, segmentation, matching)
        return StyleGalleryOutput(stylization.image, prepared, inversion, segmentation, matching, stylization, timings)

    def _conditions(self, prepared: Prepared, batch: int) -> dict | None:
        """The UNet's added conditions (SDXL: pooled embedding, size ids) for ``batch`` images of ``prepared``."""
        return self.backbone.added_conditions(batch, tuple(int(v) for v in prepared.pixels.shape[-2:]))

    def _check_model(self, prepared: Prepared) -> None:
        if prepared.model != self.backbone.fingerprint:
            raise StyleGalleryError("these prepared images were encoded by another model: run prepare again with this one")


#: Share of the timesteps a warm re-run of a finished result runs by default (ours).
REFINE_FRACTION = 0.3


def _start_index(init, start_step, prepared: Prepared, steps: int, iters: int, scheduler: str) -> int:
    """Index of the first timestep stylize runs: 0 for a cold run; for a warm one see ``stylize``."""
    if init is None:
        if start_step:
            raise StyleGalleryError("start_step needs init: pass the earlier Stylization to continue from")
        return 0
    if not isinstance(init, Stylization):
        raise StyleGalleryError(f"init must be an earlier Stylization result (got {type(init).__name__})")
    if tuple(init.latent.shape[-2:]) != tuple(prepared.latents.shape[-2:]):
        raise StyleGalleryError("the earlier result was made at another size: it cannot be refined, start over")
    if start_step is None:
        done = init.history[-1]["step"] if init.history else 0
        same = all(init.settings.get(k) == v for k, v in (("steps", steps), ("iters", iters), ("scheduler", scheduler)))
        if init.stopped_early and same:
            return min(done // iters, steps - 1)
        return steps - max(1, round(steps * REFINE_FRACTION))
    if start_step >= steps:
        raise StyleGalleryError(f"start_step must be below steps ({steps}); got {start_step}")
    return start_step


def _mask_to_grid(mask, grid: tuple[int, int]) -> np.ndarray:
    """A user mask (latent grid or image size, or a PIL image) as an int array on the latent grid."""
    array = np.asarray(mask)
    if array.ndim == 3:
        array = array[..., 0]
    if array.shape != grid:
        resized = Image.fromarray(array.astype(np.int32)).resize((grid[1], grid[0]), Image.Resampling.NEAREST)
        array = np.asarray(resized)
    return array.astype(np.int64)
