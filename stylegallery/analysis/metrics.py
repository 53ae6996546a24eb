"""Per-region evaluation of a stylization that needs no extra pretrained network.

For every content region, :func:`region_scores` measures

* **colour distance**: the sliced Wasserstein distance (:func:`sliced_wasserstein`) between the region's pixels in
  the result and the pixels of a style region, both in CIE Lab;
* **colour change**: the same distance between the region's pixels in the result and in the content image (how far
  the region's colours moved; ``keep_colours`` keeps it small);
* **latent-statistics distance**: the AdaIN-style distance (:func:`latent_stat_distance`) between the per-channel
  mean and standard deviation of SD's VAE latent (4 channels, latent resolution) of the stylized latent inside the
  region and of the style reference's latent inside a style region;
* **content preservation**: SSIM of luminance between the content image and the result (:func:`ssim`), for the
  whole image and averaged inside each region, and, through ``StyleGallery.region_scores``, stage 4's content
  loss per region (it needs the UNet);

each against the matched style region and against every style region of every reference, so one can check that
the region moved toward its match rather than toward another. :func:`lpips` adds LPIPS where the optional
``torchmetrics`` and its network weights are available. FID/ArtFID are not provided (they need an Inception
network and many images, not one result).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import StyleGalleryError
from ..images import rgb_array
from ..results import Matching, Prepared, Segmentation, Stylization
from .pictures import to_numpy, upsample_labels

__all__ = ["RegionScores", "latent_stat_distance", "latent_stats", "lab", "lpips", "projection_directions", "region_scores", "ssim",
           "sliced_wasserstein"]

#: Random projections, quantiles and the most pixels per region used by :func:`region_scores` for colours.
N_PROJECTIONS, N_QUANTILES, MAX_POINTS = 64, 256, 32768


# ------------------------------------------------------------------------------------------------ colour
def lab(image) -> np.ndarray:
    """An RGB image (PIL, (H, W, 3) or (3, H, W) uint8) in CIE Lab, as an (H, W, 3) float array."""
    from skimage.color import rgb2lab

    return rgb2lab(rgb_array(image))


def projection_directions(dims: int, n_projections: int, seed: int) -> np.ndarray:
    """``n_projections`` random unit vectors in ``dims`` dimensions, the same for the same seed: (P, dims)."""
    vectors = np.random.default_rng(seed).normal(size=(n_projections, dims))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _quantiles(points: np.ndarray, directions: np.ndarray, count: int, dtype=np.float64) -> np.ndarray:
    """The projections of ``points`` (n, d) on each direction, as ``count`` quantiles each: (P, count).

    The empirical quantile function (no interpolation) at the levels (i + 1/2) / count, so that sets of different
    sizes are compared at equal size; with exactly ``count`` points these are the sorted projections.
    """
    projected = np.sort(np.ascontiguousarray((points @ directions.T).T, dtype=dtype), axis=1)  # (P, n)
    n = projected.shape[1]
    if n == count:
        return projected
    # inverted CDF: the k-th smallest value, k = ceil(n (i + 1/2) / count), in exact integer arithmetic
    k = (n * (2 * np.arange(count) + 1) + 2 * count - 1) // (2 * count)
    return projected[:, k - 1]


def _sw(qa: np.ndarray, qb: np.ndarray) -> float:
    difference = qa.astype(np.float64) - qb
    return float(np.sqrt(np.mean(difference * difference)))


def sliced_wasserstein(a, b, n_projections: int = N_PROJECTIONS, seed: int = 0, n_quantiles: int | None = None) -> float:
    """Sliced 2-Wasserstein distance between the point sets ``a`` (n, d) and ``b`` (m, d).

    Both sets are projected onto ``n_projections`` random unit directions (fixed ``seed``: deterministic); each
    projection is summarised by ``n_quantiles`` quantiles (default ``max(n, m)``: exact for sets of equal size)
    and the distance is the root mean square difference of the quantiles over all projections (the exact sliced
    distance of the two empirical distributions when ``n_quantiles`` is a multiple of both sizes). Symmetric, 0 for
    a set and itself or a copy repeated; in the units of the points (Lab units for colours). Raises for an empty set.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise StyleGalleryError(f"expected two (n, d) point sets of the same d, got shapes {a.shape} and {b.shape}")
    if not len(a) or not len(b):
        raise StyleGalleryError("the sliced Wasserstein distance needs two non-empty point sets")
    count = n_quantiles or max(len(a), len(b))
    directions = projection_directions(a.shape[1], n_projections, seed)
    return _sw(_quantiles(a, directions, count), _quantiles(b, directions, count))


# ------------------------------------------------------------------------------------------------ latent
def latent_stats(latent, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (population) of a (C, h, w) or (1, C, h, w) latent, over the
    positions where the (h, w) boolean ``mask`` is true (all positions without one): two (C,) arrays."""
    array = to_numpy(latent).astype(np.float64)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise StyleGalleryError(f"expected a (C, h, w) latent, got shape {array.shape}")
    values = array.reshape(array.shape[0], -1)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != array.shape[1:]:
            raise StyleGalleryError(f"mask of shape {mask.shape} does not fit a latent of grid {array.shape[1:]}")
        values = values[:, mask.ravel()]
    if not values.shape[1]:
        raise StyleGalleryError("latent statistics of an empty region")
    return values.mean(1), values.std(1)


def latent_stat_distance(a, b, mask_a=None, mask_b=None) -> float:
    """AdaIN-style distance of SD latent statistics: ``|mean_a - mean_b| + |std_a - std_b|`` (Euclidean norms over
    the 4 VAE latent channels) between latent ``a`` inside ``mask_a`` and latent ``b`` inside ``mask_b``."""
    return _stat_distance(latent_stats(a, mask_a), latent_stats(b, mask_b))


def _stat_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    return float(np.linalg.norm(a[0] - b[0]) + np.linalg.norm(a[1] - b[1]))


# ------------------------------------------------------------------------------------------------ SSIM
def ssim(reference, image, labels=None) -> tuple[float, np.ndarray]:
    """SSIM of the luminance of two RGB images of the same size (data range 1): (whole image, per region).

    ``labels`` is an (h, w) region map (any grid; upsampled to the images with nearest neighbour); the second
    value is the SSIM map averaged inside each region 0..n-1 (NaN for a region without pixels), or an empty array
    without labels.
    """
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    x, y = rgb2gray(rgb_array(reference)), rgb2gray(rgb_array(image))
    if x.shape != y.shape:
        raise StyleGalleryError(f"SSIM needs images of one size, got {x.shape[::-1]} and {y.shape[::-1]} (W, H)")
    whole, full = structural_similarity(x, y, data_range=1.0, full=True)
    if labels is None:
        return float(whole), np.zeros(0)
    regions = upsample_labels(labels, x.shape)
    n = int(regions.max()) + 1 if regions.size else 0
    counts = np.bincount(regions.ravel(), minlength=n)
    sums = np.bincount(regions.ravel(), weights=full.ravel(), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_region = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return float(whole), per_region


# ------------------------------------------------------------------------------------------------ scores
def _value(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


@dataclass
class RegionScores:
    """Per-region evaluation of a stylization (see :func:`region_scores`). R content regions, C style regions.

    ``columns[j] = [reference, region]`` names column ``j`` (reference 0 = first style image), as in
    ``Matching.columns``; ``matches[r]`` is content region ``r``'s ``[reference, region]`` or ``None`` (kept).
    """

    columns: list[list[int]]
    matches: list
    colour: np.ndarray  # (R, C) sliced Wasserstein in Lab: result region vs each style region
    colour_before: np.ndarray  # (R, C) the same for the content image (before stylization)
    latent: np.ndarray  # (R, C) latent mean/std distance: stylized latent region vs each style region
    ssim: np.ndarray  # (R,) mean SSIM of luminance (content vs result) inside each region
    ssim_whole: float  # SSIM of luminance of the whole image
    share: np.ndarray  # (R,) share of the image's pixels in each region
    settings: dict = field(default_factory=dict)
    content_loss: np.ndarray | None = None  # (R,) stage 4's content loss per region (StyleGallery.region_scores)
    content_loss_whole: float | None = None
    colour_change: np.ndarray | None = None  # (R,) sliced Wasserstein in Lab: result region vs the same content region

    @property
    def n_regions(self) -> int:
        return len(self.ssim)

    def _matched(self, values: np.ndarray, region: int) -> float | None:
        match = self.matches[region] if region < len(self.matches) else None
        if match is None or list(match) not in self.columns:
            return None
        return _value(values[region, self.columns.index(list(match))])

    def _nearest(self, values: np.ndarray, region: int) -> list[int] | None:
        row = values[region]
        if not np.isfinite(row).any():
            return None
        return list(self.columns[int(np.nanargmin(row))])

    @property
    def moved_toward_match(self) -> list[bool | None]:
        """Per content region: is its matched style region the nearest in colour (``None`` for kept regions)?"""
        out = []
        for r in range(self.n_regions):
            match = self.matches[r] if r < len(self.matches) else None
            out.append(None if match is None else self._nearest(self.colour, r) == list(match))
        return out

    def table(self) -> list[dict]:
        """One JSON-serialisable row per content region: its match, the distances to the matched style region
        (after and, for colour, before stylization), the nearest style region by colour and by latent statistics,
        ``moved_toward_match``, its SSIM and pixel share."""
        rows = []
        moved = self.moved_toward_match
        for r in range(self.n_regions):
            match = self.matches[r] if r < len(self.matches) else None
            rows.append({
                "content_region": r,
                "style_image": None if match is None else int(match[0]),
                "style_region": None if match is None else int(match[1]),
                "share": _value(self.share[r]),
                "colour_distance": self._matched(self.colour, r),
                "colour_distance_before": self._matched(self.colour_before, r),
                "colour_change": None if self.colour_change is None else _value(self.colour_change[r]),
                "latent_stat_distance": self._matched(self.latent, r),
                "nearest_colour": self._nearest(self.colour, r),
                "nearest_latent": self._nearest(self.latent, r),
                "moved_toward_match": moved[r],
                "ssim": _value(self.ssim[r]),
                "content_loss": None if self.content_loss is None else _value(self.content_loss[r]),
            })
        return rows

    def as_dict(self) -> dict:
        """Everything as plain JSON-serialisable values (matrices as nested lists, NaN as ``None``)."""
        def matrix(values):
            return [[_value(v) for v in row] for row in np.asarray(values)]

        return {
            "columns": [list(map(int, c)) for c in self.columns],
            "matches": [None if m is None else list(map(int, m)) for m in self.matches],
            "colour": matrix(self.colour),
            "colour_before": matrix(self.colour_before),
            "colour_change": None if self.colour_change is None else [_value(v) for v in self.colour_change],
            "latent": matrix(self.latent),
            "ssim": [_value(v) for v in self.ssim],
            "ssim_whole": _value(self.ssim_whole),
            "content_loss": None if self.content_loss is None else [_value(v) for v in self.content_loss],
            "content_loss_whole": None if self.content_loss_whole is None else _value(self.content_loss_whole),
            "share": [_value(v) for v in self.share],
            "moved_toward_match": self.moved_toward_match,
            "settings": dict(self.settings),
            "regions": self.table(),
        }


def region_scores(prepared: Prepared, segmentation: Segmentation, matching: Matching, stylization: Stylization,
                  n_projections: int = N_PROJECTIONS, n_quantiles: int = N_QUANTILES, max_points: int | None = MAX_POINTS,
                  seed: int = 0, content_loss: tuple[float, np.ndarray] | None = None) -> RegionScores:
    """Evaluate ``stylization`` region by region against every style region (columns of ``matching.columns``).

    Colour: sliced Wasserstein distance in Lab (``n_projections`` directions from ``seed``, each set summarised by
    ``n_quantiles`` quantiles; a region of more than ``max_points`` pixels is represented by that many drawn at
    random with ``seed``, so results stay deterministic) between the result's pixels in each content region
    (``segmentation.labels[0]`` upsampled to the image) and the pixels of each style region of
    ``prepared.pixels[1 + reference]``; also from the content image, as a before value; and between the result's and the
    content's pixels in the same region (``colour_change``). Latent: :func:`latent_stat_distance` between ``stylization.latent`` in
    each content region and ``prepared.latents[1 + reference]`` in each style region. SSIM: :func:`ssim` of the
    content image and the result. ``content_loss``: (whole, per region) to record, as
    ``StyleGallery.content_loss_regions`` gives.
    """
    result = rgb_array(stylization.pixels)
    content = rgb_array(prepared.pixels[0])
    if result.shape != content.shape:
        raise StyleGalleryError(f"the result ({result.shape[1]}x{result.shape[0]}) and the content image "
                                f"({content.shape[1]}x{content.shape[0]}) differ in size")
    labels = [to_numpy(segmentation.labels[i]).astype(np.int64) for i in range(len(segmentation.labels))]
    n_content = int(labels[0].max()) + 1
    columns = [list(map(int, c)) for c in matching.columns]
    colours = _ColourSignatures(projection_directions(3, n_projections, seed), n_quantiles, max_points, seed)
    style_lab = {1 + j: lab(prepared.pixels[1 + j]) for j in sorted({ref for ref, _ in columns})}
    style_sig = [colours(style_lab[1 + ref], labels[1 + ref], [region])[0] for ref, region in columns]
    result_sig = colours(lab(result), labels[0], range(n_content))
    content_sig = colours(lab(content), labels[0], range(n_content))
    result_colour, content_colour = _sw_matrix(result_sig, style_sig), _sw_matrix(content_sig, style_sig)
    change = np.array([_sw_matrix([a], [b])[0, 0] for a, b in zip(result_sig, content_sig)])
    latent = _latent_distances(stylization.latent, labels, prepared.latents, columns, n_content)
    whole, per_region = ssim(content, result, labels[0])
    per_region = np.concatenate([per_region, np.full(max(0, n_content - len(per_region)), np.nan)])[:n_content]
    full = upsample_labels(labels[0], content.shape[:2])
    share = np.bincount(full.ravel(), minlength=n_content)[:n_content] / full.size
    matches = [list(map(int, matching.matches[r])) if r < len(matching.matches) and matching.matches[r] is not None
               else None for r in range(n_content)]
    settings = dict(n_projections=n_projections, n_quantiles=n_quantiles, max_points=max_points, seed=seed,
                    colour_space="Lab")
    if content_loss is not None and len(content_loss[1]) != n_content:
        raise StyleGalleryError("the content loss does not belong to this segmentation")
    return RegionScores(columns, matches, result_colour, content_colour, latent, per_region, whole,
                        share, settings, None if content_loss is None else np.asarray(content_loss[1], float),
                        None if content_loss is None else float(content_loss[0]), change)


# ------------------------------------------------------------------------------------------------ LPIPS
_INSTALL = "pip install 'stylegallery[metrics]' (torchmetrics and torchvision)"
_TORCHVISION_WEIGHTS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


def _offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "STYLEGALLERY_OFFLINE"))


def lpips(content_image, result_image, net: str = "alex") -> float:
    """LPIPS (learned perceptual distance; lower = more alike) between two RGB images of one size, through the
    optional ``torchmetrics`` (``pip install 'stylegallery[metrics]'``).

    The backbone's ImageNet weights come from torchvision's download cache (``torch.hub.get_dir()``); they are
    downloaded on first use, except offline (``HF_HUB_OFFLINE=1`` or ``STYLEGALLERY_OFFLINE=1``), where missing
    weights raise :class:`StyleGalleryError` saying which file to fetch.
    """
    if net not in _TORCHVISION_WEIGHTS:
        raise StyleGalleryError(f"net must be one of {', '.join(_TORCHVISION_WEIGHTS)} (got {net!r})")
    try:
        import torchvision.models as tv_models
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
    except ImportError as exc:
        raise StyleGalleryError(f"LPIPS needs the optional metrics extra: {_INSTALL} ({exc})") from None
    weights = getattr(tv_models, _TORCHVISION_WEIGHTS[net]).IMAGENET1K_V1
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if _offline() and not os.path.isfile(cached):
        raise StyleGalleryError(
            f"LPIPS ({net}) needs the torchvision weights {weights.url}, not in the cache ({cached}) and the session is "
            f"offline; download them once online (or copy the file there), or unset HF_HUB_OFFLINE")
    x, y = rgb_array(content_image), rgb_array(result_image)
    if x.shape != y.shape:
        raise StyleGalleryError(f"LPIPS needs images of one size, got {x.shape[1::-1]} and {y.shape[1::-1]} (W, H)")
    try:
        metric = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        raise StyleGalleryError(f"could not load the LPIPS ({net}) weights ({exc}); download {weights.url} into "
                                f"{os.path.dirname(cached)} or run once online") from None
    as_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0  # noqa: E731
    with torch.no_grad():
        return float(metric(as_tensor(x), as_tensor(y)))


class _ColourSignatures:
    """The sliced-Wasserstein summary of a region's Lab pixels: its quantiles along fixed random directions (a region
    of more than ``max_points`` pixels represented by that many drawn at random with ``seed``)."""

    def __init__(self, directions: np.ndarray, n_quantiles: int, max_points: int | None, seed: int):
        self.directions, self.n_quantiles, self.max_points, self.seed = directions, n_quantiles, max_points, seed

    def __call__(self, image_lab: np.ndarray, grid: np.ndarray, regions) -> list[np.ndarray | None]:
        """One signature per region of the label map ``grid`` (upsampled to the image); None for an empty region."""
        flat = upsample_labels(grid, image_lab.shape[:2]).ravel()
        points = image_lab.reshape(-1, 3)
        out = []
        for r in regions:
            chosen = points[flat == r]
            if self.max_points and len(chosen) > self.max_points:
                rng = np.random.default_rng(self.seed)
                chosen = chosen[np.sort(rng.choice(len(chosen), self.max_points, replace=False))]
            out.append(_quantiles(chosen, self.directions, self.n_quantiles, np.float32) if len(chosen) else None)
        return out


def _sw_matrix(rows: list, columns: list) -> np.ndarray:
    """Sliced Wasserstein distance of every row signature to every column signature (NaN where one is empty)."""
    out = np.full((len(rows), len(columns)), np.nan)
    for r, a in enumerate(rows):
        for j, b in enumerate(columns):
            if a is not None and b is not None:
                out[r, j] = _sw(a, b)
    return out


def _latent_distances(stylized: torch.Tensor, labels: list[np.ndarray], latents: torch.Tensor, columns: list,
                      n_content: int) -> np.ndarray:
    """:func:`latent_stat_distance` of the result's latent in each content region to each style region's latent."""
    style_stats = []  # latent mean and std of each style region (None: no latent pixel)
    for reference, region in columns:
        image = 1 + reference
        mask = upsample_labels(labels[image], tuple(latents[image].shape[-2:])) == region
        style_stats.append(latent_stats(latents[image], mask) if mask.any() else None)
    stylized = stylized[0] if stylized.dim() == 4 else stylized
    content_grid = upsample_labels(labels[0], tuple(stylized.shape[-2:]))
    out = np.full((n_content, len(columns)), np.nan)
    for r in range(n_content):
        mask = content_grid == r
        if not mask.any():
            continue
        stats = latent_stats(stylized, mask)
        for j, style in enumerate(style_stats):
            if style is not None:
                out[r, j] = _stat_distance(stats, style)
    return out
