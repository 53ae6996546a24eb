"""Figures of stage 3: the match matrix and its score parts, matched region pairs side by side, and the regions'
enclosing circles (public through :mod:`stylegallery.plot`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Patch, Rectangle

from ..images import rgb_array
from ..results import Matching, Prepared, Segmentation
from ..stages.matching import enclosing_circles
from .figures import (KEEP_COLOUR, MATCH_COLOUR, OVERRIDE_COLOUR, image_title, label_cells, label_spot, new_figure, outline,
                      single_axes, style_region_axis, text_box)
from .pictures import image_names, region_palette, to_numpy, upsample_labels

PARTS = ("score", "statistical", "semantic", "geometric")


def match_matrix(matching: Matching, part: str = "score", ax: Axes | None = None,
                 names: Sequence[str] | None = None) -> Figure:
    """Heatmap of content regions (rows) against the regions of all references (columns, grouped by reference).

    The match of each row is outlined (red: best score; orange dashed: overridden by the user); a row kept
    as content (match ``None``) is hatched grey instead. ``part``: score, statistical, semantic or geometric.
    ``names``: the references' names over their columns (e.g. ``image_names(prepared.names)[1:]``; default
    style 1, style 2, ...).
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)} (got {part!r})")
    values = to_numpy(getattr(matching, part)).astype(np.float64)
    rows, cols = values.shape
    fig, ax = single_axes(ax, (max(4.5, 0.75 * cols + 2.5), max(3.0, 0.6 * rows + 1.8)))
    image = ax.imshow(values, cmap="viridis", aspect="auto", interpolation="nearest")
    colourbar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    colourbar.ax.tick_params(labelsize=8)

    # viridis is dark at the low end: white text up to 60% of the range
    label_cells(ax, values, 2, lambda share: share is None or share <= 0.6)

    columns = [tuple(col) for col in matching.columns]
    style_region_axis(ax, columns, names)

    overridden = set(matching.overridden)
    ticks = []
    for r, match in enumerate(matching.matches):
        if match is None:
            ax.add_patch(Rectangle((-0.5, r - 0.5), cols, 1, fill=False, hatch="//", edgecolor=KEEP_COLOUR,
                                   linewidth=1.5, gid="keep"))
            ticks.append(f"{r}: keep")
        else:
            j = columns.index(tuple(match))
            manual = r in overridden
            ax.add_patch(Rectangle((j - 0.5, r - 0.5), 1, 1, fill=False, linewidth=2.5, gid="match",
                                   edgecolor=OVERRIDE_COLOUR if manual else MATCH_COLOUR,
                                   linestyle="--" if manual else "-"))
            ticks.append(f"{r}: override" if manual else str(r))
    ax.set_yticks(range(rows), ticks, fontsize=8)
    ax.set_ylabel("content region")
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    weight = matching.settings.get(f"{part}_weight")
    ax.set_title(part if weight is None else f"{part} (weight {weight:g})", pad=18)

    handles = [Patch(fill=False, edgecolor=MATCH_COLOUR, linewidth=2, label="match")]
    if overridden - {r for r, m in enumerate(matching.matches) if m is None}:
        handles.append(Patch(fill=False, edgecolor=OVERRIDE_COLOUR, linestyle="--", linewidth=2, label="override"))
    if any(m is None for m in matching.matches):
        handles.append(Patch(fill=False, edgecolor=KEEP_COLOUR, hatch="//", label="keep content"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12 if rows > 2 else -0.25), ncol=len(handles),
              fontsize=8, frameon=False)
    return fig


def match_parts(matching: Matching, names: Sequence[str] | None = None) -> Figure:
    """Four heatmaps: the score and its statistical, semantic and geometric parts (``names``: as in match_matrix)."""
    rows, cols = matching.score.shape
    fig, axes = new_figure((2 * max(4.5, 0.75 * cols + 2.5), 2 * max(3.0, 0.6 * rows + 1.8)), 2, 2)
    for ax, part in zip(axes.ravel(), PARTS):
        match_matrix(matching, part, ax=ax, names=names)
    fig.suptitle("match matrix: score = " + " + ".join(
        f"{matching.settings.get(p + '_weight', 1):g} x {p}" for p in PARTS[1:]), fontsize=11)
    return fig


def _partners(matching: Matching, n_content: int) -> dict[tuple[int, int], list[int]]:
    """(image, region) -> the content regions drawn there: each matched content region and its partner."""
    assigned: dict[tuple[int, int], list[int]] = {}
    for r in range(n_content):
        if r < len(matching.matches) and matching.matches[r] is not None:
            reference, region = matching.matches[r]
            assigned.setdefault((0, r), []).append(r)
            assigned.setdefault((reference + 1, int(region)), []).append(r)
    return assigned


def _label(ax: Axes, labels: np.ndarray, region: int, shape: tuple[int, int], text: str, colour) -> None:
    """``text`` in a box of ``colour`` at the point deepest inside ``region`` of the grid ``labels``, on an
    image of ``shape`` (H, W)."""
    row, col = label_spot(labels == region)
    ax.text((col + 0.5) * shape[1] / labels.shape[1], (row + 0.5) * shape[0] / labels.shape[0], text, ha="center",
            va="center", fontsize=10, fontweight="bold", color="white", bbox=text_box(colour))


def matched_pairs(prepared: Prepared, segmentation: Segmentation, matching: Matching) -> Figure:
    """Content and references side by side; each content region and its matched style region share a colour.

    Regions not involved in any match are faded; numbers name the content region(s) each area belongs to.
    """
    count = len(prepared.names)
    names = image_names(prepared.names)
    labels = [to_numpy(segmentation.labels[i]).astype(np.int64) for i in range(count)]
    n_content = int(labels[0].max()) + 1
    palette = region_palette(n_content)
    assigned = _partners(matching, n_content)
    columns = min(n_content, 3)
    fig, axes = new_figure((max(3.3 * count, 9.0), 3.9 + 0.3 * -(-n_content // columns)), 1, count)
    for i, ax in enumerate(axes[0]):
        rgb = rgb_array(prepared.pixels[i]).astype(np.float64)
        full = upsample_labels(labels[i], rgb.shape[:2])
        out = 0.35 * rgb + 0.65 * 245.0  # faded by default
        mine = [(region, owners) for (image, region), owners in assigned.items() if image == i]
        for region, owners in mine:
            mask = full == region
            out[mask] = 0.4 * rgb[mask] + 0.6 * palette[owners[0]]
            _label(ax, labels[i], region, rgb.shape[:2], ",".join(str(o) for o in owners), palette[owners[0]] / 255)
        ax.imshow(np.clip(np.round(out), 0, 255).astype(np.uint8))
        outline(ax, full, [region for region, _ in mine], [palette[owners[0]] / 255 for _, owners in mine], 2.5)
        ax.set_title(image_title(prepared, i), fontsize=11)
        ax.set_axis_off()

    handles = []
    for r in range(n_content):
        match = matching.matches[r] if r < len(matching.matches) else None
        if match is None:
            handles.append(Patch(facecolor="#f0f0f0", edgecolor=KEEP_COLOUR, label=f"{r}: keep content"))
        else:
            tag = " (override)" if r in matching.overridden else ""
            label = f"{r} -> {names[match[0] + 1]}, region {match[1]}{tag}"
            handles.append(Patch(facecolor=palette[r] / 255, label=label))
    fig.legend(handles=handles, loc="outside lower center", ncol=columns, fontsize=11, frameon=False,
               handlelength=1.5, columnspacing=2.0)
    return fig


def match_circles(prepared: Prepared, segmentation: Segmentation, matching: Matching) -> Figure:
    """The geometric part drawn: the enclosing circle (``matching.enclosing_circles``) of every matched content
    region and of its partner, in the content region's colour, with a + at the centre.

    Circles are clipped to the picture; each number sits inside its region and names the content region(s)
    matched there.
    """
    count = len(prepared.names)
    labels = [to_numpy(segmentation.labels[i]).astype(np.int64) for i in range(count)]
    n_content = int(labels[0].max()) + 1
    palette = region_palette(n_content) / 255
    fig, axes = new_figure((3.3 * count, 3.6), 1, count)
    for i, ax in enumerate(axes[0]):
        rgb = rgb_array(prepared.pixels[i])
        height, width = rgb.shape[:2]
        ax.imshow(rgb)
        scale = height / labels[i].shape[0]
        circles = enclosing_circles(torch.from_numpy(labels[i])).numpy() * labels[i].shape[0]  # grid units
        for (image, region), owners in _partners(matching, n_content).items():
            if image != i:
                continue
            cy, cx, radius = (circles[region] + [0.5, 0.5, 0.0]) * scale - [0.5, 0.5, 0.0]
            colour = palette[owners[0]]
            ax.add_patch(Circle((cx, cy), radius, fill=False, linewidth=2.5, edgecolor=colour))
            ax.plot([cx], [cy], marker="+", markersize=10, markeredgewidth=2, color=colour)
            _label(ax, labels[i], region, (height, width), ",".join(str(o) for o in owners), colour)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_title(image_title(prepared, i), fontsize=11)
        ax.set_axis_off()
    return fig
