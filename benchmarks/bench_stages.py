"""Time the stages before stylize: prepare, invert, segment (and its parts), match (and its parts).

Segmentation is also timed the way it ran before the speed-up (scikit-learn's threaded k-means and one
``silhouette_score`` per k), on the same points, and both label maps are compared.

Run from the repository root::

    python benchmarks/bench_stages.py            # sd15 at 256 px and tiny at 512 px (the default settings)
    python benchmarks/bench_stages.py --quick    # tiny at 256 px only, 5 inversion steps
    python benchmarks/bench_stages.py --setting sd15:512 --inversion-steps 15
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CONTENT, STYLES, load_average, machine, write_readme_table  # noqa: E402

SCRIPT = Path(__file__).resolve()


def legacy_choose_k(points, max_clusters, n_init, sample, seed):
    """The clustering loop as it was: threaded k-means and scikit-learn's silhouette_score for every k."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    subset = rng.choice(len(points), size=min(sample, len(points)), replace=False)
    scores, fits = {}, {}
    for k in range(2, max_clusters + 1):
        labels = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(points)
        fits[k] = labels
        sub = labels[subset]
        scores[k] = float(silhouette_score(points[subset], sub)) if len(np.unique(sub)) > 1 else -1.0
    best = max(scores, key=lambda k: scores[k])
    return fits[best], scores, best


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def bench(model: str, size: int, n_refs: int, inversion_steps: int, device: str, legacy: bool, log=print) -> dict:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from stylegallery import StyleGallery
    from stylegallery.stages import segmentation as S

    row = {"model": model, "size": size, "refs": n_refs, "inversion_steps": inversion_steps}
    pipe, row["load"] = timed(StyleGallery.from_pretrained, model, device=device)
    prepared, row["prepare"] = timed(pipe.prepare, str(CONTENT), [str(s) for s in STYLES[:n_refs]], size=size)
    inversion, row["invert"] = timed(pipe.invert, prepared, inversion_steps=inversion_steps, progress=False)
    depths, row["depth_maps"] = timed(pipe.depth_maps, prepared)
    seg, row["segment_no_depth"] = timed(pipe.segment, prepared, inversion, use_depth=False, progress=False)
    seg_depth, row["segment"] = timed(pipe.segment, prepared, inversion, progress=False)
    row["regions"] = [seg_depth.n_regions(i) for i in range(n_refs + 1)]
    # the parts of segmentation, summed over the images
    parts = {"project_features": 0.0, "kmeans_and_silhouette": 0.0, "merge_close": 0.0, "split_by_depth": 0.0,
             "dissolve_thin": 0.0, "clean_small": 0.0, "legacy_kmeans_and_silhouette": 0.0}
    same = True
    for i in range(n_refs + 1):
        features, latent = inversion.features[i].numpy(), prepared.latents[i].numpy()
        with S.single_threaded():
            points, t = timed(S.project_features, features)
            parts["project_features"] += t
            (flat, scores, k), t = timed(S.choose_k, points, 10, None, 10, 5000, 0)
            parts["kmeans_and_silhouette"] += t
            labels, t = timed(S.merge_close, flat.reshape(features.shape[1:]), latent, 0.85)
            parts["merge_close"] += t
            if depths is not None:
                labels, t = timed(S.split_by_depth, labels, depths[i], 0.75, 0)
                parts["split_by_depth"] += t
            labels, t = timed(S.dissolve_thin, labels, 3)
            parts["dissolve_thin"] += t
            _, t = timed(S.clean_small, labels, 20)
            parts["clean_small"] += t
        if legacy:
            (old_flat, old_scores, old_k), t = timed(legacy_choose_k, points, 10, 10, 5000, 0)
            parts["legacy_kmeans_and_silhouette"] += t
            same &= bool(np.array_equal(old_flat, flat)) and old_k == k and all(
                abs(old_scores[j] - scores[j]) < 1e-9 for j in scores)
    row["segment_parts"] = parts
    if legacy:
        row["legacy_labels_identical"] = same
    matching, row["match"] = timed(pipe.match, prepared, inversion, seg_depth)
    _, row["semantic_tokens"] = timed(pipe.semantic_tokens, prepared)
    row["match_without_semantic_tokens"] = max(row["match"] - row["semantic_tokens"], 0.0)
    log(f"  {model} {size} px, {n_refs} refs: " + ", ".join(
        f"{k} {v:.2f} s" for k, v in row.items() if isinstance(v, float)))
    log("    segmentation parts (all images): " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))
    del pipe
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | size | images | load | prepare | invert (steps) | per inversion step | depth maps | "
             "segment (no depth) | segment (with depth) | k-means + silhouette | same, as before | PCA | "
             "merge + split + thin strips + specks | match | of which DINOv2 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        p = r["segment_parts"]
        legacy = p["legacy_kmeans_and_silhouette"]
        lines.append(
            f"| {r['model']} | {r['size']} | {r['refs'] + 1} | {r['load']:.1f} | {r['prepare']:.1f} | "
            f"{r['invert']:.1f} ({r['inversion_steps']}) | {r['invert'] / r['inversion_steps']:.2f} | "
            f"{r['depth_maps']:.2f} | {r['segment_no_depth']:.2f} | {r['segment']:.2f} | "
            f"{p['kmeans_and_silhouette']:.2f} | "
            + (f"{legacy:.2f} ({legacy / max(p['kmeans_and_silhouette'], 1e-9):.0f}x; labels "
               f"{'identical' if r.get('legacy_labels_identical') else 'DIFFER'})" if legacy else "-")
            + f" | {p['project_features']:.2f} | {p['merge_close'] + p['split_by_depth'] + p['dissolve_thin'] + p['clean_small']:.3f} | "
            f"{r['match']:.2f} | {r['semantic_tokens']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", action="append", help="MODEL:SIZE, repeatable (default sd15:256 and tiny:512)")
    ap.add_argument("--refs", type=int, default=2, help="style references (default 2)")
    ap.add_argument("--inversion-steps", type=int, default=5,
                    help="DDIM steps (default 5; the paper's 15 costs 3x as much, see 'per inversion step')")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-legacy", action="store_true", help="skip timing the segmentation as it was")
    ap.add_argument("--quick", action="store_true", help="tiny at 256 px only")
    ap.add_argument("--readme", action="store_true", help="write the table into benchmarks/README.md")
    args = ap.parse_args(argv)
    settings = args.setting or (["tiny:256"] if args.quick else ["sd15:256", "tiny:512"])
    info = machine()
    print(f"machine: {info}  load average: {load_average()}", flush=True)
    start = time.perf_counter()
    rows = []
    for setting in settings:
        model, size = setting.rsplit(":", 1)
        rows.append(bench(model, int(size), args.refs, args.inversion_steps, args.device, not args.no_legacy))
    text = table(rows)
    minutes = (time.perf_counter() - start) / 60
    print("\n" + text + f"\n\ntotal {minutes:.1f} min", flush=True)
    if args.readme:
        write_readme_table(SCRIPT, argv or sys.argv[1:], info, "stages",
                           f"; {minutes:.1f} min. Seconds, summed over all images.", text)


if __name__ == "__main__":
    main()
