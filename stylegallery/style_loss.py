"""The regional attention style loss and the content loss (DESIGN.md, stage 4).

One attention per layer serves every matched region: the keys and values of all references are concatenated,
and a per-query mask lets each content query see only the style region its own region is matched to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

REGION_ATTENTION_MODES = ("masked", "zeroed")


def token_labels(labels: torch.Tensor, tokens: int) -> torch.Tensor:
    """Region label of every token of a layer with ``tokens`` tokens over the (h, w) latent grid."""
    h, w = labels.shape
    factor = round(math.sqrt(h * w / tokens))
    grid = (h // factor, w // factor)
    if grid == (h, w):
        return labels.flatten()
    return F.interpolate(labels[None, None].float(), size=grid, mode="nearest").long().flatten()


@dataclass
class RegionPlan:
    """For one layer resolution: per query its content region and matched (reference, region); per key its own."""

    content_region: torch.Tensor  # (N,) content region of each query token
    query_reference: torch.Tensor  # (N,) matched reference, -1 where the region keeps its content
    query_region: torch.Tensor  # (N,) matched style region, -1 likewise
    key_reference: torch.Tensor  # (M,) reference each concatenated key belongs to
    key_region: torch.Tensor  # (M,) region of that reference


def region_plan(content_labels, style_labels, matches, tokens: int, device) -> RegionPlan:
    """Build the :class:`RegionPlan` for layers with ``tokens`` tokens from label maps and the match list."""
    content = token_labels(content_labels, tokens)
    lookup_ref = torch.tensor([m[0] if m is not None else -1 for m in matches])
    lookup_reg = torch.tensor([m[1] if m is not None else -1 for m in matches])
    keys = [token_labels(lab, tokens) for lab in style_labels]
    key_ref = torch.cat([torch.full_like(k, j) for j, k in enumerate(keys)])
    return RegionPlan(
        content.to(device), lookup_ref[content].to(device), lookup_reg[content].to(device),
        key_ref.to(device), torch.cat(keys).to(device),
    )


def style_targets(q_content, keys, values, plan: RegionPlan, mode: str = "masked", query_scale: float = 1.5):
    """Target attention outputs (heads, N, d) of the content queries over their matched style regions.

    ``masked``: logits of keys outside the matched region are removed, so queries attend only inside it.
    ``zeroed`` (the authors' release): keys and values outside the region are zeroed, so they keep a logit of 0
    and still take attention weight, within the matched reference.
    """
    same_ref = plan.key_reference[None, :] == plan.query_reference[:, None]
    inside = same_ref & (plan.key_region[None, :] == plan.query_region[:, None])
    valid = inside.any(1)
    q = q_content * query_scale
    if mode == "masked":
        mask = inside | ~valid[:, None]  # rows without a match attend anywhere; their loss is not used
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[None])
    if mode == "zeroed":
        same_ref = same_ref | ~valid[:, None]
        logits = q @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])
        logits = torch.where(inside, logits, torch.zeros_like(logits))
        logits = logits.masked_fill(~same_ref, float("-inf"))
        return (logits.softmax(-1) * inside) @ values
    raise ValueError(f"region_attention must be one of {REGION_ATTENTION_MODES}, not {mode!r}")


def region_style_loss(out, target, plan: RegionPlan, n_regions: int, mode: str = "masked") -> torch.Tensor:
    """Per content region L1 distance between attention output and target -> (n_regions,).

    ``masked`` averages over the region's tokens; ``zeroed`` (authors') divides by all tokens, as a mean over
    region-masked tensors does. Regions that keep their content get 0.
    """
    err = (out.float() - target.float()).abs().mean(dim=(0, 2))  # (N,)
    matched = plan.query_reference >= 0
    err = torch.where(matched, err, torch.zeros_like(err))
    sums = torch.zeros(n_regions, device=err.device, dtype=err.dtype).index_add(0, plan.content_region, err)
    if mode == "zeroed":
        return sums / err.numel()
    counts = torch.bincount(plan.content_region, minlength=n_regions).clamp_min(1)
    return sums / counts


def content_loss(q, q_content) -> torch.Tensor:
    """Mean absolute difference of the queries."""
    return (q.float() - q_content.float()).abs().mean()
