"""Pictures as arrays, shared by the figures (:mod:`.plot`), the metrics, the batch gallery and the widgets: region
colours and overlays, label maps at image size, region outlines and attention heat maps. NumPy only (matplotlib's
colour maps aside); no figure is made here."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib import colormaps

from ..images import rgb_array

#: The colour of a matched style region's outline over a heat map.
OUTLINE_GREEN = np.array([60, 255, 60], dtype=np.uint8)


def to_numpy(x) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu").numpy()
    return np.asarray(x)


def upsample_labels(labels, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) label map resized to ``size`` = (H, W) with nearest neighbour."""
    labels = to_numpy(labels).astype(np.int64)
    if labels.ndim != 2:
        raise ValueError(f"expected a (h, w) label map, got shape {labels.shape}")
    h, w = labels.shape
    rows = np.minimum((np.arange(size[0]) * h) // size[0], h - 1)
    cols = np.minimum((np.arange(size[1]) * w) // size[1], w - 1)
    return labels[rows[:, None], cols[None, :]]


def image_names(names: Sequence[str]) -> list[str]:
    """Short names for the images of ``Prepared.names`` (content first): each file name without its extension and
    a leading ``content_``, ``style_`` or ``teach_`` (``style_brick.jpg`` -> ``brick``); ``content`` and ``style 1``,
    ... for images given in memory."""
    short = []
    for index, name in enumerate(names):
        stem = "" if name in ("", "image") else name.rsplit(".", 1)[0]
        for prefix in ("content_", "style_", "teach_"):
            stem = stem.removeprefix(prefix)
        short.append(stem or ("content" if index == 0 else f"style {index}"))
    return short


def region_palette(n: int) -> np.ndarray:
    """``n`` distinct region colours as an (n, 3) uint8 array (tab10, tab20 beyond 10, cycling beyond 20)."""
    name = "tab10" if n <= 10 else "tab20"
    cmap = colormaps[name]
    colours = np.array([cmap(i % cmap.N)[:3] for i in range(max(n, 0))], dtype=np.float64).reshape(-1, 3)
    return np.round(colours * 255).astype(np.uint8)


def overlay_array(image, labels, alpha: float = 0.5) -> np.ndarray:
    """``image`` blended with the palette colour of each region of ``labels``, as (H, W, 3) uint8.

    ``labels`` (torch or numpy, (h, w), usually the latent grid) is upsampled to the image with nearest
    neighbour; ``alpha`` is the weight of the colour (0 = image only, 1 = colours only). Negative labels are
    left uncoloured.
    """
    rgb = rgb_array(image)
    full = upsample_labels(labels, rgb.shape[:2])
    palette = region_palette(int(full.max()) + 1 if full.size else 0)
    inside = full >= 0
    out = rgb.astype(np.float64)
    colours = palette[full[inside]].astype(np.float64)
    out[inside] = (1.0 - alpha) * out[inside] + alpha * colours
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def eroded(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` whose four neighbours are in it too (what is left of a mask after a 1-pixel erosion)."""
    mask = np.asarray(mask, dtype=bool)
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def border(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The inner border of ``mask``, ``width`` pixels wide (1 or 2)."""
    mask = np.asarray(mask, dtype=bool)
    edge = mask & ~eroded(mask)
    if width > 1:  # one pixel more, inwards, so it reads at small sizes
        thick = edge.copy()
        thick[1:] |= edge[:-1] & mask[1:]
        thick[:, 1:] |= edge[:, :-1] & mask[:, 1:]
        edge = thick
    return edge


def heat_picture(reference, weights: np.ndarray, top: float | None = None) -> np.ndarray:
    """The reference image in grey under the heat map (inferno) of ``weights`` (a token grid, resized to the image
    with nearest neighbour and divided by ``top``, default its maximum), as (H, W, 3) uint8."""
    rgb = rgb_array(reference).astype(np.float64)
    h, w = rgb.shape[:2]
    grid_h, grid_w = weights.shape
    rows = (np.arange(h) * grid_h // h)[:, None]
    cols = (np.arange(w) * grid_w // w)[None, :]
    top = float(weights.max()) if top is None else top
    coloured = colormaps["inferno"](np.clip(weights[rows, cols] / (top or 1.0), 0, 1))[..., :3] * 255
    grey = rgb.mean(axis=2, keepdims=True)
    return np.round(0.3 * grey + 0.7 * coloured).astype(np.uint8)
