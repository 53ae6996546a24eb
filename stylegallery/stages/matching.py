"""Region matching: statistical, semantic and geometric similarity of regions (docs/method.md, stage 3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    """(h, w) labels -> (n, h, w) float masks."""
    return F.one_hot(labels.long(), int(labels.max()) + 1).permute(2, 0, 1).float()


def region_statistics(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[mean, variance] of the features (C, h, w) in each region -> (n, 2C)."""
    masks = one_hot(labels).flatten(1)  # (n, hw)
    x = features.flatten(1).float()  # (C, hw)
    count = masks.sum(1, keepdim=True).clamp_min(1)
    mean = masks @ x.T / count
    var = masks @ (x.T**2) / count - mean**2
    return torch.cat([mean, var.clamp_min(0)], dim=1)


def block_membership(labels: torch.Tensor, grid: tuple[int, int], threshold: float) -> torch.Tensor:
    """(n, gh*gw) bool: does region cover more than ``threshold`` of each block of the patch grid."""
    coverage = F.adaptive_avg_pool2d(one_hot(labels)[None], grid)[0]
    return coverage.flatten(1) > threshold


def region_semantics(tokens: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mean DINOv2 patch token (gh, gw, D) over the blocks each region covers -> (n, D)."""
    gh, gw, d = tokens.shape
    member = block_membership(labels, (gh, gw), threshold).float()
    flat = tokens.reshape(-1, d).float()
    return member @ flat / member.sum(1, keepdim=True).clamp_min(1)


def enclosing_circles(labels: torch.Tensor) -> torch.Tensor:
    """(n, 3): centroid (y, x) and radius (distance from it to the farthest pixel centre, as in the authors'
    release), in units of the grid height."""
    h, w = labels.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    masks = one_hot(labels).flatten(1)
    count = masks.sum(1).clamp_min(1)
    cy, cx = masks @ ys.flatten() / count, masks @ xs.flatten() / count
    dist = ((ys.flatten()[None] - cy[:, None]) ** 2 + (xs.flatten()[None] - cx[:, None]) ** 2).sqrt()
    radius = (dist * masks).amax(1)
    return torch.stack([cy, cx, radius], dim=1) / h


def circle_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every circle in ``a`` (n, 3) with every circle in ``b`` (m, 3)."""
    r1, r2 = a[:, None, 2].double(), b[None, :, 2].double()
    d = torch.cdist(a[:, :2].double(), b[:, :2].double())
    area1, area2 = math.pi * r1**2, math.pi * r2**2
    small = torch.minimum(area1, area2).expand_as(d)
    d_safe = d.clamp_min(1e-12)
    cos1 = ((d_safe**2 + r1**2 - r2**2) / (2 * d_safe * r1)).clamp(-1, 1)
    cos2 = ((d_safe**2 + r2**2 - r1**2) / (2 * d_safe * r2)).clamp(-1, 1)
    lens = (
        r1**2 * torch.acos(cos1)
        + r2**2 * torch.acos(cos2)
        - 0.5 * ((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2)).clamp_min(0).sqrt()
    )
    inter = torch.where(d >= r1 + r2, torch.zeros_like(d), torch.where(d <= (r1 - r2).abs(), small, lens))
    union = area1 + area2 - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-300), torch.zeros_like(union)).float()  # 0/0 -> 0


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` with every row of ``b``."""
    return F.normalize(a.float(), dim=1) @ F.normalize(b.float(), dim=1).T


def score_matrices(features: torch.Tensor, labels: torch.Tensor, tokens: list[torch.Tensor] | None, *,
                   statistical_weight: float, semantic_weight: float, geometric_weight: float,
                   block_threshold: float) -> dict:
    """Every content region (image 0) against every region of every reference (images 1..): the three similarities
    and ``score = statistical_weight * statistical + semantic_weight * semantic + geometric_weight * geometric``.

    ``features`` (N, C, h, w) and ``labels`` (N, h, w) of all images; ``tokens``: each image's DINOv2 patch tokens
    (gh, gw, D), or None (the semantic part is then 0). Returns the four (content regions, all style regions)
    matrices and ``columns``, the [reference, region] of each column.
    """
    n_styles = len(labels) - 1
    stats = [region_statistics(features[i], labels[i]) for i in range(len(labels))]
    circles = [enclosing_circles(labels[i]) for i in range(len(labels))]
    columns = [[j, s] for j in range(n_styles) for s in range(int(labels[j + 1].max()) + 1)]
    stat = torch.cat([cosine_matrix(stats[0], stats[j + 1]) for j in range(n_styles)], 1)
    geo = torch.cat([circle_iou(circles[0], circles[j + 1]) for j in range(n_styles)], 1)
    if tokens is None:
        sem = torch.zeros_like(stat)
    else:
        vec = [region_semantics(tokens[i], labels[i], block_threshold) for i in range(len(labels))]
        sem = torch.cat([cosine_matrix(vec[0], vec[j + 1]) for j in range(n_styles)], 1)
    score = statistical_weight * stat + semantic_weight * sem + geometric_weight * geo
    return dict(score=score, statistical=stat, semantic=sem, geometric=geo, columns=columns)
