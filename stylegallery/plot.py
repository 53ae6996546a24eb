"""Static matplotlib figures of every stage's result (no Jupyter imports).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so nothing pops up and no
figure is kept alive by a global registry; save it with ``fig.savefig(path)``, or leave it as the last
expression of a notebook cell to see it. Functions that draw a single panel accept ``ax=`` to draw into an
existing axes instead (the figure returned is then that axes' figure).
"""

from __future__ import annotations

import io
from typing import Callable, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.patches import Circle, Patch, Rectangle
from matplotlib.transforms import blended_transform_factory
from PIL import Image

from .images import rgb_array
from .matching import enclosing_circles
from .results import Inversion, Matching, Prepared, Segmentation, Stylization

__all__ = [
    "attention_map", "before_after", "feature_pca", "image_names", "loss_curves", "match_circles", "match_matrix", "match_parts",
    "matched_pairs", "overlay_array", "pca_image", "region_overlay", "region_palette", "region_scores", "silhouette_curve",
    "trajectory", "upsample_labels",
]

PARTS = ("score", "statistical", "semantic", "geometric")
MATCH_COLOUR, OVERRIDE_COLOUR, KEEP_COLOUR = "#e8112d", "#ff9f1c", "#7f7f7f"


class _Figure(Figure):
    """A plain matplotlib Figure that also shows itself as a PNG in IPython/Jupyter (no IPython import)."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


def _new(figsize, nrows: int = 1, ncols: int = 1, **kwargs):
    fig = _Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def _single(ax: Axes | None, figsize) -> tuple[Figure, Axes]:
    """(figure, axes): a new one-panel figure, or ``ax`` and the figure it belongs to."""
    if ax is None:
        fig, axes = _new(figsize)
        return fig, axes[0, 0]
    try:
        return ax.get_figure(root=True), ax
    except TypeError:  # matplotlib < 3.10
        fig = ax.figure
        while getattr(fig, "figure", fig) is not fig:
            fig = fig.figure
        return fig, ax


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu").numpy()
    return np.asarray(x)


def upsample_labels(labels, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) label map resized to ``size`` = (H, W) with nearest neighbour."""
    labels = _numpy(labels).astype(np.int64)
    if labels.ndim != 2:
        raise ValueError(f"expected a (h, w) label map, got shape {labels.shape}")
    h, w = labels.shape
    rows = np.minimum((np.arange(size[0]) * h) // size[0], h - 1)
    cols = np.minimum((np.arange(size[1]) * w) // size[1], w - 1)
    return labels[rows[:, None], cols[None, :]]


def image_names(names: Sequence[str]) -> list[str]:
    """Short names for the images of ``Prepared.names`` (content first): each file name without its extension and
    a leading ``content_`` or ``style_`` (``style_brick.jpg`` -> ``brick``); ``content`` and ``style 1``, ... for
    images given in memory."""
    short = []
    for index, name in enumerate(names):
        stem = "" if name in ("", "image") else name.rsplit(".", 1)[0].removeprefix("content_").removeprefix("style_")
        short.append(stem or ("content" if index == 0 else f"style {index}"))
    return short


def _title(prepared: Prepared, index: int) -> str:
    name = image_names(prepared.names)[index]
    return name if index or name == "content" else f"content: {name}"


def _reference(names: Sequence[str] | None, reference: int) -> str:
    """Name of style image ``reference`` (0 = the first reference)."""
    return names[reference] if names else f"style {reference + 1}"


def _label_spot(mask: np.ndarray) -> tuple[float, float]:
    """A point well inside ``mask`` (the pixel farthest from its border), as (row, col)."""
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return float(row), float(col)


def _outline(ax: Axes, full: np.ndarray, regions, colours, linewidth: float) -> None:
    """Draw the border of each region of the (H, W) label map ``full``."""
    for region, colour in zip(regions, colours):
        mask = (full == region).astype(np.float64)
        if 0 < mask.sum() < mask.size:
            ax.contour(mask, levels=[0.5], colors=[colour], linewidths=linewidth)


def _text_box(colour) -> dict:
    return dict(boxstyle="round,pad=0.2", facecolor=colour, edgecolor="white", linewidth=0.8, alpha=0.9)


# ---------------------------------------------------------------------------------------------- regions
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


def region_overlay(image, labels, alpha: float = 0.5, ax: Axes | None = None, legend: bool = True) -> Figure:
    """The image with its regions coloured; the legend gives each region's id and share of the pixels."""
    fig, ax = _single(ax, (5.5, 4.5))
    blended = overlay_array(image, labels, alpha)
    ax.imshow(blended)
    ax.set_axis_off()
    grid = _numpy(labels).astype(np.int64)
    n = int(grid.max()) + 1 if grid.size else 0
    _outline(ax, upsample_labels(grid, blended.shape[:2]), range(n), ["white"] * n, linewidth=0.8)
    if legend and n:
        counts = np.bincount(grid[grid >= 0].ravel(), minlength=n)
        share = counts / max(int(counts.sum()), 1)
        palette = region_palette(n) / 255.0
        handles = [Patch(facecolor=palette[r], edgecolor="none", label=f"region {r} ({share[r]:.0%})") for r in range(n)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False,
                  title=f"{n} regions")
    return fig


def silhouette_curve(scores: dict, chosen: int | None = None, ax: Axes | None = None) -> Figure:
    """Silhouette score against k (``Segmentation.silhouette[i]``, keys may be str), with the chosen k marked.

    ``chosen=None`` marks the best k, which is what the segmentation picks.
    """
    fig, ax = _single(ax, (5, 3.2))
    ks = sorted(int(k) for k in scores)
    values = [float(scores[str(k)] if str(k) in scores else scores[k]) for k in ks]
    ax.plot(ks, values, "o-", color="#1f77b4", label="silhouette")
    if chosen is None and ks:
        chosen, label = ks[int(np.argmax(values))], "best k"
    else:
        label = "chosen k"
    if chosen is not None:
        ax.axvline(chosen, color=MATCH_COLOUR, linestyle=":", linewidth=1)
        if chosen in ks:
            ax.plot([chosen], [values[ks.index(chosen)]], marker="*", markersize=16, color=MATCH_COLOUR,
                    linestyle="none", label=f"{label} = {chosen}")
        else:
            ax.plot([], [], color=MATCH_COLOUR, linestyle=":", label=f"{label} = {chosen} (not scored)")
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel("silhouette score")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return fig


def pca_image(features) -> np.ndarray:
    """The first three principal components of (C, h, w) features as an (h, w, 3) image of floats in [0, 1]."""
    from sklearn.decomposition import PCA

    array = _numpy(features).astype(np.float64)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"expected (C, h, w) features, got shape {array.shape}")
    c, h, w = array.shape
    points = array.reshape(c, -1).T
    k = min(3, c, points.shape[0])
    projected = PCA(n_components=k, random_state=0).fit_transform(points)
    out = np.zeros((h * w, 3))
    low, high = projected.min(0), projected.max(0)
    out[:, :k] = (projected - low) / np.where(high > low, high - low, 1.0)
    return np.clip(out.reshape(h, w, 3), 0.0, 1.0)


def feature_pca(features, ax: Axes | None = None) -> Figure:
    """The (C, h, w) features shown as an RGB picture of their first three principal components."""
    fig, ax = _single(ax, (4, 4))
    array = _numpy(features)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    ax.imshow(pca_image(array), interpolation="nearest")
    c, h, w = array.shape
    ax.set_title(f"features: 3-component PCA\n({c} channels, {h}x{w} grid)", fontsize=10)
    ax.set_axis_off()
    return fig


# ---------------------------------------------------------------------------------------------- inversion
def _latent_rgb(latent: np.ndarray) -> np.ndarray:
    """First three channels of a (4, h, w) latent, each stretched to [0, 1] by its 1st-99th percentile."""
    channels = latent[:3].astype(np.float64)
    low = np.percentile(channels, 1, axis=(1, 2), keepdims=True)
    high = np.percentile(channels, 99, axis=(1, 2), keepdims=True)
    return np.clip((channels - low) / np.where(high > low, high - low, 1.0), 0, 1).transpose(1, 2, 0)


def trajectory(inversion: Inversion, index: int = 0, count: int = 6,
               decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Figure:
    """Thumbnails of ``count`` evenly spaced latents of the inversion trajectory of image ``index``.

    With ``decode`` (latent (1, 4, h, w) -> uint8 (3, H, W), e.g. ``pipe.decode``) the latents are decoded;
    otherwise their first three channels are shown, each normalised. Step 0 is the clean latent.
    """
    path = inversion.trajectories[index]
    n = path.shape[0]
    chosen = sorted(set(np.round(np.linspace(0, n - 1, max(1, min(count, n)))).astype(int).tolist()))
    fig, axes = _new((2.1 * len(chosen), 2.6), 1, len(chosen))
    for ax, step in zip(axes[0], chosen):
        latent = path[step]
        if decode is not None:
            ax.imshow(rgb_array(decode(latent[None])))
        else:
            ax.imshow(_latent_rgb(_numpy(latent)), interpolation="nearest")
        ax.set_title("clean latent" if step == 0 else f"step {step}: t = {inversion.timesteps[step - 1]}", fontsize=9)
        ax.set_axis_off()
    shown = "decoded" if decode is not None else "latent channels 0-2"
    fig.suptitle(f"DDIM inversion of image {index} ({shown})", fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------- matching
def _label_cells(ax: Axes, values: np.ndarray, digits: int, white) -> None:
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


def _style_region_axis(ax: Axes, columns: Sequence[tuple[int, int]], names: Sequence[str] | None) -> None:
    """The x axis of a matrix whose columns are (reference, style region): region numbers below, each reference's
    name above its columns, a white line between references."""
    references = [ref for ref, _ in columns]
    top = blended_transform_factory(ax.transData, ax.transAxes)
    starts = [0] + [j for j in range(1, len(columns)) if references[j] != references[j - 1]]
    for a, b in zip(starts, starts[1:] + [len(columns)]):
        if a:
            ax.axvline(a - 0.5, color="white", linewidth=3, zorder=0.5)
        if columns:
            ax.text((a + b - 1) / 2, 1.01, _reference(names, references[a]), transform=top, ha="center",
                    va="bottom", fontsize=9, fontweight="bold")
    ax.set_xticks(range(len(columns)), [str(region) for _, region in columns], fontsize=8)
    ax.set_xlabel("style region")


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
    values = _numpy(getattr(matching, part)).astype(np.float64)
    rows, cols = values.shape
    fig, ax = _single(ax, (max(4.5, 0.75 * cols + 2.5), max(3.0, 0.6 * rows + 1.8)))
    image = ax.imshow(values, cmap="viridis", aspect="auto", interpolation="nearest")
    colourbar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    colourbar.ax.tick_params(labelsize=8)

    # viridis is dark at the low end: white text up to 60% of the range
    _label_cells(ax, values, 2, lambda share: share is None or share <= 0.6)

    columns = [tuple(col) for col in matching.columns]
    _style_region_axis(ax, columns, names)

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
    fig, axes = _new((2 * max(4.5, 0.75 * cols + 2.5), 2 * max(3.0, 0.6 * rows + 1.8)), 2, 2)
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
    row, col = _label_spot(labels == region)
    ax.text((col + 0.5) * shape[1] / labels.shape[1], (row + 0.5) * shape[0] / labels.shape[0], text, ha="center",
            va="center", fontsize=10, fontweight="bold", color="white", bbox=_text_box(colour))


def matched_pairs(prepared: Prepared, segmentation: Segmentation, matching: Matching) -> Figure:
    """Content and references side by side; each content region and its matched style region share a colour.

    Regions not involved in any match are faded; numbers name the content region(s) each area belongs to.
    """
    count = len(prepared.names)
    names = image_names(prepared.names)
    labels = [_numpy(segmentation.labels[i]).astype(np.int64) for i in range(count)]
    n_content = int(labels[0].max()) + 1
    palette = region_palette(n_content)
    assigned = _partners(matching, n_content)
    columns = min(n_content, 3)
    fig, axes = _new((max(3.3 * count, 9.0), 3.9 + 0.3 * -(-n_content // columns)), 1, count)
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
        _outline(ax, full, [region for region, _ in mine], [palette[owners[0]] / 255 for _, owners in mine], 2.5)
        ax.set_title(_title(prepared, i), fontsize=11)
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
    labels = [_numpy(segmentation.labels[i]).astype(np.int64) for i in range(count)]
    n_content = int(labels[0].max()) + 1
    palette = region_palette(n_content) / 255
    fig, axes = _new((3.3 * count, 3.6), 1, count)
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
        ax.set_title(_title(prepared, i), fontsize=11)
        ax.set_axis_off()
    return fig


# ---------------------------------------------------------------------------------------------- stylization
def attention_map(prepared: Prepared, maps, point: int = 0) -> Figure:
    """The content image with point ``point`` of ``maps`` (:class:`~stylegallery.attention_maps.AttentionMaps`)
    marked, and each reference with that point's attention weights as a heat map, its matched style region
    outlined, and the share of the weight inside that region in the title."""
    count = len(prepared.names)
    names = image_names(prepared.names)
    fig, axes = _new((3.3 * count, 3.7), 1, count)
    content = rgb_array(prepared.pixels[0])
    axes[0, 0].imshow(content)
    where = maps.points[point]
    if isinstance(where, (int, np.integer)):
        axes[0, 0].set_title(f"{names[0]}: region {where}", fontsize=11)
    else:
        axes[0, 0].plot([where[1]], [where[0]], marker="+", color="white", markersize=16, markeredgewidth=3)
        axes[0, 0].plot([where[1]], [where[0]], marker="+", color="black", markersize=12, markeredgewidth=1.5)
        axes[0, 0].set_title(f"{names[0]}: point ({int(where[0])}, {int(where[1])}), region {maps.regions[point]}",
                             fontsize=11)
    axes[0, 0].set_axis_off()
    top = max(float(m.max()) for m in maps.maps[point]) or 1.0
    heat = colormaps["inferno"]
    for j, ax in enumerate(axes[0, 1:]):
        rgb = rgb_array(prepared.pixels[j + 1]).astype(np.float64)
        weights = np.asarray(Image.fromarray(maps.maps[point][j].astype(np.float32)).resize(
            (rgb.shape[1], rgb.shape[0]), Image.Resampling.NEAREST))
        coloured = heat(np.clip(weights / top, 0, 1))[..., :3] * 255
        grey = rgb.mean(axis=2, keepdims=True)  # the reference in grey under the colours of the heat map
        ax.imshow(np.round(0.3 * grey + 0.7 * coloured).astype(np.uint8))
        inside = upsample_labels(np.asarray(maps.inside[point][j], dtype=np.int64), rgb.shape[:2])
        if inside.any():
            _outline(ax, inside, [1], [(0.3, 1.0, 0.3)], 2.5)
        share = float(maps.maps[point][j].sum())
        ax.set_title(f"{names[j + 1]}: {share:.0%} of the weight", fontsize=11)
        ax.set_axis_off()
    match = maps.matches[point]
    inside_share = maps.share_inside[point]
    fig.suptitle(f'{maps.mode} attention at t = {maps.timestep}, layer {maps.layer}: '
                 + ("keeps its content (no style attention)" if match is None else
                    f"{inside_share:.0%} inside the matched region (green outline)"), fontsize=11)
    return fig


def loss_curves(history: list[dict], ax: Axes | None = None) -> Figure:
    """Total, content and per-region style loss against the optimization step (``Stylization.history``)."""
    fig, ax = _single(ax, (6, 3.6))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if not history:
        ax.text(0.5, 0.5, "no steps yet", transform=ax.transAxes, ha="center", va="center", color="grey")
        return fig
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["total"] for h in history], color="black", linewidth=2, label="total")
    ax.plot(steps, [h["content"] for h in history], color="grey", linestyle="--", linewidth=1.5, label="content")
    regions = sorted({int(k) for h in history for k in h.get("style_per_region", {})})
    palette = region_palette(max(regions) + 1 if regions else 0) / 255.0
    for r in regions:
        ax.plot(steps, [h["style_per_region"].get(str(r), np.nan) for h in history], color=palette[r], linewidth=1.2,
                label=f"style, region {r}")
    if len(steps) == 1:
        for line in ax.get_lines():
            line.set_marker("o")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False, fontsize=8)
    first, last = history[0].get("timestep"), history[-1].get("timestep")
    if first is not None:
        ax.set_title(f"{len(history)} steps, timestep {first} -> {last}", fontsize=10)
    return fig


def before_after(prepared: Prepared, stylization: Stylization) -> Figure:
    """A strip: content | result | each reference."""
    panels = [(prepared.pixels[0], _title(prepared, 0))]
    note = ", stopped early" if stylization.stopped_early else ""
    panels.append((stylization.pixels, f"result ({len(stylization.history)} steps{note})"))
    panels += [(prepared.pixels[i], _title(prepared, i)) for i in range(1, len(prepared.names))]
    fig, axes = _new((3.2 * len(panels), 3.5), 1, len(panels))
    for ax, (pixels, title) in zip(axes[0], panels):
        ax.imshow(rgb_array(pixels))
        ax.set_title(title, fontsize=10, fontweight="bold" if title.startswith("result") else "normal")
        ax.set_axis_off()
    return fig


# ---------------------------------------------------------------------------------------------- evaluation
def region_scores(scores, names: Sequence[str] | None = None) -> Figure:
    """Per-region evaluation (:class:`~stylegallery.metrics.RegionScores`): a heat map of the colour distance
    (sliced Wasserstein in Lab) of each content region of the result (rows) to every style region (columns,
    grouped by reference), the matched one outlined in red (kept regions hatched grey) and the nearest marked
    with a dot; and a bar of each region's SSIM with the whole image's as a dashed line. ``names``: the
    references' names (e.g. ``image_names(prepared.names)[1:]``; default style 1, style 2, ...).
    """
    from matplotlib.lines import Line2D

    values = np.asarray(scores.colour, dtype=np.float64).reshape(len(scores.ssim), -1)
    rows, cols = values.shape
    fig, axes = _new((max(7.5, 0.75 * cols + 6.0), max(3.2, 0.6 * rows + 2.0)), 1, 2,
                     gridspec_kw={"width_ratios": [max(cols, 2), 2.5]})
    ax, bars = axes[0]
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis_r", aspect="auto", interpolation="nearest",
                      vmin=low, vmax=high if high > low else low + 1.0)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02, label="colour distance (Lab)").ax.tick_params(labelsize=8)
    # viridis_r is dark at the high end: white text above 40% of the range
    _label_cells(ax, values, 1, lambda share: share is not None and share > 0.4)
    columns = [tuple(col) for col in scores.columns]
    _style_region_axis(ax, columns, names)
    ticks = []
    for r in range(rows):
        match = scores.matches[r] if r < len(scores.matches) else None
        if np.isfinite(values[r]).any():
            nearest = int(np.nanargmin(values[r]))
            ax.plot([nearest + 0.32], [r - 0.3], marker="o", markersize=5, color="white", markeredgecolor="black",
                    linestyle="none", gid="nearest")
        if match is None:
            ax.add_patch(Rectangle((-0.5, r - 0.5), cols, 1, fill=False, hatch="//", edgecolor=KEEP_COLOUR,
                                   linewidth=1.5, gid="keep"))
            ticks.append(f"{r}: keep")
        else:
            if tuple(match) in columns:
                ax.add_patch(Rectangle((columns.index(tuple(match)) - 0.5, r - 0.5), 1, 1, fill=False, linewidth=2.5,
                                       edgecolor=MATCH_COLOUR, gid="match"))
            ticks.append(f"{r} -> {_reference(names, match[0])}/{match[1]}")
    ax.set_yticks(range(rows), ticks, fontsize=8)
    ax.set_ylabel("content region (in the result)")
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    handles = [Patch(fill=False, edgecolor=MATCH_COLOUR, linewidth=2, label="match"),
               Line2D([], [], marker="o", markersize=5, color="white", markeredgecolor="black", linestyle="none",
                      label="nearest")]
    if any(m is None for m in scores.matches):
        handles.append(Patch(fill=False, edgecolor=KEEP_COLOUR, hatch="//", label="keep content"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12 if rows > 2 else -0.25),
              ncol=len(handles), fontsize=8, frameon=False)

    ssim = np.asarray(scores.ssim, dtype=np.float64)
    palette = region_palette(rows) / 255.0
    bars.barh(range(rows), np.nan_to_num(ssim), color=palette, height=0.6)
    for r, value in enumerate(ssim):
        if np.isfinite(value):
            bars.text(max(value, 0.0) + 0.02, r, f"{value:.2f}", va="center", fontsize=8)
    bars.axvline(scores.ssim_whole, color="black", linestyle="--", linewidth=1,
                 label=f"whole image {scores.ssim_whole:.2f}")
    bars.set_xlim(min(0.0, float(np.nanmin(ssim)) if np.isfinite(ssim).any() else 0.0), 1.15)
    bars.set_ylim(rows - 0.5, -0.5)
    bars.set_yticks(range(rows), [str(r) for r in range(rows)], fontsize=8)
    bars.set_xlabel("SSIM of luminance (content vs result)")
    bars.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 if rows > 2 else -0.25), fontsize=8, frameon=False)
    bars.grid(axis="x", alpha=0.3)
    fig.suptitle("per-region evaluation: colour distance to every style region, content preservation", fontsize=11)
    return fig

