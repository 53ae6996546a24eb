"""Editing a region map by hand: the cells a brush stroke or a lasso covers, and painting, erasing, growing and
shrinking regions on the latent grid (what :class:`~stylegallery.widgets.MaskPainter` does, as plain functions).

Label maps here are (h, w) int arrays whose numbers may have gaps while they are edited (a region painted over
entirely keeps its number, empty); :meth:`Segmentation.repaint` renumbers them 0..n-1 when the edit is done.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-neighbours, as the clean-up of specks counts them


def brush_cells(points, radius: float, grid: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the cells whose centre lies within ``radius`` cells of the stroke through ``points`` ((n, 2)
    row, column positions in cell units, 0 at the grid's top-left corner; one point is a dab)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    h, w = grid
    rows, cols = np.mgrid[0:h, 0:w]
    centres = np.stack([rows + 0.5, cols + 0.5], axis=-1).reshape(-1, 2)
    nearest = np.full(len(centres), np.inf)
    starts, ends = points, np.concatenate([points[1:], points[-1:]]) if len(points) > 1 else points
    for a, b in zip(starts, ends):
        segment = b - a
        length = float(segment @ segment)
        along = np.zeros(len(centres)) if length == 0 else np.clip((centres - a) @ segment / length, 0.0, 1.0)
        distance = np.linalg.norm(centres - (a + along[:, None] * segment), axis=1)
        np.minimum(nearest, distance, out=nearest)
    return (nearest <= max(radius, 0.5)).reshape(h, w)


def lasso_cells(points, grid: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: the cells whose centre lies inside the closed polygon ``points`` ((n, 2) row, column positions in
    cell units); a polygon of fewer than 3 points covers nothing."""
    from matplotlib.path import Path

    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    h, w = grid
    if len(points) < 3:
        return np.zeros(grid, dtype=bool)
    rows, cols = np.mgrid[0:h, 0:w]
    centres = np.stack([rows.ravel() + 0.5, cols.ravel() + 0.5], axis=1)
    return Path(points).contains_points(centres).reshape(h, w)


def paint(labels: np.ndarray, cells: np.ndarray, region: int | None = None) -> np.ndarray:
    """``labels`` with ``cells`` given to ``region`` (an existing number: it grows there), or to a new region
    (``None``: numbered one above the highest)."""
    out = labels.copy()
    out[cells] = int(labels.max()) + 1 if region is None else int(region)
    return out


def erase(labels: np.ndarray, cells: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``labels`` with ``cells`` back to ``base``'s regions (the map before any painting)."""
    out = labels.copy()
    out[cells] = base[cells]
    return out


def grow(labels: np.ndarray, region: int, steps: int = 1) -> np.ndarray:
    """``region`` grown by ``steps`` cells (4-neighbours) over its neighbours."""
    inside = labels == region
    if not inside.any():
        return labels.copy()
    out = labels.copy()
    out[ndimage.binary_dilation(inside, _CROSS, iterations=steps)] = region
    return out


def shrink(labels: np.ndarray, region: int, steps: int = 1) -> np.ndarray:
    """``region`` shrunk by ``steps`` cells (4-neighbours); the cells it gives up go to the nearest other region. A
    region that would vanish, or the only region, stays as it is."""
    inside = labels == region
    kept = ndimage.binary_erosion(inside, _CROSS, iterations=steps, border_value=1)
    others = ~inside
    if not kept.any() or not others.any():
        return labels.copy()
    freed = inside & ~kept
    _, (rows, cols) = ndimage.distance_transform_edt(~others, return_indices=True)
    out = labels.copy()
    out[freed] = labels[rows[freed], cols[freed]]
    return out

