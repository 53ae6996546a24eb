"""Time stage 2's clustering of one image at the latent grids of 512, 768 and 1024 px (SDXL: 128 x 128 = 16k points).

The features are planted, not from a UNet: ``--regions`` Voronoi cells, each with its own random mean in
``--channels`` dimensions (640: SDXL's feature block, ``up_blocks[1]``), plus noise of the same size per point
and a smooth ramp across the image, so k-means has real structure to find and a realistic number of
iterations. Timed: ``segmentation.segment_features`` with the defaults (PCA to 60 dimensions, k-means with 10
restarts for every k in 2..10, silhouette on 5000 sampled points, merging), and its PCA and k-means parts.

Run from the repository root::

    python benchmarks/bench_clustering.py --readme
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, machine, run_benchmark  # noqa: E402

SCRIPT = Path(__file__).resolve()


def planted_features(grid: int, channels: int, regions: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(features (channels, grid, grid), the planted labels)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, grid, size=(regions, 2))
    yy, xx = np.mgrid[0:grid, 0:grid]
    labels = np.argmin((yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2, axis=-1)
    means = rng.normal(size=(regions, channels))
    ramp = np.outer(rng.normal(size=channels), (yy + xx).ravel() / (2 * grid)).reshape(channels, grid, grid)
    features = means[labels].transpose(2, 0, 1) + rng.normal(size=(channels, grid, grid)) + ramp
    return features.astype(np.float32), labels


def measure(args) -> dict:
    from stylegallery.stages import segmentation as S

    rows = []
    for grid in args.grids:
        features, planted = planted_features(grid, args.channels, args.regions)
        latent = features[:4]
        start = time.perf_counter()
        labels, scores, k = S.segment_features(features, latent)
        total = time.perf_counter() - start
        with S.single_threaded():
            start = time.perf_counter()
            points = S.project_features(features)
            pca = time.perf_counter() - start
            start = time.perf_counter()
            S.choose_k(points, 10, None, 10, 5000, 0)
            kmeans = time.perf_counter() - start
        rows.append(dict(grid=grid, points=grid * grid, seconds=total, pca=pca, kmeans_silhouette=kmeans, k=int(k),
                         purity=_purity(labels, planted)))
        print(f"grid {grid}: {total:.2f} s (PCA {pca:.2f}, k-means + silhouette {kmeans:.2f}), k = {k}", flush=True)
    return {"machine": machine(), "channels": args.channels, "planted": args.regions, "rows": rows,
            "load_average_end": load_average()}


def _purity(labels: np.ndarray, planted: np.ndarray) -> float:
    """Share of points whose found region's majority planted label is their own."""
    hits = 0
    for region in np.unique(labels):
        inside = planted[labels == region]
        hits += np.bincount(inside).max()
    return hits / labels.size


def render(r: dict) -> str:
    lines = [f"One image, {r['channels']} feature channels, {r['planted']} planted regions; defaults of "
             "`segment_features` (adaptive k in 2..10).", "",
             "| latent grid (image px) | points | segment s | PCA s | k-means + silhouette s | k found | "
             "purity |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        lines.append(f"| {row['grid']} x {row['grid']} ({row['grid'] * 8}) | {row['points']} | {row['seconds']:.2f} | "
                     f"{row['pca']:.2f} | {row['kmeans_silhouette']:.2f} | {row['k']} | {row['purity']:.0%} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grids", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--channels", type=int, default=640)
    parser.add_argument("--regions", type=int, default=6)
    parser.add_argument("--json", help="write the measurements here")
    parser.add_argument("--readme", action="store_true", help="write the table into benchmarks/README.md")
    args = parser.parse_args(argv)
    args.threads = None  # the clustering runs single-threaded by design (stages.segmentation.single_threaded)
    run_benchmark(SCRIPT, args, measure, render, "clustering")


if __name__ == "__main__":
    main()
