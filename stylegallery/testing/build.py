"""Building the random-weight test models offline with ``save_pretrained``, and the cache that keeps them.

The models are written with ``save_pretrained`` so that the normal loading code (``from_pretrained``) reads
them exactly as it reads the real Stable Diffusion 1.5, DINOv2, Depth Anything and SAM checkpoints.  A random network
still separates regions of different colour and texture, which is what the tests rely on.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from pathlib import Path

import torch

from ..progress import quiet_loading
from .configs import (
    SD15_SCHEDULER, TINY_SAM_SIZE, TINY_TEXT, TINY_TEXT_2, dinov2_config, sam_config, unet_config, vae_config,
    vocabulary,
)
from .single_file import save_single_file
from .weights import RESIDUAL_SCALE, brightness_depth, colour_vae, damp_residual_branches, pointwise_unet

#: Bump when the layout or configs below change, so cached copies are rebuilt rather than trusted.
TEST_MODEL_VERSION = 12
#: The random-weight architectures (model names for ``from_pretrained``, ``--model`` and ``make-test-model``).
ARCHITECTURES = ("tiny", "sd15", "tiny-sd2", "tiny-sdxl", "sdxl")
#: The file that marks a folder written by :func:`make_test_models` (in its ``sd/``).
TEST_MODEL_MARKER = "stylegallery_test_model.json"
PARTS = ("sd", "dinov2", "depth", "lora", "sam")


def _build_sd(folder: Path, arch: str) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    unet = UNet2DConditionModel(**unet_config(arch))
    if arch.startswith("tiny"):
        damp_residual_branches(unet, RESIDUAL_SCALE)
        pointwise_unet(unet)
    unet.save_pretrained(folder / "unet")

    vae = AutoencoderKL(**vae_config(arch))
    if arch.startswith("tiny"):
        colour_vae(vae)
    vae.save_pretrained(folder / "vae")

    sdxl = arch in ("tiny-sdxl", "sdxl")
    # SDXL's two encoders: CLIP ViT-L (768) and OpenCLIP bigG (1280) side by side; the tiny model's 32 and 48.
    # The full architectures' text encoders have 2 layers here: only the empty prompt is encoded, once.
    widths = {"tiny-sdxl": (TINY_TEXT, TINY_TEXT_2), "sdxl": (768, 1280)}.get(arch, (unet_config(arch)["cross_attention_dim"],))
    vocab, merges = vocabulary()
    configs = [CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2 if sdxl else 1,  # SDXL reads the penultimate layer
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=hidden,
    ) for hidden in widths]
    CLIPTextModel(configs[0]).save_pretrained(folder / "text_encoder")
    if sdxl:
        CLIPTextModelWithProjection(configs[1]).save_pretrained(folder / "text_encoder_2")

    for tokenizer_name in ("tokenizer", "tokenizer_2") if sdxl else ("tokenizer",):
        tok_dir = folder / tokenizer_name
        tok_dir.mkdir(parents=True)
        (tok_dir / "vocab.json").write_text(json.dumps(vocab))
        (tok_dir / "merges.txt").write_text("\n".join(merges) + "\n")
        tokenizer = CLIPTokenizer(
            str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77, pad_token="<|endoftext|>"
        )
        tokenizer.save_pretrained(tok_dir)

    # SD 2.1 (768-v) predicts v
    scheduler = dict(SD15_SCHEDULER, prediction_type="v_prediction" if arch == "tiny-sd2" else "epsilon")
    DDIMScheduler(**scheduler).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if sdxl:
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"], force_zeros_for_empty_prompt=True)
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def _build_dinov2(folder: Path) -> None:
    from transformers import BitImageProcessor, Dinov2Model

    Dinov2Model(dinov2_config()).save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        resample=3,
    ).save_pretrained(folder)


def _build_depth(folder: Path) -> None:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

    backbone = dinov2_config(image_size=518, out_indices=[1, 2], reshape_hidden_states=False)
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        reassemble_factors=[2, 1],
        neck_hidden_sizes=[16, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    model = DepthAnythingForDepthEstimation(config)
    brightness_depth(model)
    model.save_pretrained(folder)
    DPTImageProcessor(
        size={"height": 518, "width": 518},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        do_pad=False,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        resample=3,
    ).save_pretrained(folder)


def _build_sam(folder: Path) -> None:
    """A tiny random SAM and its processor for ``TINY_SAM_SIZE`` px inputs (masks from a 4x smaller grid, as SAM's)."""
    from transformers import SamImageProcessorPil, SamModel, SamProcessor

    SamModel(sam_config()).save_pretrained(folder)
    low = TINY_SAM_SIZE // 4
    # the PIL image processor needs no torchvision (no dependency of ours); where torchvision is installed,
    # transformers reads the same config as its torchvision processor
    SamProcessor(image_processor=SamImageProcessorPil(
        size={"longest_edge": TINY_SAM_SIZE}, pad_size={"height": TINY_SAM_SIZE, "width": TINY_SAM_SIZE},
        mask_size={"longest_edge": low}, mask_pad_size={"height": low, "width": low},
    )).save_pretrained(folder)


LORA_RANK = 4
LORA_STD = 0.05  # of the update B @ A relative to nothing in particular: enough to change every loss layer


def _build_lora(folder: Path, unet_folder: Path) -> None:
    """A random LoRA for the UNet in ``unet_folder``, in the Kohya format (``lora_unet_*`` names with
    ``lora_down``/``lora_up``/``alpha``) of the LCM-LoRA and Hyper-SD files on the Hub, as ``folder/
    pytorch_lora_weights.safetensors``. It adapts the linear and 1x1 layers of every transformer block."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(unet_folder)
    tensors = {}
    for name, module in unet.named_modules():
        if ".attentions." not in name:
            continue
        if isinstance(module, torch.nn.Linear):
            out_features, in_features = module.out_features, module.in_features
            shape = ()
        elif isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1):
            out_features, in_features = module.out_channels, module.in_channels
            shape = (1, 1)
        else:
            continue
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = torch.randn(LORA_RANK, in_features, *shape) / math.sqrt(in_features)
        tensors[f"{key}.lora_up.weight"] = torch.randn(out_features, LORA_RANK, *shape) * LORA_STD
        tensors[f"{key}.alpha"] = torch.tensor(float(LORA_RANK))
    folder.mkdir(parents=True)
    save_file(tensors, folder / "pytorch_lora_weights.safetensors")


def _new_folder(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder with the permissions of any folder the user makes (not mkdtemp's 0700)."""
    while True:
        folder = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def make_test_models(folder: str | os.PathLike, arch: str = "tiny", seed: int = 0, single_file: bool = False) -> Path:
    """Build random-weight models into ``folder/sd``, ``folder/dinov2``, ``folder/depth``, a LoRA for the UNet into
    ``folder/lora`` and a tiny SAM into ``folder/sam`` (the same for every architecture).

    ``arch="tiny"`` gives models of a few hundred kilobytes for tests; ``"tiny-sd2"`` (v-prediction, linear
    projections) and ``"tiny-sdxl"`` (two text encoders, pooled embedding and size ids, stacked transformer
    layers) the same for the other families. ``"sd15"`` and ``"sdxl"`` give the real UNet and VAE architectures
    (random weights; about 3.5 GB and 10.5 GB; their text encoders have the real widths but 1 or 2 layers, since only
    the empty prompt is encoded) for benchmarks. ``single_file``: also write ``folder/sd.safetensors``, the same
    weights in the original single-file layout (:func:`save_single_file`). Existing folders are not touched:
    the models are written to a temporary folder beside ``folder`` and moved into place.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown test-model architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    folder = Path(folder)
    parts = PARTS + (("sd.safetensors",) if single_file else ())
    for part in parts:
        if (folder / part).exists():
            raise FileExistsError(f"{folder / part} already exists; choose an empty folder for the test models")
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    staging = _new_folder(folder, ".building-")
    try:
        with quiet_loading():  # no "Writing model shards" bar per model, no notice per image processor
            _build_sd(staging / "sd", arch)
            _build_dinov2(staging / "dinov2")
            _build_depth(staging / "depth")
            _build_lora(staging / "lora", staging / "sd" / "unet")
            _build_sam(staging / "sam")  # last: the models above keep the weights they had before SAM was added
            (staging / "sd" / TEST_MODEL_MARKER).write_text(
                json.dumps({"arch": arch, "version": TEST_MODEL_VERSION, "seed": seed})
            )
            if single_file:
                save_single_file(staging / "sd", staging / "sd.safetensors")
        for part in parts:
            os.replace(staging / part, folder / part)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def cached_test_models(arch: str = "tiny") -> Path:
    """Folder with the test models of ``arch``, built once into the user cache and reused afterwards.

    The cache folder is ``$STYLEGALLERY_CACHE`` (default ``~/.cache/stylegallery``)``/test-models``. A copy
    built by another version of this module, or left incomplete, is rebuilt, and the copies of older versions
    (``sd15`` and ``sdxl`` take gigabytes) are removed.
    """
    root = Path(os.environ.get("STYLEGALLERY_CACHE", Path.home() / ".cache" / "stylegallery")) / "test-models"
    target = root / f"{arch}-v{TEST_MODEL_VERSION}"
    marker = target / "sd" / TEST_MODEL_MARKER
    try:
        if json.loads(marker.read_text()).get("version") == TEST_MODEL_VERSION and (target / "sam").is_dir():
            _drop_old_versions(root, arch, target)
            return target
    except (OSError, ValueError):
        pass
    root.mkdir(parents=True, exist_ok=True)
    staging = _new_folder(root, f".{arch}-")
    try:
        make_test_models(staging / "m", arch)
        shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(staging / "m", target)
        except OSError:  # another process finished the same build first
            if not marker.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _drop_old_versions(root, arch, target)
    return target


def _drop_old_versions(root: Path, arch: str, current: Path) -> None:
    for old in root.glob(f"{arch}-v*"):
        if old != current and old.name.removeprefix(f"{arch}-v").isdigit():
            shutil.rmtree(old, ignore_errors=True)
