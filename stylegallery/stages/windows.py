"""Stylizing beyond the working size: overlapping windows of the model's native size over a large latent.

Regions and matches are decided at the working size; the result is refined at the output size under the sum of
the loss over overlapping windows (docs/method.md, "Beyond the working size"). Each window runs its own UNet pass,
so memory is set by the window, not by the image. Each window takes its own Adam step and the latent becomes the
blend of the windows' proposals (:class:`WindowedAdam`), with weights that ramp linearly across each overlap, leave
a window no say at its own edge inside the picture and sum to 1 everywhere, so no window border shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import StyleGalleryError

#: The UNet downsamples the latent three times: a window's latent side is a multiple of this.
WINDOW_MULTIPLE = 8
#: Largest output side (pixels) accepted at all; the memory check decides below it.
MAX_OUTPUT_SIDE = 16384
#: Estimated bytes of one gradient pass of an SD 1.5-sized UNet (320 base channels) per latent pixel of the
#: window, float32, plain attention (measured: 2.8 GiB peak working memory of a 512 px run of the sd15 architecture on
#: the CPU, benchmarks/README.md, "high resolution"; the pass itself is most of it).
#: Scales with the base channels and the dtype's size.
PASS_BYTES_PER_LATENT_PIXEL = 720_000
#: Bytes per output pixel of the buffers outside the windows: the latent, its Adam moments and gradient, the
#: content latent, the float image the VAE decodes in tiles, and the uint8 result.
BUFFER_BYTES_PER_PIXEL = 64


def _round64(value: float) -> int:
    return max(64, int(round(value / 64)) * 64)


def output_pixels(output_size, aspect_hw: tuple[int, int], working_hw: tuple[int, int]) -> tuple[int, int]:
    """The result's (H, W) in pixels for ``output_size``: a long side (``aspect_hw``'s aspect kept) or (H, W), each
    side rounded to a multiple of 64. Smaller than the working size (long side) or above
    :data:`MAX_OUTPUT_SIDE` is an error."""
    if isinstance(output_size, (list, tuple)) and len(output_size) == 2:
        height, width = (_round64(v) for v in output_size)
    else:
        long_side = output_size[0] if isinstance(output_size, (list, tuple)) else output_size
        scale = long_side / max(aspect_hw)
        height, width = _round64(aspect_hw[0] * scale), _round64(aspect_hw[1] * scale)
    if max(height, width) < max(working_hw):
        raise StyleGalleryError(
            f"output_size {height}x{width} is smaller than the working size {working_hw[0]}x{working_hw[1]}: the "
            f"output's long side must be at least {max(working_hw)} px (or lower the working size, size=...)")
    if max(height, width) > MAX_OUTPUT_SIDE:
        raise StyleGalleryError(f"output_size {height}x{width} is above the largest side StyleGallery accepts "
                                f"({MAX_OUTPUT_SIDE} px)")
    return height, width


def window_cells(window_px: int, stride_px: int | None) -> tuple[int, int]:
    """A window side and stride in pixels as latent cells; the stride defaults to 3/4 of the window."""
    window = window_px // 8
    stride = max(1, window * 3 // 4) if stride_px is None else stride_px // 8
    if stride > window:
        raise StyleGalleryError(f"window_stride ({stride * 8} px) is larger than the window ({window_px} px): parts "
                                "of the picture would belong to no window; use a stride no larger than the window")
    return window, stride


def refine_memory(plan: "WindowPlan", base_channels: int, dtype_bytes: int, checkpointing: bool) -> int:
    """Estimated bytes of the refinement: one window's gradient pass (scaled from an SD 1.5 UNet in float32 by the
    base channels and dtype; about a third with gradient checkpointing) plus the output-size buffers."""
    window = max(w.height * w.width for w in plan.windows)
    per_pass = window * PASS_BYTES_PER_LATENT_PIXEL * base_channels / 320 * dtype_bytes / 4
    if checkpointing:
        per_pass /= 3
    return int(per_pass + plan.grid[0] * plan.grid[1] * 64 * BUFFER_BYTES_PER_PIXEL)


@dataclass(frozen=True)
class Window:
    """One window: its top-left corner and size on the latent grid."""

    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Starts of windows of ``window`` cells every ``stride`` cells that cover ``length`` cells, the last one flush
    with the end (so every cell is covered and no window leaves the grid)."""
    if window >= length:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    starts = [min(i * stride, length - window) for i in range(count)]
    return sorted(set(starts))


def window_grid(grid: tuple[int, int], window: int, stride: int) -> list[Window]:
    """Windows of side ``window`` (cut to the grid where it is smaller) every ``stride`` cells over ``grid``."""
    h, w = grid
    wh, ww = min(window, h), min(window, w)
    return [Window(top, left, wh, ww) for top in window_starts(h, wh, stride) for left in window_starts(w, ww, stride)]


#: Fraction of an overlap, at the window's own edge inside the picture, where the window has no say. A window's
#: UNet sees zero padding past its crop, so its last latent pixels disagree with the window that sees past them;
#: those pixels take the neighbour's proposal alone.
EDGE_MARGIN = 0.25


def _ramp(start: int, size: int, starts: Sequence[int], margin: float) -> torch.Tensor:
    """A window's weight along one axis: 1 inside; over the overlap with a neighbouring window, 0 for ``margin`` of
    the overlap at the window's own edge, then a linear ramp up to 1 (the neighbour's ramp is its mirror, so the
    two sum to 1). Sides at the picture's border keep weight 1."""
    weight = torch.ones(size, dtype=torch.float64)
    earlier = [s for s in starts if s < start]
    later = [s for s in starts if s > start]
    if earlier:  # overlap with the previous window: [start, previous end)
        overlap = max(earlier) + size - start
        if overlap > 0:
            m = int(overlap * margin)
            j = torch.arange(overlap, dtype=torch.float64)
            weight[:overlap] = ((j - m + 1) / (overlap - 2 * m + 1)).clamp(0, 1)
    if later:
        overlap = start + size - min(later)
        if overlap > 0:
            m = int(overlap * margin)
            j = torch.arange(overlap, dtype=torch.float64)
            weight[size - overlap:] *= ((overlap - m - j) / (overlap - 2 * m + 1)).clamp(0, 1)
    return weight


def blend_weights(grid: tuple[int, int], windows: Sequence[Window], margin: float = EDGE_MARGIN) -> list[torch.Tensor]:
    """Per window an (height, width) float32 weight map; over the grid the weights of the windows covering a cell
    sum to 1 (the ramps of :func:`_ramp` with ``margin``, normalised)."""
    rows = sorted({w.top for w in windows})
    cols = sorted({w.left for w in windows})
    raw = [torch.outer(_ramp(w.top, w.height, rows, margin), _ramp(w.left, w.width, cols, margin)) for w in windows]
    total = torch.zeros(grid, dtype=torch.float64)
    for window, weight in zip(windows, raw):
        total[window.slices] += weight
    if (total <= 0).any():
        raise StyleGalleryError("the windows do not cover the whole image: use a stride no larger than the window")
    return [(weight / total[window.slices]).float() for window, weight in zip(windows, raw)]


@dataclass
class WindowPlan:
    """The windows over an output latent grid and their blend weights."""

    grid: tuple[int, int]  # output latent (h, w)
    window: int  # asked-for side in latent pixels (a window is cut to the grid where the grid is smaller)
    stride: int
    windows: list[Window]
    weights: list[torch.Tensor]

    @property
    def pixel_size(self) -> tuple[int, int]:
        return self.grid[0] * 8, self.grid[1] * 8


def window_plan(grid: tuple[int, int], window: int, stride: int) -> WindowPlan:
    """The :class:`WindowPlan` of ``window``-cell windows every ``stride`` cells over the latent ``grid``."""
    windows = window_grid(grid, window, stride)
    return WindowPlan(tuple(grid), window, stride, windows, blend_weights(grid, windows))


class WindowedAdam:
    """Adam on overlapping windows of one latent: each window is its own Adam (``torch.optim.Adam``) on its crop,
    and after every step the windows' proposals are fused by the blend weights (MultiDiffusion's fusion, applied to
    optimization steps). Before each step every crop restarts from the fused latent; each window keeps its moments.

    Fusing the windows' steps, rather than summing their gradients into one Adam, keeps borders invisible: Adam
    divides each element's step by its own gradient scale, so a summed gradient whose windows disagree near a
    border turns into full-size steps of opposite sign on either side of it. With one window of weight 1 this is
    plain Adam on the latent.
    """

    def __init__(self, plan: WindowPlan, lr: float):
        self.plan, self.lr = plan, lr
        self.z, self.crops, self.optimizers, self.weights = None, [], [], []

    def attach(self, z: torch.Tensor) -> "WindowedAdam":
        """Optimize ``z`` (the whole latent, updated in place by :meth:`step`); fresh moments. Returns self, so it
        is the ``optimizer`` argument of :func:`~stylegallery.stages.stylize.optimize_latent`."""
        self.z = z
        self.crops = [z.detach()[(..., *w.slices)].clone().requires_grad_(True) for w in self.plan.windows]
        self.optimizers = [torch.optim.Adam([crop], lr=self.lr) for crop in self.crops]
        self.weights = [w.to(z.device, z.dtype) for w in self.plan.weights]
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the windows' gradients and restart every crop from the fused latent."""
        with torch.no_grad():
            for window, crop in zip(self.plan.windows, self.crops):
                crop.copy_(self.z[(..., *window.slices)])
                crop.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step per window, then the latent becomes the blend of the windows' crops."""
        fused = torch.zeros_like(self.z)
        for window, weight, crop, optimizer in zip(self.plan.windows, self.weights, self.crops, self.optimizers):
            optimizer.step()
            fused[(..., *window.slices)] += crop * weight
        self.z.copy_(fused)


def windowed_loss(plan: WindowPlan, window_loss_at: Callable[[int, int], "LossParts"], optimizer: WindowedAdam,
                  on_window: Callable[[int], None] | None = None):
    """A ``loss_at`` for :func:`~stylegallery.stages.stylize.optimize_latent` on the whole output latent with
    ``optimizer.attach`` as its optimizer (:class:`WindowedAdam`).

    ``window_loss_at(t, i)`` is the loss function of window ``i`` at timestep ``t`` on the window's latent crop;
    it is asked for when the window's turn comes, so only one window's features and graph are alive at a time.
    Each window's loss is backpropagated at once into its crop; the returned parts are the windows' parts weighted
    by their share of the image and carry no graph. ``on_window(i)`` is called after window ``i`` (progress).
    """
    from .stylize import LossParts

    shares = [float(w.sum()) / (plan.grid[0] * plan.grid[1]) for w in plan.weights]

    def loss_at(t: int):
        def loss(z: torch.Tensor) -> LossParts:
            parts = []
            for i, crop in enumerate(optimizer.crops):
                part = window_loss_at(t, i)(crop)
                part.total.backward()
                parts.append(LossParts(*(p.detach() for p in (part.total, part.content, part.style,
                                                               part.style_per_region))))
                if on_window is not None:
                    on_window(i)
            return LossParts(*(sum(share * getattr(p, name) for share, p in zip(shares, parts))
                               for name in ("total", "content", "style", "style_per_region")))

        return loss

    return loss_at
