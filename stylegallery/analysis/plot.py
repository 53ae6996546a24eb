"""Static matplotlib figures of every stage's result (no Jupyter imports); public as ``stylegallery.plot``.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so nothing pops up and no
figure is kept alive by a global registry; save it with ``fig.savefig(path)``, or leave it as the last
expression of a notebook cell to see it. Functions that draw a single panel accept ``ax=`` to draw into an
existing axes instead (the figure returned is then that axes' figure). The figures of stage 3 are in
:mod:`.match_plots`, and this module hands them on.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from ..images import rgb_array
from ..results import Inversion, Prepared, Stylization
from .figures import (KEEP_COLOUR, MATCH_COLOUR, image_title, label_cells, new_figure, outline, plural, reference_name,
                      single_axes, style_region_axis)
from .match_plots import match_circles, match_matrix, match_parts, matched_pairs
from .pictures import heat_picture, image_names, overlay_array, region_palette, to_numpy, upsample_labels

__all__ = [
    "attention_map", "before_after", "feature_pca", "image_names", "loss_curves", "match_circles", "match_matrix", "match_parts",
    "matched_pairs", "overlay_array", "pca_image", "region_overlay", "region_palette", "region_scores", "silhouette_curve",
    "trajectory", "upsample_labels", "windows",
]


# ---------------------------------------------------------------------------------------------- regions
def region_overlay(image, labels, alpha: float = 0.5, ax: Axes | None = None, legend: bool = True) -> Figure:
    """The image with its regions coloured; the legend gives each region's id and share of the pixels."""
    fig, ax = single_axes(ax, (5.5, 4.5))
    blended = overlay_array(image, labels, alpha)
    ax.imshow(blended)
    ax.set_axis_off()
    grid = to_numpy(labels).astype(np.int64)
    n = int(grid.max()) + 1 if grid.size else 0
    outline(ax, upsample_labels(grid, blended.shape[:2]), range(n), ["white"] * n, linewidth=0.8)
    if legend and n:
        counts = np.bincount(grid[grid >= 0].ravel(), minlength=n)
        share = counts / max(int(counts.sum()), 1)
        palette = region_palette(n) / 255.0
        handles = [Patch(facecolor=palette[r], edgecolor="none", label=f"region {r} ({share[r]:.0%})") for r in range(n)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False,
                  title=plural(n, "region"))
    return fig


def silhouette_curve(scores: dict, chosen: int | None = None, ax: Axes | None = None) -> Figure:
    """Silhouette score against k (``Segmentation.silhouette[i]``, keys may be str), with the chosen k marked.

    ``chosen=None`` marks the best k, which is what the segmentation picks.
    """
    fig, ax = single_axes(ax, (5, 3.2))
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

    array = to_numpy(features).astype(np.float64)
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
    fig, ax = single_axes(ax, (4, 4))
    array = to_numpy(features)
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
    fig, axes = new_figure((2.1 * len(chosen), 2.6), 1, len(chosen))
    for ax, step in zip(axes[0], chosen):
        latent = path[step]
        if decode is not None:
            ax.imshow(rgb_array(decode(latent[None])))
        else:
            ax.imshow(_latent_rgb(to_numpy(latent)), interpolation="nearest")
        ax.set_title("clean latent" if step == 0 else f"step {step}: t = {inversion.timesteps[step - 1]}", fontsize=9)
        ax.set_axis_off()
    shown = "decoded" if decode is not None else "latent channels 0-2"
    fig.suptitle(f"DDIM inversion of image {index} ({shown})", fontsize=11)
    return fig


# ---------------------------------------------------------------------------------------------- stylization
def attention_map(prepared: Prepared, maps, point: int = 0) -> Figure:
    """The content image with point ``point`` of ``maps`` (:class:`~stylegallery.attention_maps.AttentionMaps`)
    marked, and each reference with that point's attention weights as a heat map, its matched style region
    outlined, and the share of the weight inside that region in the title."""
    count = len(prepared.names)
    names = image_names(prepared.names)
    fig, axes = new_figure((3.3 * count, 3.7), 1, count)
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
    for j, ax in enumerate(axes[0, 1:]):
        rgb = rgb_array(prepared.pixels[j + 1])
        ax.imshow(heat_picture(rgb, maps.maps[point][j], top))  # the reference in grey under the heat map
        inside = upsample_labels(np.asarray(maps.inside[point][j], dtype=np.int64), rgb.shape[:2])
        if inside.any():
            outline(ax, inside, [1], [(0.3, 1.0, 0.3)], 2.5)
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
    fig, ax = single_axes(ax, (6, 3.6))
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
        ax.set_title(f"{plural(len(history), 'step')}, timestep {first} -> {last}", fontsize=10)
    return fig


def before_after(prepared: Prepared, stylization: Stylization) -> Figure:
    """A strip: content | result | each reference."""
    panels = [(prepared.pixels[0], image_title(prepared, 0))]
    note = ", stopped early" if stylization.stopped_early else ""
    panels.append((stylization.pixels, f"result ({plural(len(stylization.history), 'step')}{note})"))
    panels += [(prepared.pixels[i], image_title(prepared, i)) for i in range(1, len(prepared.names))]
    fig, axes = new_figure((3.2 * len(panels), 3.5), 1, len(panels))
    for ax, (pixels, title) in zip(axes[0], panels):
        ax.imshow(rgb_array(pixels))
        ax.set_title(title, fontsize=10, fontweight="bold" if title.startswith("result") else "normal")
        ax.set_axis_off()
    return fig


def windows(image, plan, highlight: int | None = None) -> Figure:
    """How the windows of a refinement at the output size (``StyleGallery.window_plan``) cover ``image``: every
    window outlined over the picture, and the blend weight of one window (``highlight``, default the one nearest the
    centre): 1 inside, ramping down across each overlap, 0 at its own edge inside the picture."""
    picture = rgb_array(image)
    height, width = plan.pixel_size
    if picture.shape[:2] != (height, width):
        raise ValueError(f"the image is {picture.shape[1]}x{picture.shape[0]} px but the plan covers {width}x{height}")
    if highlight is None:
        centre = (plan.grid[0] / 2, plan.grid[1] / 2)
        highlight = min(range(len(plan.windows)), key=lambda i: (plan.windows[i].top + plan.windows[i].height / 2
                                                                   - centre[0]) ** 2
                        + (plan.windows[i].left + plan.windows[i].width / 2 - centre[1]) ** 2)
    fig, axes = new_figure((11, 4.4 * height / width + 0.6), 1, 2)
    left, right = axes[0]
    left.imshow(picture)
    palette = region_palette(max(len(plan.windows), 1)) / 255.0
    for i, window in enumerate(plan.windows):
        inset = 6 * (i % 3)  # overlapping outlines stay apart
        left.add_patch(Rectangle((window.left * 8 + inset, window.top * 8 + inset), window.width * 8 - 2 * inset,
                                 window.height * 8 - 2 * inset, fill=False, edgecolor=palette[i],
                                 linewidth=2.5 if i == highlight else 1.2))
    left.set_title(f"{plural(len(plan.windows), 'window')} of {plan.window * 8} px every {plan.stride * 8} px over "
                   f"{width}x{height}", fontsize=10)
    left.set_axis_off()
    weight = torch.zeros(plan.grid)
    chosen = plan.windows[highlight]
    weight[chosen.slices] = plan.weights[highlight]
    shown = right.imshow(weight.numpy(), cmap="magma", vmin=0, vmax=1, extent=(0, width, height, 0),
                         interpolation="nearest")
    right.add_patch(Rectangle((chosen.left * 8, chosen.top * 8), chosen.width * 8, chosen.height * 8, fill=False,
                              edgecolor=palette[highlight], linewidth=2.5))
    right.set_title(f"blend weight of window {highlight}", fontsize=10)
    right.set_axis_off()
    fig.colorbar(shown, ax=right, fraction=0.04)
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
    fig, axes = new_figure((max(7.5, 0.75 * cols + 6.0), max(3.2, 0.6 * rows + 2.0)), 1, 2,
                     gridspec_kw={"width_ratios": [max(cols, 2), 2.5]})
    ax, bars = axes[0]
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis_r", aspect="auto", interpolation="nearest",
                      vmin=low, vmax=high if high > low else low + 1.0)
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02, label="colour distance (Lab)").ax.tick_params(labelsize=8)
    # viridis_r is dark at the high end: white text above 40% of the range
    label_cells(ax, values, 1, lambda share: share is not None and share > 0.4)
    columns = [tuple(col) for col in scores.columns]
    style_region_axis(ax, columns, names)
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
            ticks.append(f"{r} -> {reference_name(names, match[0])}/{match[1]}")
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
