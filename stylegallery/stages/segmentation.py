"""Adaptive clustering of diffusion features into semantic regions, or regions from SAM's masks (docs/method.md,
stage 2)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ..errors import StyleGalleryError
from ..settings import STAGE_SETTINGS


def single_threaded():
    """Run the clustering maths on one thread.

    The problems here are small (one point per latent pixel: 1k to 4k points of 60 dims), so scikit-learn's
    OpenMP k-means and the BLAS calls of PCA spend more time synchronising threads than computing. On a busy
    machine (or one where torch's and scikit-learn's thread pools both spin) the threaded versions were 10x to
    100x slower; one thread gives the same labels.
    """
    return threadpool_limits(limits=1)


def project_features(features: np.ndarray, n_components: int = 60, seed: int = 0) -> np.ndarray:
    """(C, h, w) features -> (h*w, min(C, n_components)) standardised principal components."""
    c = features.shape[0]
    points = features.reshape(c, -1).T.astype(np.float64)
    points = StandardScaler().fit_transform(points)
    k = min(c, n_components, points.shape[0])
    return PCA(n_components=k, random_state=seed).fit_transform(points)


def choose_k(points: np.ndarray, max_clusters: int, n_clusters: int | None, n_init: int, sample: int, seed: int):
    """K-means for each k in 2..max_clusters scored by silhouette; returns (labels, {k: score}, chosen k).

    With ``n_clusters`` given, only that k is fitted (its silhouette is still reported).
    """
    ks = [n_clusters] if n_clusters else list(range(2, max_clusters + 1))
    ks = [k for k in ks if k < len(points)]
    if not ks:
        raise StyleGalleryError(f"cannot cluster {len(points)} feature points into {max_clusters} regions")
    rng = np.random.default_rng(seed)
    subset = rng.choice(len(points), size=min(sample, len(points)), replace=False)
    fits = {k: KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(points) for k in ks}
    found = silhouette_scores(points[subset], [fits[k][subset] for k in ks])
    scores = {k: score for k, score in zip(ks, found)}
    best = max(scores, key=lambda k: scores[k])
    return fits[best], scores, best


def silhouette_scores(points: np.ndarray, labelings: list[np.ndarray], chunk: int = 512) -> list[float]:
    """Mean silhouette coefficient of each labeling of the same ``points``; -1.0 for a single cluster.

    Equal to :func:`sklearn.metrics.silhouette_score` (Euclidean) to rounding, but the pairwise distances are
    computed once, in row chunks, and shared by all labelings: per chunk, one product with the stacked one-hot
    matrices of every labeling gives each point's summed distance to every cluster of every k.
    """
    n = len(points)
    codes = [np.unique(lab, return_inverse=True) for lab in labelings]
    sizes = [len(values) for values, _ in codes]
    usable = [i for i, k in enumerate(sizes) if 2 <= k <= n - 1]
    out = [-1.0 if k <= 1 else None for k in sizes]
    for i, k in enumerate(sizes):
        if out[i] is None and i not in usable:  # every point its own cluster: let scikit-learn say why not
            out[i] = float(silhouette_score(points, labelings[i]))
    if not usable:
        return out
    x = np.asarray(points, dtype=np.float64)
    offsets = np.cumsum([0] + [sizes[i] for i in usable])
    onehot = np.zeros((n, offsets[-1]))
    rows = np.arange(n)
    for col, i in enumerate(usable):
        onehot[rows, offsets[col] + codes[i][1]] = 1.0
    squared = np.einsum("ij,ij->i", x, x)
    sums = np.empty((n, offsets[-1]))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        d = squared[start:stop, None] - 2.0 * (x[start:stop] @ x.T) + squared[None, :]
        np.maximum(d, 0, out=d)
        np.sqrt(d, out=d)
        d[np.arange(stop - start), np.arange(start, stop)] = 0.0
        sums[start:stop] = d @ onehot
    for col, i in enumerate(usable):
        own = codes[i][1]
        block = sums[:, offsets[col] : offsets[col + 1]]
        counts = np.bincount(own, minlength=sizes[i]).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            intra = block[rows, own] / (counts[own] - 1)
            means = block / counts[None, :]
        means[rows, own] = np.inf
        inter = means.min(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = (inter - intra) / np.maximum(intra, inter)
        values[counts[own] == 1] = 0.0
        out[i] = float(np.mean(np.nan_to_num(values)))
    return out


def _region_means(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean of ``values`` (C, h*w) over each label of ``labels`` (h*w,) -> (n, C)."""
    n = labels.max() + 1
    counts = np.bincount(labels, minlength=n).astype(np.float64)
    sums = np.stack([np.bincount(labels, weights=v, minlength=n) for v in values], axis=1)
    return sums / np.maximum(counts, 1)[:, None]


def relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber labels to 0..n-1 in order of first appearance (row-major)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].reshape(labels.shape)


def merge_close(labels: np.ndarray, latent: np.ndarray, threshold: float, depth=None, depth_threshold=None):
    """Merge regions whose mean latent vectors lie closer than ``threshold`` (docs/method.md stage 2, step 3).

    As in the authors' release, distances are those between the given regions' own means, every pair closer
    than the threshold is linked, and the merged regions are the connected components of that graph (single
    linkage: A near B and B near C merge all three even if A is far from C). With ``depth`` given, a pair is
    only linked if its mean depths also differ by less than ``depth_threshold``.
    """
    labels = relabel(labels).ravel()
    means = _region_means(latent.reshape(latent.shape[0], -1), labels)
    linked = np.linalg.norm(means[:, None] - means[None], axis=-1) < threshold
    if depth is not None:
        d = _region_means(depth.reshape(1, -1), labels)[:, 0]
        linked &= np.abs(d[:, None] - d[None]) < depth_threshold
    _, component = connected_components(csr_matrix(linked), directed=False)
    return relabel(component[labels]).reshape(latent.shape[1:])


def split_by_depth(labels: np.ndarray, depth: np.ndarray, span: float, seed: int) -> np.ndarray:
    """Split each region whose depth spans >= ``span`` (5th to 95th percentile) in two by 2-means on depth.

    As in the authors' release, regions under 20 pixels are left whole and the percentiles are order
    statistics (the values at ranks ``int(0.05 n)`` and ``int(0.95 n)``).
    """
    out = labels.copy()
    next_label = labels.max() + 1
    for region in range(labels.max() + 1):
        inside = labels == region
        values = depth[inside]
        if values.size < 20:
            continue
        ordered = np.sort(values)
        if ordered[int(0.95 * values.size)] - ordered[int(0.05 * values.size)] < span:
            continue
        halves = KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(values.reshape(-1, 1))
        part = out[inside]
        part[halves == 1] = next_label
        out[inside] = part
        next_label += 1
    return out


def apply_user_mask(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Every non-zero value of ``mask`` (same grid) becomes its own region, overriding the clusters."""
    out = labels.copy() + 1
    offset = out.max() + 1
    for value in np.unique(mask):
        if value != 0:
            out[mask == value] = offset + int(value)
    return relabel(out)


def clean_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Give each 4-connected component smaller than ``min_size`` pixels the most common label on its border."""
    labels = labels.copy()
    for _ in range(4):  # a relabelled speck can touch another speck: repeat until stable
        changed = False
        for region in range(labels.max() + 1):
            components, n = ndimage.label(labels == region)
            if n == 0:
                continue
            sizes = np.bincount(components.ravel())
            for comp in np.nonzero(sizes < min_size)[0]:
                if comp == 0:
                    continue
                piece = components == comp
                border = ndimage.binary_dilation(piece) & ~piece
                neighbours = labels[border]
                neighbours = neighbours[neighbours != region]
                if neighbours.size:
                    labels[piece] = np.bincount(neighbours).argmax()
                    changed = True
        if not changed:
            break
    return relabel(labels)


def dissolve_thin(labels: np.ndarray, min_width: int) -> np.ndarray:
    """Give every pixel that no ``min_width`` x ``min_width`` square inside its region covers the label of the
    nearest pixel that one does (a morphological opening per region). Ours, not in the paper: off by default.

    This removes strips along region boundaries and the image frame, where convolutions see zero padding, and
    thin protrusions; a region with no part ``min_width`` thick goes entirely. ``min_width <= 1`` keeps all.
    """
    if min_width <= 1:
        return labels
    square = np.ones((min_width, min_width), dtype=bool)
    kept = np.zeros(labels.shape, dtype=bool)
    for region in range(labels.max() + 1):
        core = ndimage.binary_erosion(labels == region, square)
        kept |= ndimage.binary_dilation(core, square)
    if kept.all() or not kept.any():
        return labels
    _, (rows, cols) = ndimage.distance_transform_edt(~kept, return_indices=True)
    return relabel(labels[rows, cols])


def mask_to_grid(mask, grid: tuple[int, int]) -> np.ndarray:
    """A user mask (latent grid or image size, or a PIL image) as an int array on the latent ``grid``."""
    from PIL import Image

    array = np.asarray(mask)
    if array.ndim == 3:
        array = array[..., 0]
    if array.shape != grid:
        resized = Image.fromarray(array.astype(np.int32)).resize((grid[1], grid[0]), Image.Resampling.NEAREST)
        array = np.asarray(resized)
    return array.astype(np.int64)


def masks_to_labels(masks, grid: tuple[int, int]) -> np.ndarray:
    """SAM's masks, (n, H, W) bool, as base labels on the latent ``grid``, painted as the release paints them.

    The masks are sorted by area, largest first (a stable sort: equal areas keep their order), and mask i is painted
    with i + 1 over a map of zeros, so where masks overlap the smaller one wins, and 0 is what no mask covers (a
    region of its own). The map is then resized to ``grid`` by nearest neighbour as the release's
    ``F.interpolate(mode="nearest")`` does: cell (i, j) takes the pixel (floor(i H / h), floor(j W / w)).
    """
    masks = [np.asarray(m, dtype=bool) for m in masks]
    if masks and any(m.shape != masks[0].shape for m in masks):
        raise StyleGalleryError("SAM's masks must all have the image's size")
    if not masks:
        return np.zeros(grid, dtype=np.int64)
    height, width = masks[0].shape
    painted = np.zeros((height, width), dtype=np.int64)
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for value, i in enumerate(order, 1):
        painted[masks[i]] = value
    rows = np.minimum(np.floor(np.arange(grid[0]) * (height / grid[0])).astype(np.int64), height - 1)
    cols = np.minimum(np.floor(np.arange(grid[1]) * (width / grid[1])).astype(np.int64), width - 1)
    return painted[np.ix_(rows, cols)]


def segment_base_labels(base: np.ndarray, latent: np.ndarray, *, user_mask: np.ndarray | None = None, **settings):
    """Segment one image from base regions given on the latent grid instead of k-means clusters (SAM's,
    :func:`masks_to_labels`); returns (labels (h, w), {} as there is no silhouette, the number of base regions).

    The release's ``use_sam`` path: regions whose mean latents lie closer than ``sam_merge_threshold`` merge (the rule
    of :func:`merge_close`), with no depth split or depth-gated merge; then, as after the clusters, thin strips (ours,
    off by default), the user's mask and speck removal. ``settings``: the segment stage's settings.
    """
    s = STAGE_SETTINGS["segment"].resolve(settings)
    count = len(np.unique(base))
    labels = merge_close(base, latent, s.sam_merge_threshold)
    labels = dissolve_thin(labels, s.min_region_width)
    if user_mask is not None:
        labels = apply_user_mask(labels, user_mask)
    return clean_small(labels, s.min_region_size), {}, count


def segment_features(features: np.ndarray, latent: np.ndarray, *, n_clusters: int | None = None,
                     depth: np.ndarray | None = None, user_mask: np.ndarray | None = None, **settings):
    """Segment one image; returns (labels (h, w), {k: silhouette}, chosen k). See docs/method.md stage 2.

    ``features`` (C, h, w) and ``latent`` (4, h, w) on the latent grid; ``n_clusters``: force k for this image;
    ``depth``: its normalised depth on the grid (the depth steps run only with it); ``user_mask``: its labels.
    ``settings``: the segment stage's settings (:data:`stylegallery.settings.STAGE_SETTINGS`; the paper's defaults
    for those not given).
    """
    s = STAGE_SETTINGS["segment"].resolve(settings)
    h, w = features.shape[1:]
    with single_threaded():
        points = project_features(features, s.n_components, s.seed)
        flat, scores, k = choose_k(points, s.max_clusters, n_clusters, s.n_init, s.silhouette_sample, s.seed)
        labels = flat.reshape(h, w)
        if n_clusters is None:  # a forced k is the user's decision: do not merge it away
            labels = merge_close(labels, latent, s.merge_threshold)
        if depth is not None:
            labels = split_by_depth(labels, depth, s.depth_span, s.seed)
            labels = merge_close(labels, latent, s.depth_merge_threshold, depth, s.depth_difference)
    if n_clusters is None:  # likewise, the k clusters a user asked for all stay
        labels = dissolve_thin(labels, s.min_region_width)
    if user_mask is not None:  # after the strips go: a user's thin region stays
        labels = apply_user_mask(labels, user_mask)
    labels = clean_small(labels, s.min_region_size)
    return labels, scores, k
