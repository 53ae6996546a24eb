"""Keeping the content's colours (ours, off by default): the result's lightness with the content's chroma."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from skimage.color import lab2rgb, rgb2lab


def keep_colours(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (3, H, W): CIELAB L* of ``result`` with a* and b* of ``content`` (same size, uint8 (3, H, W)).

    The style keeps its strokes, textures and light and dark; the hues and their saturation are the photo's. The
    transfer is per pixel, so it needs the two on the same grid (the content is resized by the caller).
    """
    if result.shape != content.shape:
        raise ValueError(f"result {tuple(result.shape)} and content {tuple(content.shape)} must have the same shape")
    lab = rgb2lab(result.permute(1, 2, 0).cpu().numpy())
    lab[..., 1:] = rgb2lab(content.permute(1, 2, 0).cpu().numpy())[..., 1:]
    with warnings.catch_warnings():  # colours outside sRGB are clipped, as intended
        warnings.simplefilter("ignore")
        rgb = np.clip(np.round(lab2rgb(lab) * 255.0), 0, 255).astype(np.uint8)
    return torch.from_numpy(rgb).permute(2, 0, 1)
