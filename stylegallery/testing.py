"""Tiny random-weight stand-ins for every model StyleGallery uses, built offline.

The models are written with ``save_pretrained`` so that the normal loading code (``from_pretrained``) reads
them exactly as it reads the real Stable Diffusion 1.5, DINOv2 and Depth Anything checkpoints.  A random network
still separates regions of different colour and texture, which is what the tests rely on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

#: Bump when the layout or configs below change, so cached copies are rebuilt rather than trusted.
TEST_MODEL_VERSION = 7
ARCHITECTURES = ("tiny", "sd15")
RESIDUAL_SCALE = 0.02

_SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def _vocabulary() -> tuple[dict[str, int], list[str]]:
    """A byte-level BPE vocabulary of printable ASCII (each character alone and with the word-end mark)."""
    chars = [chr(c) for c in range(33, 127)]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    return {tok: i for i, tok in enumerate(tokens)}, ["#version: 0.2"]


def _unet_config(arch: str) -> dict:
    if arch == "sd15":
        return dict(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
    # Two levels: self-attention in the encoder and in decoder blocks at two resolutions, so the layer roles of
    # DESIGN.md (feature block, loss layers) exist just as in SD 1.5, with a receptive field small enough that
    # random features still follow the image's regions.
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=1,  # one head: attention at full latent resolution stays cheap on a CPU
        norm_num_groups=8,
    )


def _vae_config(arch: str) -> dict:
    channels = (128, 256, 512, 512) if arch == "sd15" else (16, 16, 32, 32)
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2 if arch == "sd15" else 1,
        norm_num_groups=32 if arch == "sd15" else 8,
        sample_size=512 if arch == "sd15" else 64,
    )


def _damp_residual_branches(model: torch.nn.Module, scale: float) -> None:
    """Shrink the last layer of every residual branch, as SD's own training code zero-initialises them.

    The skip paths then carry the input's colour and texture through the random network instead of the
    noise and border artefacts of a deep random stack.
    """
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(("conv2", "proj_out", "to_out.0", "ff.net.2")):
                for param in module.parameters():
                    param.mul_(scale)


def _build_sd(folder: Path, arch: str) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel(**_unet_config(arch))
    if arch == "tiny":
        _damp_residual_branches(unet, RESIDUAL_SCALE)
    unet.save_pretrained(folder / "unet")

    vae = AutoencoderKL(**_vae_config(arch))
    if arch == "tiny":
        _damp_residual_branches(vae, RESIDUAL_SCALE)
    # Like SD's 0.18215, the scaling factor makes encoded latents roughly unit-variance.
    with torch.no_grad():
        probe = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
        std = vae.encode(probe).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=round(1.0 / max(std, 1e-6), 5))
    vae.save_pretrained(folder / "vae")

    hidden = _unet_config(arch)["cross_attention_dim"]
    vocab, merges = _vocabulary()
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    CLIPTextModel(text_config).save_pretrained(folder / "text_encoder")

    tok_dir = folder / "tokenizer"
    tok_dir.mkdir(parents=True)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77, pad_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(tok_dir)

    DDIMScheduler(**_SD15_SCHEDULER).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def _dinov2_config(image_size: int = 224, **extra):
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=image_size,
        **extra,
    )


def _build_dinov2(folder: Path) -> None:
    from transformers import BitImageProcessor, Dinov2Model

    Dinov2Model(_dinov2_config()).save_pretrained(folder)
    BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        resample=3,
    ).save_pretrained(folder)


def _build_depth(folder: Path) -> None:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

    backbone = _dinov2_config(image_size=518, out_indices=[1, 2], reshape_hidden_states=False)
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        reassemble_factors=[2, 1],
        neck_hidden_sizes=[16, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(
        size={"height": 518, "width": 518},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        do_pad=False,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        resample=3,
    ).save_pretrained(folder)


def make_test_models(folder: str | os.PathLike, arch: str = "tiny", seed: int = 0) -> Path:
    """Build random-weight models into ``folder/sd``, ``folder/dinov2`` and ``folder/depth``.

    ``arch="tiny"`` gives models of a few hundred kilobytes for tests; ``arch="sd15"`` gives the real SD 1.5
    UNet and VAE architecture (random weights, about 3.5 GB) for benchmarks. Existing folders are not touched:
    the models are written to a temporary folder beside ``folder`` and moved into place.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown test-model architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    folder = Path(folder)
    for part in ("sd", "dinov2", "depth"):
        if (folder / part).exists():
            raise FileExistsError(f"{folder / part} already exists; choose an empty folder for the test models")
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder))
    try:
        _build_sd(staging / "sd", arch)
        _build_dinov2(staging / "dinov2")
        _build_depth(staging / "depth")
        (staging / "sd" / "stylegallery_test_model.json").write_text(
            json.dumps({"arch": arch, "version": TEST_MODEL_VERSION, "seed": seed})
        )
        for part in ("sd", "dinov2", "depth"):
            os.replace(staging / part, folder / part)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def cached_test_models(arch: str = "tiny") -> Path:
    """Folder with the test models of ``arch``, built once into the user cache and reused afterwards.

    The cache folder is ``$STYLEGALLERY_CACHE`` (default ``~/.cache/stylegallery``)``/test-models``. A copy
    built by another version of this module, or left incomplete, is rebuilt.
    """
    root = Path(os.environ.get("STYLEGALLERY_CACHE", Path.home() / ".cache" / "stylegallery")) / "test-models"
    target = root / f"{arch}-v{TEST_MODEL_VERSION}"
    marker = target / "sd" / "stylegallery_test_model.json"
    try:
        if json.loads(marker.read_text()).get("version") == TEST_MODEL_VERSION and (target / "depth").is_dir():
            return target
    except (OSError, ValueError):
        pass
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{arch}-", dir=root))
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
    return target
