"""The StyleGallery pipeline: load models once, then run the stages one by one or in one call.

Each stage method checks its inputs, fetches what is cached, runs the stage's maths (:mod:`stylegallery.stages`) on
the pipeline's models and wraps the outcome in its result (:mod:`stylegallery.results`). The stages' settings,
defaults and checks are declared in :mod:`stylegallery.settings`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .analysis.metrics import RegionScores, region_scores
from .analysis.preview import DEFAULT_TINY_VAE, linear_preview, tiny_vae_preview
from .cache import TensorCache, attention_key, inversion_key
from .errors import StyleGalleryError
from .images import check_size, fit_to_size, load_image, own_size, resized
from .models import encoders
from .models.backbone import Backbone
from .models.devices import DeviceChoice, choose_device, free_memory
from .models.hub import load_model
from .models.lora import FusedLora, LoraLoaderMixin
from .models.sam import automatic_masks, load_sam as load_sam_model
from .models.single_file import is_single_file
from .models.sources import extra_model, load_named_backbone
from .models.vae import decode as vae_decode, encode as vae_encode, tiled, upcast
from .progress import tqdm
from .results import Inversion, Matching, Prepared, Segmentation, Stylization
from .settings import STAGE_SETTINGS, STAGES, Values, check_settings, split_by_stage
from .stages.attention import feature_block_index, install_recorder
from .stages.attention_maps import AttentionMaps, attention_maps
from .stages.colours import keep_colours
from .stages.inversion import aggregate_features, invert, temporal_weights
from .stages.matching import score_matrices
from .stages.segmentation import mask_to_grid, masks_to_labels, segment_base_labels, segment_features
from .stages.style_loss import content_loss_per_region, region_plan
from .stages.stylize import (
    REFINE_FRACTION, StepInfo, normalized_start, optimization_timesteps, optimize_latent, start_index,
    style_transfer_loss,
)
from .stages.windows import (
    WindowedAdam, WindowPlan, output_pixels, refine_memory, window_cells, window_plan, windowed_loss,
)
from .threads import AUTO, check_cpu_threads, stage_ended, stage_threads, torch_threads

__all__ = ["STAGES", "StepInfo", "StyleGallery", "StyleGalleryOutput"]


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


def _stage(name: str):
    """Make a method stage ``name``: its keyword parameters, defaults, checks and the settings part of its docstring
    come from :data:`~stylegallery.settings.STAGE_SETTINGS` (the method receives them resolved, as its last
    argument). On a CPU it runs with the torch threads ``self.cpu_threads`` gives (see
    :func:`stylegallery.threads.stage_threads`; torch's own setting is restored after); then models under CPU
    offload go back to the CPU (see ``enable_model_cpu_offload``)."""
    declared = STAGE_SETTINGS[name]

    def decorate(method):
        inputs = len(declared.signature(method).parameters) - len(list(declared)) - 1  # less self

        @functools.wraps(method)
        def run(self, *args, **given):
            if len(args) != inputs:
                raise TypeError(f"{name}() takes {inputs} positional arguments (the earlier stages' results) and "
                                f"keyword settings; {len(args)} were given")
            settings = declared.resolve(given)
            try:
                with torch_threads(stage_threads(self.cpu_threads) if self.device.type == "cpu" else None):
                    return method(self, *args, settings)
            finally:
                stage_ended()
                for hook in self._offload_hooks:
                    hook.offload()

        run.__signature__ = declared.signature(method)
        run.__doc__ = (method.__doc__ or "") + "\n" + declared.doc()
        return run

    return decorate


class StyleGallery(LoraLoaderMixin):
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
        self.sam_model = self.sam_processor = self.sam_name = None  # see load_sam
        self._sam_labels: dict = {}  # SAM's base labels per picture and SAM setting: see _sam_base_labels
        self.recorder = install_recorder(self.unet)
        self.default_loss_layers = list(self.recorder.layers)
        self.feature_block = feature_block_index(self.unet)
        self.feature_cache = cache if cache is not None else TensorCache()
        self.inversion_cache = TensorCache(max_bytes=1 << 30, dtype=torch.float32)
        self.test_models = False
        self.cpu_threads = AUTO
        self.device_choice = DeviceChoice(self.device, self.dtype, False)  # from_pretrained: what it chose and why
        self.low_memory = False  # True: stylize always checkpoints gradients (see from_pretrained)
        self._offload_hooks: list = []
        self.lora: FusedLora | None = None  # see load_lora_weights
        self._lora_preset: str | None = None  # the preset that loaded self.lora, if one did
        self._companions: Path | None = None  # test models: the folder of their random DINOv2, depth and LoRA
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
        sam_model: str | None | bool = None,
        device: str = "auto",
        torch_dtype: str | torch.dtype = "auto",
        cache: TensorCache | None = None,
        lora: str | None = None,
        lora_weight_name: str | None = None,
        low_memory: bool | str = "auto",
    ) -> "StyleGallery":
        """Load the backbone (Hub id, diffusers folder, or single-file ``.safetensors``/``.ckpt`` checkpoint;
        ``tiny``, ``sd15``, ``tiny-sd2``, ``tiny-sdxl``, ``sdxl`` = random-weight test models).

        ``None`` means the default model. Only the default falls back, with a warning, to the tiny test models
        when it cannot be loaded (no network and no local copy); a model you name never falls back
        (:mod:`stylegallery.models.sources`). ``semantic_model`` / ``depth_model``: ``False`` switches DINOv2 /
        Depth Anything off; by default the Hub's, or for test models their random ones. The family (SD 1.x, 2.x,
        XL) is read from the model's configs (:mod:`stylegallery.models.families`); other architectures are refused.
        ``sam_model``: SAM for ``segment(region_source="sam")`` (the release's ``use_sam``, off by default): ``None`` or
        ``False`` loads none, ``True`` the default (see :meth:`load_sam`), a name or folder that one.
        ``lora``: a LoRA (Hub id, folder or file) for stylize, see :meth:`load_lora_weights`.
        ``config``: for a single-file model, the diffusers folder or Hub id with its configs, tokenizers and
        scheduler (by default diffusers picks the base model from the file's weights), see :meth:`from_single_file`.

        ``device``, ``torch_dtype`` and ``low_memory`` (on: :meth:`enable_model_cpu_offload` on a GPU and gradient
        checkpointing in stylize) are chosen from the device found where they are ``"auto"``: float16 on CUDA, and
        low memory under 16 GiB free (:func:`~stylegallery.models.devices.choose_device`); on a GPU one printed line
        says what was chosen (``pipe.device_choice``).
        """
        chosen = "auto" in (str(device), str(torch_dtype), str(low_memory))
        choice = choose_device(device, torch_dtype, low_memory)
        device = choice.device
        resolved = load_named_backbone(model, config, device, choice.dtype)
        semantic = extra_model("semantic", semantic_model, resolved.companions)
        depth = extra_model("depth", depth_model, resolved.companions)
        pipe = cls(resolved.backbone, None if semantic is None else encoders.load_semantic(semantic, device),
                   None if depth is None else encoders.load_depth(depth, device), cache=cache)
        pipe.test_models = resolved.test_models
        pipe._companions = resolved.companions  # the presets of test models use their random LoRA
        pipe.device_choice, pipe.low_memory = choice, choice.low_memory
        if sam_model is not None and sam_model is not False:
            pipe.load_sam(None if sam_model is True else sam_model)
        if choice.low_memory and device.type != "cpu":
            pipe.enable_model_cpu_offload(device)
        if chosen and device.type != "cpu":
            print(choice)
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

    @property
    def cpu_threads(self) -> int | str | None:
        """Torch threads for the stages on a CPU. ``"auto"`` (the default): every core when OpenMP's threads wait
        passively (stylegallery was imported before torch, or ``OMP_WAIT_POLICY=PASSIVE`` was set), else per stage
        the cores that other processes left free lately; an int: that many; None: torch's own setting."""
        return self._cpu_threads

    @cpu_threads.setter
    def cpu_threads(self, value: int | str | None) -> None:
        check_cpu_threads(value)
        self._cpu_threads = value

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
        if self.sam_model is not None:  # moved by segment itself: see _sam_on_device
            self.sam_model.to("cpu")
        return self

    def load_sam(self, name: str | None = None, *, torch_dtype: torch.dtype = torch.float32):
        """Load SAM (transformers' ``SamModel`` and ``SamProcessor``, a Hub id or folder) for
        ``segment(region_source="sam")``, the release's ``use_sam`` (off by default; its authors call it "simply to
        verify scalability, perhaps not very practical"). ``None``: ``facebook/sam-vit-huge`` (the release prefers
        ViT-H), or for the test models their tiny random SAM. Float32 by default, as the release runs it.
        Returns the model."""
        path = extra_model("sam", name, self._companions)
        model, processor = load_sam_model(path, torch.device("cpu") if self._offload_hooks else self.device,
                                          torch_dtype)
        self.sam_model, self.sam_processor, self.sam_name = model, processor, path
        self._sam_labels.clear()
        return model

    def _require_sam(self) -> None:
        if self.sam_model is None:
            raise StyleGalleryError(
                'region_source="sam" needs SAM: load it with pipe.load_sam() (facebook/sam-vit-huge, or a folder or '
                "Hub id), StyleGallery.from_pretrained(..., sam_model=True), or --sam on the command line")

    @contextlib.contextmanager
    def _sam_on_device(self):
        """SAM on the device while it runs; under CPU offload back to the CPU after (accelerate's hooks watch a
        model's forward, and SAM's image embedding is another method)."""
        if not self._offload_hooks:
            yield
            return
        self.sam_model.to(self.device)
        try:
            yield
        finally:
            self.sam_model.to("cpu")

    # ------------------------------------------------------------------ stage 1a
    @_stage("prepare")
    def prepare(self, content, styles: Sequence, s: Values) -> Prepared:
        """Read and validate the content image and style references, resize them to the working size and encode
        them with the VAE."""
        if isinstance(styles, (str, Image.Image, np.ndarray)) or not hasattr(styles, "__len__"):
            styles = [styles]
        if len(styles) == 0:
            raise StyleGalleryError("no style images given: pass at least one style reference")
        hw = check_size(s.size)
        loaded = [load_image(content)] + [load_image(style) for style in styles]
        images = [fit_to_size(img, hw, s.keep_aspect) for img, _, _ in loaded]
        pixels = torch.stack([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img in images])
        latents = vae_encode(self.vae, pixels, self.device)
        original = own_size(loaded[0][0], hw, s.keep_aspect)
        return Prepared([n for _, n, _ in loaded], [h for _, _, h in loaded], pixels, latents, self.backbone.fingerprint,
                        torch.from_numpy(np.array(original)).permute(2, 0, 1))

    # ------------------------------------------------------------------ stage 1b
    @_stage("invert")
    def invert(self, prepared: Prepared, s: Values) -> Inversion:
        """DDIM inversion of every image with capture of the decoder features at latent resolution.

        Results are cached by image hash, model and settings (:func:`stylegallery.cache.inversion_key`), so
        re-running never inverts twice.
        """
        self._check_model(prepared)
        weights = temporal_weights(s.inversion_steps, s.weight_steepness, s.weight_midpoint)
        grid = tuple(prepared.latents.shape[-2:])
        keys = [inversion_key(self.backbone.fingerprint, h, grid, s.inversion_steps, weights.tolist(), self.dtype,
                              self.vae.dtype)
                for h in prepared.hashes]
        self.inversion_cache.start_run()
        found = [self.inversion_cache.get(k) for k in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        if missing:
            self._use_lora(False)
            bar = tqdm(total=s.inversion_steps, desc="invert", disable=not s.progress, leave=False)
            embedding = self.backbone.embedding.expand(len(missing), -1, -1)
            trajectory, timesteps, per_step = invert(self.unet, self.scheduler, prepared.latents[missing], embedding,
                                                     s.inversion_steps, self.feature_block, bar,
                                                     self._conditions(prepared, len(missing)))
            bar.close()
            features = aggregate_features(per_step, weights, grid)
            for row, i in enumerate(missing):
                found[i] = {"trajectory": trajectory[row], "features": features[row], "timesteps": torch.tensor(timesteps)}
                self.inversion_cache.put(keys[i], found[i])
        return Inversion(
            torch.stack([e["trajectory"].float() for e in found]),
            torch.stack([e["features"].float() for e in found]),
            found[0]["timesteps"].tolist(), weights.tolist(), STAGE_SETTINGS["invert"].record(s),
        )

    # ------------------------------------------------------------------ stage 2
    def depth_maps(self, prepared: Prepared) -> list[np.ndarray] | None:
        """Normalised (0..1) depth of every image on the latent grid, or None without a depth model."""
        if self.depth_model is None:
            return None
        images = [prepared.image(i) for i in range(len(prepared.names))]
        return encoders.depth_maps(self.depth_model, self.depth_processor, images, tuple(prepared.latents.shape[-2:]))

    def sam_masks(self, image, *, points_per_side: int = 16, pred_iou_thresh: float = 0.98,
                  stability_score_thresh: float = 0.95, crop_layers: int = 1) -> list[np.ndarray]:
        """SAM's automatic masks of ``image`` (e.g. ``prepared.image(i)``, or an image file), (H, W) bool arrays at
        its size, best predicted IoU first: what ``segment(region_source="sam")`` paints into base regions
        (:func:`stylegallery.models.sam.automatic_masks`). The defaults are the release's; needs :meth:`load_sam`."""
        self._require_sam()
        check_settings(sam_points_per_side=points_per_side, sam_pred_iou_thresh=pred_iou_thresh,
                       sam_stability_score_thresh=stability_score_thresh, sam_crop_layers=crop_layers)
        if not isinstance(image, Image.Image):
            image = load_image(image)[0]
        with self._sam_on_device():
            return automatic_masks(self.sam_model, self.sam_processor, image, points_per_side=points_per_side,
                                   pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
                                   crop_layers=crop_layers)

    def _sam_base_labels(self, prepared: Prepared, index: int, s: Values) -> np.ndarray:
        """SAM's base labels of image ``index`` on the latent grid (:func:`masks_to_labels`). Kept per picture, SAM
        model and SAM setting (the last 64), so that a change of the merge threshold, the user's mask or the speck
        size does not run SAM again."""
        pixels = prepared.pixels[index]
        grid = tuple(prepared.latents.shape[-2:])
        key = (hashlib.sha256(pixels.numpy().tobytes()).hexdigest(), tuple(pixels.shape), grid, id(self.sam_model),
               s.sam_points_per_side, s.sam_pred_iou_thresh, s.sam_stability_score_thresh, s.sam_crop_layers)
        if key not in self._sam_labels:
            masks = self.sam_masks(prepared.image(index), points_per_side=s.sam_points_per_side,
                                   pred_iou_thresh=s.sam_pred_iou_thresh,
                                   stability_score_thresh=s.sam_stability_score_thresh, crop_layers=s.sam_crop_layers)
            if len(self._sam_labels) >= 64:
                self._sam_labels.pop(next(iter(self._sam_labels)))
            self._sam_labels[key] = masks_to_labels(masks, grid)
        return self._sam_labels[key]

    def _segment_with_sam(self, prepared: Prepared, s: Values) -> Segmentation:
        """``region_source="sam"``: SAM's masks of every image as its base regions (docs/method.md stage 2)."""
        self._require_sam()
        if s.n_clusters is not None:
            raise StyleGalleryError('n_clusters forces the number of k-means clusters; with region_source="sam" the '
                                    "base regions are SAM's masks: leave n_clusters out")
        count, grid = len(prepared.names), tuple(prepared.latents.shape[-2:])
        masks = s.user_masks or {}
        options = {n: s[n] for n in ("sam_merge_threshold", "min_region_width", "min_region_size")}
        labels, chosen = [], []
        for i in tqdm(range(count), desc="segment (SAM)", disable=not s.progress, leave=False):
            lab, _, k = segment_base_labels(self._sam_base_labels(prepared, i, s), prepared.latents[i].numpy(),
                                            user_mask=mask_to_grid(masks[i], grid) if i in masks else None, **options)
            labels.append(torch.from_numpy(lab).long())
            chosen.append(int(k))
        settings = dict(STAGE_SETTINGS["segment"].record(s), n_clusters=[None] * count, use_depth=False)
        return Segmentation(torch.stack(labels), [{} for _ in range(count)], chosen, settings)

    @_stage("segment")
    def segment(self, prepared: Prepared, inversion: Inversion, s: Values) -> Segmentation:
        """Cluster every image's diffusion features into regions (docs/method.md stage 2).

        With ``region_source="sam"`` (the release's ``use_sam``, off by default) SAM's automatic masks of each image
        are its base regions instead of the k-means clusters (:meth:`load_sam` first); the silhouette is then empty and
        the chosen k is the number of SAM's base regions.
        """
        if s.region_source == "sam":
            return self._segment_with_sam(prepared, s)
        count = len(prepared.names)
        forced = list(s.n_clusters) if isinstance(s.n_clusters, (list, tuple)) else [s.n_clusters] * count
        if len(forced) != count:
            raise StyleGalleryError(f"n_clusters has {len(forced)} entries for {count} images")
        depths = self.depth_maps(prepared) if s.use_depth else None
        grid = tuple(prepared.latents.shape[-2:])
        masks = s.user_masks or {}
        clustering = {n: s[n] for n in STAGE_SETTINGS["segment"].recorded if n not in ("n_clusters", "use_depth", "user_masks")}
        labels, scores, chosen = [], [], []
        for i in tqdm(range(count), desc="segment", disable=not s.progress, leave=False):
            lab, sc, k = segment_features(
                inversion.features[i].numpy(), prepared.latents[i].numpy(), n_clusters=forced[i],
                depth=None if depths is None else depths[i],
                user_mask=mask_to_grid(masks[i], grid) if i in masks else None, **clustering)
            labels.append(torch.from_numpy(lab).long())
            scores.append({str(key): value for key, value in sc.items()})
            chosen.append(int(k))
        settings = dict(STAGE_SETTINGS["segment"].record(s), n_clusters=forced, use_depth=depths is not None)
        return Segmentation(torch.stack(labels), scores, chosen, settings)

    # ------------------------------------------------------------------ stage 3
    def semantic_tokens(self, prepared: Prepared, semantic_size: int = 224) -> list[torch.Tensor] | None:
        """DINOv2 patch tokens (gh, gw, D) of every image (CLS dropped), or None without the model."""
        if self.semantic_model is None:
            return None
        images = [prepared.image(i) for i in range(len(prepared.names))]
        return encoders.semantic_tokens(self.semantic_model, self.semantic_processor, images, semantic_size)

    @_stage("match")
    def match(self, prepared: Prepared, inversion: Inversion, segmentation: Segmentation, s: Values) -> Matching:
        """Score every content region against every region of every reference and pick the best per region.

        The statistical part compares each region's true per-channel mean and variance of the features (ours: the
        release passes the features through an untrained random transformer and divides the variance of the
        zero-filled map by the pixel count).
        """
        tokens = self.semantic_tokens(prepared, s.semantic_size) if s.semantic_weight else None
        m = score_matrices(inversion.features, segmentation.labels, tokens, statistical_weight=s.statistical_weight,
                           semantic_weight=s.semantic_weight, geometric_weight=s.geometric_weight,
                           block_threshold=s.block_threshold)
        best = m["score"].argmax(1).tolist()
        settings = dict(STAGE_SETTINGS["match"].record(s), semantic_weight=s.semantic_weight if tokens is not None else 0.0)
        return Matching(m["score"], m["statistical"], m["semantic"], m["geometric"], m["columns"],
                        [list(m["columns"][b]) for b in best], [], settings)

    # ------------------------------------------------------------------ stage 4
    def _attention_features(self, prepared: Prepared, t: int, layers: list[int], precision: torch.dtype):
        """Content queries and style keys/values of the loss layers at timestep ``t``, cached per image."""
        grid = tuple(prepared.latents.shape[-2:])
        roles = ["content"] + ["style"] * prepared.n_styles
        keys = [attention_key(self.stylize_model, h, grid, t, layers, role, self.dtype, self.vae.dtype, precision)
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

    @_stage("stylize")
    def stylize(self, prepared: Prepared, inversion: Inversion, segmentation: Segmentation, matching: Matching,
                s: Values) -> Stylization:
        """Optimize the content's inverted latent under ``style loss + c_ratio * content loss``, then decode.

        The loop is :func:`stylegallery.stages.stylize.optimize_latent`; the energy is
        :func:`~stylegallery.stages.stylize.style_transfer_loss`: the style target of each matched region is the
        attention of the current latent's own queries (from the gradient pass, detached, times ``query_scale``)
        over the matched style region's keys and values, recomputed at every iteration (docs/method.md stage 4); the
        clean content's queries (cached per timestep) feed the content loss only. The reported style loss leaves
        out the rows outside the regions (a constant without gradient that the release adds under ``"zeroed"``).
        A loaded LoRA (:meth:`load_lora_weights`) is fused for this stage.

        Warm re-run (ours): ``init`` continues from an earlier result's latent over the timesteps from index
        ``start_step`` on, with a fresh Adam. ``callback(info)`` gets a :class:`StepInfo` after every step;
        returning True stops early and keeps the current latent, as does a KeyboardInterrupt.
        """
        self._check_model(prepared)
        n_regions = segmentation.n_regions(0)
        if len(matching.matches) != n_regions:
            raise StyleGalleryError("the matching does not belong to this segmentation: run match again")
        working_hw = tuple(prepared.pixels.shape[-2:])
        plan = self._output_plan(working_hw, working_hw if prepared.original is None else prepared.original.shape[-2:], s)
        layers = sorted(self.default_loss_layers if s.loss_layers is None else s.loss_layers)
        timesteps = optimization_timesteps(s.scheduler, self.scheduler, s.steps)
        start = start_index(s.init, s.start_step, tuple(prepared.latents.shape[-2:]), s.steps, s.iters, s.scheduler)
        self._use_lora(True)
        z = (normalized_start(inversion.final_latents[:1].to(self.device)) if s.init is None
             else s.init.latent.to(self.device))
        labels, conditions = segmentation.labels, self._conditions(prepared, 1)
        weights = self._region_weights(s, n_regions)
        loss_at = style_transfer_loss(
            lambda latent, t: self.recorder.run(self.unet, latent.to(self.dtype), t, self.backbone.embedding,
                                                keep=("q", "o"), added_cond_kwargs=conditions),
            lambda t: self._attention_features(prepared, t, layers, s.feature_precision),
            functools.lru_cache(lambda tokens: region_plan(labels[0], list(labels[1:]), matching.matches, tokens,
                                                           self.device)),
            n_regions, c_ratio=s.c_ratio, query_scale=s.query_scale, region_attention=s.region_attention, **weights)
        self.feature_cache.start_run()
        with self._training(s.gradient_checkpointing or self.low_memory):
            run = optimize_latent(z, timesteps, loss_at, lr=s.lr, iters=s.iters, start=start, callback=s.callback,
                                  preview=lambda latent: self.preview(latent, s.preview),
                                  preview_every=s.preview_every, progress=s.progress)
        settings = dict(STAGE_SETTINGS["stylize"].record(s), loss_layers=layers, start_step=start, warm=s.init is not None,
                        model=self.stylize_model, lora=None if self.lora is None else self.lora.info.as_dict())
        pixels = self.decode(run.latent)
        if s.keep_colours:
            pixels = keep_colours(pixels, prepared.pixels[0])
        result = Stylization(run.latent.cpu(), pixels, run.history, run.stopped, settings)
        if plan is None or run.stopped:
            return result
        return self._refine_at_output_size(prepared, segmentation, matching, result, plan, layers, timesteps, s)

    def _region_weights(self, s: Values, n_regions: int) -> dict[str, torch.Tensor | None]:
        """``region_strength`` and ``region_content_weight`` as (n_regions,) weights for the energy (None where
        every region weighs 1: the paper's loss, bit for bit)."""
        out = {}
        for name, key in (("region_strength", "style_weights"), ("region_content_weight", "content_weights")):
            given = s[name] or {}
            outside = sorted(r for r in given if r >= n_regions)
            if outside:
                raise StyleGalleryError(f"{name} names region {outside[0]}, but the content has {n_regions} regions "
                                        f"(0..{n_regions - 1}): see the segmentation's region map")
            weights = torch.ones(n_regions, device=self.device)
            for region, weight in given.items():
                weights[region] = float(weight)
            out[key] = None if bool((weights == 1).all()) else weights
        return out

    @property
    def native_size(self) -> int:
        """The side in pixels the UNet was trained at (its config's ``sample_size`` latents times 8): 512 for SD 1.5
        and SD 2 base, 1024 for SDXL; the default window of ``output_size`` refinements."""
        return int(self.unet.config.sample_size) * 8

    def window_plan(self, size: tuple[int, int], window: int | None = None, window_stride: int | None = None) -> WindowPlan:
        """The windows (and their blend weights) over a result of ``size`` = (H, W) pixels: ``window`` px windows
        (default :attr:`native_size`) every ``window_stride`` px (default 3/4 of the window), the last ones flush
        with the edges. ``stylegallery.plot.windows`` draws them."""
        cells, stride = window_cells(self.native_size if window is None else window, window_stride)
        return window_plan((size[0] // 8, size[1] // 8), cells, stride)

    def _output_plan(self, working_hw, aspect_hw, s: Values) -> WindowPlan | None:
        """The windows of an ``output_size`` refinement, or None without one; a size the device cannot hold is
        refused here, before any work, with the memory it needs and the settings that lower it."""
        if s.output_size is None:
            given = [n for n in ("window", "window_stride", "refine_steps") if s[n] is not None]
            if given:
                raise StyleGalleryError(f"{', '.join(given)} only apply with output_size: set output_size too")
            return None
        height, width = output_pixels(s.output_size, tuple(aspect_hw), tuple(working_hw))
        if s.refine_steps is not None and s.refine_steps > s.steps:
            raise StyleGalleryError(f"refine_steps ({s.refine_steps}) must be at most steps ({s.steps})")
        plan = self.window_plan((height, width), s.window, s.window_stride)
        checkpointing = s.gradient_checkpointing or self.low_memory
        need = refine_memory(plan, self.unet.config.block_out_channels[0], self.dtype.itemsize, checkpointing)
        free = free_memory(self.device)
        if need > free:
            raise StyleGalleryError(
                f"output_size {height}x{width} in windows of {plan.window * 8} px needs about {need / 2**30:.1f} GiB but "
                f"{free / 2**30:.1f} GiB is free on {self.device}: use a smaller window (window=, --window)"
                + ("" if checkpointing else ", gradient_checkpointing=True (--low-memory)")
                + " or a smaller output_size")
        return plan

    def _refine_at_output_size(self, prepared: Prepared, segmentation: Segmentation, matching: Matching,
                               working: Stylization, plan: WindowPlan, layers: list[int], timesteps: list[int],
                               s: Values) -> Stylization:
        """Refine a working-size result at the output size over the last ``refine_steps`` timesteps, under the sum
        of the energy over the plan's windows (docs/method.md, "Beyond the working size").

        The start is the working result upsampled (pixels, bicubic) and encoded; each window's content loss
        compares with the content's own queries in that window (the content at the output size, encoded); its style
        loss targets the references' cached keys and values at the working size; content regions are the working
        labels upsampled (nearest). The VAE tiles above :data:`~stylegallery.models.vae.MIN_TILE`. With one window
        over the working grid this is a warm re-run of the working result over those timesteps.
        """
        size, grid = plan.pixel_size, plan.grid
        working_grid = tuple(prepared.latents.shape[-2:])
        whole = grid == working_grid and len(plan.windows) == 1
        with tiled(self.vae, size):
            if grid == working_grid:
                z, content_latent = working.latent, prepared.latents[:1]
            else:
                original = prepared.pixels[0] if prepared.original is None else prepared.original
                z = vae_encode(self.vae, resized(working.pixels, size)[None], self.device)
                content_latent = vae_encode(self.vae, resized(original, size)[None], self.device)
        labels = torch.nn.functional.interpolate(segmentation.labels[:1, None].float(), size=grid,
                                                 mode="nearest-exact").long()[0, 0]
        style_labels = list(segmentation.labels[1:])
        n_regions = segmentation.n_regions(0)
        embedding = self.backbone.embedding
        weights = self._region_weights(s, n_regions)

        def style_tokens(tokens: int, window) -> int:
            factor = round((window.height * window.width / tokens) ** 0.5)
            return (working_grid[0] // factor) * (working_grid[1] // factor)

        plans = [functools.lru_cache(lambda tokens, w=w: region_plan(
            labels[w.slices], style_labels, matching.matches, tokens, self.device, style_tokens=style_tokens(tokens, w)))
            for w in plan.windows]

        # the working-size features of a timestep, fetched once for all its windows
        working_features = functools.lru_cache(maxsize=1)(
            lambda t: self._attention_features(prepared, t, layers, s.feature_precision))

        def window_loss_at(t: int, i: int):
            window = plan.windows[i]
            conditions = self.backbone.added_conditions(1, (window.height * 8, window.width * 8))

            def features_at(t: int):
                queries, keys, values = working_features(t)
                if not whole:  # the content's own queries in this window, rounded as cached ones are
                    crop = content_latent[(..., *window.slices)].to(self.device, self.dtype)
                    with torch.no_grad():
                        records = self.recorder.run(self.unet, crop, t, embedding, keep=("q",),
                                                    added_cond_kwargs=conditions)
                    queries = {l: records[l]["q"][0].to(s.feature_precision).to(self.dtype) for l in layers}
                return queries, keys, values

            return style_transfer_loss(
                lambda latent, t: self.recorder.run(self.unet, latent.to(self.dtype), t, embedding, keep=("q", "o"),
                                                    added_cond_kwargs=conditions),
                features_at, plans[i], n_regions, c_ratio=s.c_ratio, query_scale=s.query_scale,
                region_attention=s.region_attention, **weights)(t)

        refine = s.steps - (max(1, round(s.steps * REFINE_FRACTION)) if s.refine_steps is None else s.refine_steps)
        bar = tqdm(total=len(plan.windows), desc="windows", disable=not s.progress or len(plan.windows) == 1,
                   leave=False)

        def on_window(i: int) -> None:
            if i == 0:
                bar.reset()
            bar.update(1)
            if s.window_callback is not None:
                s.window_callback(i, len(plan.windows))

        self.feature_cache.start_run()
        try:
            with self._training(s.gradient_checkpointing or self.low_memory):
                adam = WindowedAdam(plan, s.lr)
                run = optimize_latent(z, timesteps, windowed_loss(plan, window_loss_at, adam, on_window), lr=s.lr,
                                      iters=s.iters, start=refine, callback=s.callback,
                                      preview=lambda latent: self.preview(latent, s.preview),
                                      preview_every=s.preview_every, progress=s.progress, phase="output size",
                                      optimizer=adam.attach)
        finally:
            bar.close()
        with tiled(self.vae, size):
            pixels = self.decode(run.latent)
        if s.keep_colours:
            pixels = keep_colours(pixels, resized(prepared.pixels[0] if prepared.original is None else prepared.original,
                                                  size))
        settings = dict(working.settings, output={
            "size": list(size), "windows": len(plan.windows), "window": plan.window * 8, "stride": plan.stride * 8,
            "refine_start_step": refine, "stopped_early": run.stopped})
        return dataclasses.replace(working, settings=settings, output_latent=run.latent.cpu(), output_pixels=pixels,
                                   output_history=run.history)

    @contextlib.contextmanager
    def _training(self, gradient_checkpointing: bool):
        """The UNet in training mode while stylize optimizes, with checkpointing if asked (diffusers checkpoints in
        training mode only); back to evaluation mode after."""
        self.unet.train(gradient_checkpointing)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        try:
            yield
        finally:
            self.unet.eval()
            if gradient_checkpointing:
                self.unet.disable_gradient_checkpointing()

    # ------------------------------------------------------------------ pictures
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """VAE-decode a latent (1, 4, h, w) to uint8 pixels (3, H, W)."""
        return vae_decode(self.vae, latent, self.device)

    def load_tiny_vae(self, name: str = DEFAULT_TINY_VAE):
        """Load diffusers' ``AutoencoderTiny`` (Hub id or folder) for ``preview="tiny-vae"`` previews."""
        from diffusers import AutoencoderTiny

        model = load_model("preview", name, lambda p, local: AutoencoderTiny.from_pretrained(
            p, local_files_only=local, torch_dtype=self.dtype))
        self._tiny_vae = upcast(model.requires_grad_(False).eval().to(self.device), self.dtype)
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

    # ------------------------------------------------------------------ looking inside
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
        per content region (:func:`~stylegallery.stages.style_loss.content_loss_per_region`).
        ``timestep``: default the last one the stylization ran; one UNet pass."""
        self._check_model(prepared)
        layers = sorted(stylization.settings.get("loss_layers") or self.default_loss_layers)
        if timestep is None:
            timestep = self.timesteps(stylization.settings.get("steps", 150),
                                      stylization.settings.get("scheduler", "ddim"))[-1]
        self._use_lora(True)
        q_content, _, _ = self._attention_features(prepared, int(timestep), layers, feature_precision)
        q_result = self._result_queries(prepared, stylization, int(timestep))
        return content_loss_per_region(q_result, q_content, segmentation.labels[0], segmentation.n_regions(0))

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

    # ------------------------------------------------------------------ one call
    def __call__(self, content, styles: Sequence, *, preset: str | None = None, **settings) -> StyleGalleryOutput:
        """Run all stages; ``settings`` are the keyword parameters of the stage methods (e.g. ``size``,
        ``max_clusters``, ``c_ratio``, ``steps``, ``progress``). ``preset="fast"`` (or ``"lcm"``, ``"hyper-sd"``)
        runs the release's accelerated variant (:meth:`use_preset`); settings you give override the preset's."""
        if preset is not None:
            settings = {**self.use_preset(preset), **settings}
        by_stage = split_by_stage(settings)
        if STAGE_SETTINGS["segment"].resolve(by_stage["segment"]).region_source == "sam":
            self._require_sam()  # before any stage runs
        timings = {}

        def timed(stage, *args):
            start = time.perf_counter()
            result = getattr(self, stage)(*args, **by_stage[stage])
            timings[stage] = time.perf_counter() - start
            return result

        self._check_output_size(content, by_stage)
        prepared = timed("prepare", content, styles)
        inversion = timed("invert", prepared)
        segmentation = timed("segment", prepared, inversion)
        matching = timed("match", prepared, inversion, segmentation)
        stylization = timed("stylize", prepared, inversion, segmentation, matching)
        return StyleGalleryOutput(stylization.image, prepared, inversion, segmentation, matching, stylization, timings)

    def _check_output_size(self, content, by_stage: dict) -> None:
        """Before any stage runs: refuse an impossible ``output_size`` (or window settings) for this content."""
        stylize = STAGE_SETTINGS["stylize"].resolve(by_stage["stylize"])
        prepare = STAGE_SETTINGS["prepare"].resolve(by_stage["prepare"])
        working = check_size(prepare.size)
        aspect = working
        if stylize.output_size is not None and not prepare.keep_aspect:
            width, height = load_image(content)[0].size
            aspect = (height, width)
        self._output_plan(working, aspect, stylize)

    def _conditions(self, prepared: Prepared, batch: int) -> dict | None:
        """The UNet's added conditions (SDXL: pooled embedding, size ids) for ``batch`` images of ``prepared``."""
        return self.backbone.added_conditions(batch, tuple(int(v) for v in prepared.pixels.shape[-2:]))

    def _check_model(self, prepared: Prepared) -> None:
        if prepared.model != self.backbone.fingerprint:
            raise StyleGalleryError("these prepared images were encoded by another model: run prepare again with this one")
