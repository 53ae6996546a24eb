"""Where a content point attends in the references: the attention weights of the style loss's target, per point.

For a content query token the target attention of stage 4 spreads its weight over the keys of the references.
``"masked"`` puts it all inside the matched style region; ``"zeroed"`` (the authors') gives the matched
reference's keys outside the region a logit of 0, so part of it lands there; ``"plain"`` (unrestricted
attention over every key of every reference) shows what the region restriction takes away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import StyleGalleryError
from .style_loss import token_labels

MAP_MODES = ("zeroed", "masked", "plain")
_CHUNK = 256  # query rows per softmax: bounds the (heads, rows, keys) block


@dataclass
class AttentionMaps:
    """Attention weights of content points over every reference token, at one timestep and layer.

    ``maps[p][j]``: point ``p``'s weights over reference ``j``'s tokens as a (rows, cols) array on that
    reference's token grid; summed over all references they make 1. ``share_inside[p]``: the part of that mass
    inside the matched style region (1 for ``"masked"``; NaN for a region that keeps its content).
    """

    points: list  # as given: (y, x) pixel coordinates of the working image, or an int content region
    regions: list[int]  # content region of each point
    matches: list  # that region's match: [reference, style region] or None
    maps: list[list[np.ndarray]]
    share_inside: list[float]
    inside: list[list[np.ndarray]]  # inside[p][j]: mask of point p's matched style region on reference j's grid
    timestep: int
    layer: int
    mode: str
    head: int | None
    grid: tuple[int, int]  # the layer's token grid on the content


def _grid(shape: tuple[int, int], tokens: int) -> tuple[int, int]:
    factor = round(math.sqrt(shape[0] * shape[1] / tokens))
    return shape[0] // factor, shape[1] // factor


def attention_maps(queries, keys, content_labels, style_labels, matches, points, image_size, *, mode="zeroed",
                   head=None, query_scale=1.5, timestep=0, layer=0) -> AttentionMaps:
    """Compute :class:`AttentionMaps` from one layer's content queries (heads, N, d) and the references'
    concatenated keys (heads, M, d), the latent-grid label maps and the match list.

    ``points``: (y, x) pixel coordinates of the working image (``image_size`` = (H, W)), or content region
    ids (the mean over the region's tokens). ``head``: one head's weights, or None for the mean over heads.
    """
    if mode not in MAP_MODES:
        raise StyleGalleryError(f"mode must be one of {', '.join(MAP_MODES)} (got {mode!r})")
    heads = queries.shape[0]
    if head is not None and not 0 <= head < heads:
        raise StyleGalleryError(f"head must be between 0 and {heads - 1}, or None for the mean (got {head})")
    content = token_labels(content_labels, queries.shape[1])
    key_counts, grids, ref_tokens = [], [], []
    total = 0
    for lab in style_labels:
        # every reference has the content's working size, so its tokens per layer are the content's
        labels = token_labels(lab, queries.shape[1])
        ref_tokens.append(labels)
        key_counts.append(len(labels))
        grids.append(_grid(tuple(lab.shape), len(labels)))
        total += len(labels)
    if total != keys.shape[1]:
        raise StyleGalleryError("the keys do not belong to these references")
    key_ref = torch.cat([torch.full_like(t, j) for j, t in enumerate(ref_tokens)])
    key_reg = torch.cat(ref_tokens)
    grid = _grid(tuple(content_labels.shape), queries.shape[1])
    n_regions = len(matches)

    located = [_point_rows(point, content, grid, image_size, n_regions) for point in points]
    regions = [region for region, _ in located]
    scale = query_scale / math.sqrt(queries.shape[-1])
    maps, shares, insides = [], [], []
    for region, rows in located:
        match = matches[region]
        allowed = torch.ones(total, dtype=torch.bool)
        zero = torch.zeros(total, dtype=torch.bool)
        inside = torch.zeros(total, dtype=torch.bool)
        if match is not None:
            of_ref = key_ref == match[0]
            inside = of_ref & (key_reg == match[1])
            if mode == "masked":
                allowed = inside if inside.any() else of_ref
            elif mode == "zeroed":
                allowed, zero = of_ref, of_ref & ~inside
        weights = torch.zeros(total)
        for start in range(0, len(rows), _CHUNK):
            q = queries[:, rows[start:start + _CHUNK]].float()
            logits = torch.einsum("hnd,hmd->hnm", q, keys.float()) * scale
            logits[..., zero] = 0.0  # a zeroed key: q . 0 = 0
            logits[..., ~allowed] = -torch.inf
            w = logits.softmax(-1)
            w = w.mean(0) if head is None else w[head]
            weights += w.sum(0)
        weights /= len(rows)
        shares.append(float(weights[inside].sum()) if match is not None else float("nan"))
        per_ref, masks, offset = [], [], 0
        for count, shape in zip(key_counts, grids):
            per_ref.append(weights[offset:offset + count].reshape(shape).numpy())
            masks.append(inside[offset:offset + count].reshape(shape).numpy())
            offset += count
        maps.append(per_ref)
        insides.append(masks)
    return AttentionMaps(list(points), regions, [matches[r] for r in regions], maps, shares,
                         insides, int(timestep), int(layer), mode, head, grid)


def _point_rows(point, content: torch.Tensor, grid: tuple[int, int], image_size: tuple[int, int],
                n_regions: int) -> tuple[int, torch.Tensor]:
    """A point's content region and query rows: a region id (all its tokens), or (y, x) pixels (the token there)."""
    if isinstance(point, (int, np.integer)) and not isinstance(point, bool):
        if not 0 <= int(point) < n_regions:
            raise StyleGalleryError(f"content region {point} does not exist (regions 0..{n_regions - 1})")
        rows = torch.nonzero(content == int(point)).squeeze(1)
        if not len(rows):
            raise StyleGalleryError(f"content region {point} has no token at this layer's resolution {grid}")
        return int(point), rows
    try:
        y, x = (float(v) for v in point)
    except (TypeError, ValueError):
        raise StyleGalleryError(f"a point is (y, x) pixel coordinates or a region id (got {point!r})") from None
    if not (0 <= y < image_size[0] and 0 <= x < image_size[1]):
        raise StyleGalleryError(f"point {point} lies outside the {image_size[0]}x{image_size[1]} image")
    row = int(y * grid[0] / image_size[0]) * grid[1] + int(x * grid[1] / image_size[1])
    return int(content[row]), torch.tensor([row])
