"""DINOv2 (semantic tokens for matching) and Depth Anything (depth for segmentation), through transformers, with the
preprocessing StyleGallery gives them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .hub import load_model

DEFAULT_SEMANTIC_MODEL = "facebook/dinov2-base"
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"


def load_semantic(name: str, device: torch.device):
    """DINOv2 model and image processor (float32: it is small and its tokens feed cosine similarities)."""
    from transformers import AutoImageProcessor, AutoModel

    model, processor = load_model("semantic", name, lambda p, local: (
        AutoModel.from_pretrained(p, local_files_only=local), AutoImageProcessor.from_pretrained(p, local_files_only=local)))
    return model.eval().to(device), processor


def load_depth(name: str, device: torch.device):
    """Depth Anything (or any transformers depth-estimation model) and its image processor."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    model, processor = load_model("depth", name, lambda p, local: (
        AutoModelForDepthEstimation.from_pretrained(p, local_files_only=local),
        AutoImageProcessor.from_pretrained(p, local_files_only=local),
    ))
    return model.eval().to(device), processor


@torch.no_grad()
def semantic_tokens(model, processor, images: list[Image.Image], height: int = 224) -> list[torch.Tensor]:
    """DINOv2 patch tokens (gh, gw, D) of each image (CLS dropped), float32 on the CPU.

    Each image is resized whole, uncropped (ours: the release centre-crops), to ``height`` and the width that keeps
    its aspect, both multiples of the patch size, so each patch block lies under its own token.
    """
    patch = model.config.patch_size
    out = []
    for image in images:
        side = max(patch, height // patch * patch)
        size = {"height": side, "width": max(patch, round(side * image.width / image.height / patch) * patch)}
        inputs = processor(images=image, do_center_crop=False, size=size, return_tensors="pt")
        hidden = model(pixel_values=inputs.pixel_values.to(model.device)).last_hidden_state
        gh, gw = size["height"] // patch, size["width"] // patch
        out.append(hidden[0, 1 : 1 + gh * gw].reshape(gh, gw, -1).float().cpu())
    return out


@torch.no_grad()
def depth_maps(model, processor, images: list[Image.Image], grid: tuple[int, int]) -> list[np.ndarray]:
    """Depth of each image resized to ``grid`` = (h, w) and normalised to 0..1."""
    maps = []
    for image in images:
        inputs = processor(images=image, return_tensors="pt").to(model.device)
        depth = model(**inputs).predicted_depth[:, None].float()
        depth = F.interpolate(depth, size=grid, mode="bilinear", align_corners=False)[0, 0]
        depth = (depth - depth.min()) / (depth.max() - depth.min()).clamp_min(1e-8)
        maps.append(depth.cpu().numpy())
    return maps
