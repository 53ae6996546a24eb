"""The regional attention style loss and the content loss (docs/method.md, stage 4).

The keys and values of all references are concatenated once per layer; each matched content region attends
only to the part of them it may see, so the work grows with the image, not with the number of regions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..settings import REGION_ATTENTION_MODES


def token_labels(labels: torch.Tensor, tokens: int) -> torch.Tensor:
    """Region label of every token of a layer with ``tokens`` tokens over the (h, w) latent grid."""
    h, w = labels.shape
    factor = round(math.sqrt(h * w / tokens))
    grid = (h // factor, w // factor)
    if grid == (h, w):
        return labels.flatten()
    return F.interpolate(labels[None, None].float(), size=grid, mode="nearest").long().flatten()


@dataclass
class RegionGroup:
    """The queries of one matched content region and the keys they may see."""

    rows: torch.Tensor  # (n,) query tokens of the content region
    region_keys: torch.Tensor  # indices (into the concatenated keys) of the matched style region
    reference_keys: torch.Tensor  # indices of every key of the matched reference
    inside: torch.Tensor  # (len(reference_keys),) True where that key lies in the matched region


@dataclass
class RegionPlan:
    """For one layer resolution: per query its content region and matched (reference, region); per key its own;
    and the matched regions as :class:`RegionGroup` s."""

    content_region: torch.Tensor  # (N,) content region of each query token
    query_reference: torch.Tensor  # (N,) matched reference, -1 where the region keeps its content
    query_region: torch.Tensor  # (N,) matched style region, -1 likewise
    key_reference: torch.Tensor  # (M,) reference each concatenated key belongs to
    key_region: torch.Tensor  # (M,) region of that reference
    groups: list[RegionGroup]


def region_plan(content_labels, style_labels, matches, tokens: int, device, style_tokens: int | None = None) -> RegionPlan:
    """Build the :class:`RegionPlan` for layers with ``tokens`` query tokens (``style_tokens`` key tokens per
    reference, by default as many) from label maps and the match list."""
    content = token_labels(content_labels, tokens).to(device)
    keys = [token_labels(lab, style_tokens or tokens) for lab in style_labels]
    key_ref = torch.cat([torch.full_like(k, j) for j, k in enumerate(keys)]).to(device)
    key_reg = torch.cat(keys).to(device)
    lookup_ref = torch.tensor([m[0] if m is not None else -1 for m in matches], device=device)
    lookup_reg = torch.tensor([m[1] if m is not None else -1 for m in matches], device=device)
    groups = []
    for r, match in enumerate(matches):
        rows = torch.nonzero(content == r).squeeze(1)
        if match is None or not len(rows):
            continue
        reference_keys = torch.nonzero(key_ref == match[0]).squeeze(1)
        inside = key_reg[reference_keys] == match[1]
        groups.append(RegionGroup(rows, reference_keys[inside], reference_keys, inside))
    return RegionPlan(content, lookup_ref[content], lookup_reg[content], key_ref, key_reg, groups)


def _attention(q, k, v):
    # with a batch dimension, PyTorch's CPU kernel works in blocks instead of materialising (heads, n, m)
    return F.scaled_dot_product_attention(q[None], k[None], v[None])[0]


def style_targets(queries, keys, values, plan: RegionPlan, mode: str = "zeroed", query_scale: float = 1.5):
    """Target attention outputs (heads, N, d) of ``queries`` over their matched style regions.

    ``queries`` are those of the latent being optimized, from the same UNet pass as the outputs the loss
    compares (detached): the target moves with the latent at every iteration, as in Attention Distillation
    and the authors' release (docs/method.md, stage 4).
    One attention per matched region, over only the keys its queries may see, so the cost is the sum over
    regions of |region| x |keys seen| and no (N, all keys) matrix is built.
    ``zeroed`` (the authors' release, the default): keys and values of the matched reference outside the
    region are zeroed, so they keep a logit of 0 and still take attention weight.
    ``masked`` (ours): queries attend only inside the matched region (where that region has no token at this
    resolution, over its whole reference).
    Rows of regions that keep their content are 0 (their loss is not used).
    """
    if mode not in REGION_ATTENTION_MODES:
        raise ValueError(f"region_attention must be one of {REGION_ATTENTION_MODES}, not {mode!r}")
    q = queries * query_scale
    out = q.new_zeros(q.shape[:-1] + (values.shape[-1],))
    for group in plan.groups:
        if mode == "masked":
            cols = group.region_keys if len(group.region_keys) else group.reference_keys
            k, v = keys[:, cols], values[:, cols]
        elif group.inside.any():
            inside = group.inside[None, :, None].to(keys.dtype)
            k, v = keys[:, group.reference_keys] * inside, values[:, group.reference_keys] * inside
        else:
            continue  # zeroed, and no key inside: every value is zero, so is the target
        out[:, group.rows] = _attention(q[:, group.rows], k, v)
    return out


def region_style_loss(out, target, plan: RegionPlan, n_regions: int, mode: str = "zeroed") -> torch.Tensor:
    """Per content region L1 distance between attention output and target -> (n_regions,).

    ``zeroed`` (authors') divides by all tokens, as the release's mean over region-masked tensors does; unlike
    the release it leaves out the rows outside the region (a constant without gradient). ``masked`` (ours)
    averages over the region's tokens. Regions that keep their content get 0.
    """
    err = (out.float() - target.float()).abs().mean(dim=(0, 2))  # (N,)
    matched = plan.query_reference >= 0
    err = torch.where(matched, err, torch.zeros_like(err))
    sums = torch.zeros(n_regions, device=err.device, dtype=err.dtype).index_add(0, plan.content_region, err)
    if mode == "zeroed":
        return sums / err.numel()
    counts = torch.bincount(plan.content_region, minlength=n_regions).clamp_min(1)
    return sums / counts


def content_loss(q, q_content, token_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute difference of the queries (heads, N, d); with ``token_weights`` (N,), each token's mean
    difference times its weight, averaged over the tokens (ours: per-region content weights)."""
    gap = (q.float() - q_content.float()).abs()
    if token_weights is None:
        return gap.mean()
    return (gap.mean(dim=(0, 2)) * token_weights).mean()


def content_loss_per_region(q_result: dict, q_content: dict, labels: torch.Tensor, n_regions: int) -> tuple[float, np.ndarray]:
    """The content loss ``sum over layers of mean |Q - Q_c|`` of a result's queries against the clean content's (both
    ``{layer: (heads, N, d)}``), over the layers of ``q_content``, for the whole image and per content region (the mean over the region's tokens of
    each layer, summed over layers; NaN for a region without a token at some layer)."""
    whole, per_region = 0.0, np.zeros(n_regions)
    for layer, q in q_content.items():
        gap = (q_result[layer].float() - q.float()).abs()  # (heads, N, d)
        whole += float(gap.mean())
        per_token = gap.mean((0, 2)).double().cpu()
        tokens = token_labels(labels, per_token.shape[0])
        counts = torch.bincount(tokens, minlength=n_regions)[:n_regions].double()
        sums = torch.bincount(tokens, weights=per_token, minlength=n_regions)[:n_regions]
        per_region += (sums / counts).numpy()  # 0 / 0 = NaN for a region without tokens here
    return whole, per_region
