"""Building blocks of the figures of :mod:`.plot` and :mod:`.match_plots`: figures without pyplot that show themselves
in Jupyter, one-panel axes, region outlines and labels, matrix cell labels and the style-region axis."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from ..results import Prepared
from .pictures import image_names

def plural(count: int, noun: str) -> str:
    """``"1 region"``, ``"3 regions"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


#: The colours of a match, a user's override and a region that keeps its content, in every figure.
MATCH_COLOUR, OVERRIDE_COLOUR, KEEP_COLOUR = "#e8112d", "#ff9f1c", "#7f7f7f"


class ReprFigure(Figure):
    """A plain matplotlib Figure that also shows itself as a PNG in IPython/Jupyter (no IPython import)."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


def new_figure(figsize, nrows: int = 1, ncols: int = 1, **kwargs):
    fig = ReprFigure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def single_axes(ax: Axes | None, figsize) -> tuple[Figure, Axes]:
    """(figure, axes): a new one-panel figure, or ``ax`` and the figure it belongs to."""
    if ax is None:
        fig, axes = new_figure(figsize)
        return fig, axes[0, 0]
    try:
        return ax.get_figure(root=True), ax
    except TypeError:  # matplotlib < 3.10
        fig = ax.figure
        while getattr(fig, "figure", fig) is not fig:
            fig = fig.figure
        return fig, ax


def image_title(prepared: Prepared, index: int) -> str:
    name = image_names(prepared.names)[index]
    return name if index or name == "content" else f"content: {name}"


def reference_name(names: Sequence[str] | None, reference: int) -> str:
    """Name of style image ``reference`` (0 = the first reference)."""
    return names[reference] if names else f"style {reference + 1}"


def label_spot(mask: np.ndarray) -> tuple[float, float]:
    """A point well inside ``mask`` (the pixel farthest from its border), as (row, col)."""
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return float(row), float(col)


def outline(ax: Axes, full: np.ndarray, regions, colours, linewidth: float) -> None:
    """Draw the border of each region of the (H, W) label map ``full``."""
    for region, colour in zip(regions, colours):
        mask = (full == region).astype(np.float64)
        if 0 < mask.sum() < mask.size:
            ax.contour(mask, levels=[0.5], colors=[colour], linewidths=linewidth)


def text_box(colour) -> dict:
    return dict(boxstyle="round,pad=0.2", facecolor=colour, edgecolor="white", linewidth=0.8, alpha=0.9)


def label_cells(ax: Axes, values: np.ndarray, digits: int, white) -> None:
    """Write each finite value of a matrix of at most 200 cells in its cell; ``white(share)`` says whether the text
    is white, from the value's place between the finite minimum and maximum (None when they are equal)."""
    rows, cols = values.shape
    finite = values[np.isfinite(values)]
    if rows * cols > 200 or not finite.size:
        return
    low, span = float(finite.min()), float(finite.max() - finite.min())
    for r in range(rows):
        for c in range(cols):
            if np.isfinite(values[r, c]):
                share = (values[r, c] - low) / span if span > 0 else None
                ax.text(c, r, f"{values[r, c]:.{digits}f}", ha="center", va="center", fontsize=7,
                        color="white" if white(share) else "black")


def style_region_axis(ax: Axes, columns: Sequence[tuple[int, int]], names: Sequence[str] | None) -> None:
    """The x axis of a matrix whose columns are (reference, style region): region numbers below, each reference's
    name above its columns, a white line between references."""
    references = [ref for ref, _ in columns]
    top = blended_transform_factory(ax.transData, ax.transAxes)
    starts = [0] + [j for j in range(1, len(columns)) if references[j] != references[j - 1]]
    for a, b in zip(starts, starts[1:] + [len(columns)]):
        if a:
            ax.axvline(a - 0.5, color="white", linewidth=3, zorder=0.5)
        if columns:
            ax.text((a + b - 1) / 2, 1.01, reference_name(names, references[a]), transform=top, ha="center",
                    va="bottom", fontsize=9, fontweight="bold")
    ax.set_xticks(range(len(columns)), [str(region) for _, region in columns], fontsize=8)
    ax.set_xlabel("style region")
