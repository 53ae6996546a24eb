"""Looking inside a result: how long an attention map, an AttentionView update and the per-region scores take.

After the stages up to match and a short stylize, on the same model and images:

* **attention map, features cold** - ``pipe.attention_maps`` at a timestep whose features are not cached yet (one
  UNet pass over the content and the references);
* **attention map, another point** - the same timestep, a new point each time (median over ``--points`` points);
  what a click costs in the core;
* **AttentionView update** - the widget's whole update for a new point: the maps, the heat-map pictures and their
  PNG encoding (``elapsed_ms``, median); what a click costs a user, before the browser draws;
* **attention map of a whole region** - a region id instead of a pixel (the mean over the region's tokens);
* **from the result's queries** - ``stylization=``: the first call (one UNet pass), then another point;
* **per-region scores** - ``metrics.region_scores`` (colour, latent statistics, SSIM) and ``pipe.region_scores``
  (the same plus the content loss per region: one more UNet pass, whose queries the next call on the same result
  reuses).

Times are wall seconds of the process (median of the repeats); nothing else should run on the machine.

Run from the repository root::

    python benchmarks/bench_inspect.py --readme                   # sd15 architecture, CPU, 256 px
    python benchmarks/bench_inspect.py --model tiny --points 5    # smoke run (seconds)
    python benchmarks/bench_inspect.py --model /path/to/sd15 --device cuda --size 512
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CONTENT, STYLES, benchmark_parser, load_average, load_pipe, machine, median, now, run_benchmark  # noqa: E402

SCRIPT = Path(__file__).resolve()


def _timed(device, fn):
    start = now(device)
    result = fn()
    return result, now(device) - start


def measure(args) -> dict:
    from stylegallery import metrics
    from stylegallery.widgets import AttentionView

    pipe = load_pipe(args.model, args.device, args.dtype)
    device = pipe.device
    prepared = pipe.prepare(CONTENT, STYLES[: args.refs], size=args.size)
    inversion = pipe.invert(prepared, progress=False)
    segmentation = pipe.segment(prepared, inversion, n_clusters=args.regions or None, progress=False)
    matching = pipe.match(prepared, inversion, segmentation)
    stages = (prepared, segmentation, matching)
    result = pipe.stylize(prepared, inversion, *stages[1:], steps=args.steps, progress=False)

    rng = np.random.default_rng(0)
    points = [tuple(int(v) for v in rng.integers(0, args.size, 2)) for _ in range(args.points)]
    timesteps = pipe.timesteps(args.steps)
    unseen = pipe.timesteps(args.steps + 1)[1]  # not one of the run's: its features are not cached
    _, cold = _timed(device, lambda: pipe.attention_maps(*stages, [points[0]], timestep=unseen))
    t = timesteps[0]
    pipe.attention_maps(*stages, [points[0]], timestep=t)
    warm = [_timed(device, lambda p=p: pipe.attention_maps(*stages, [p], timestep=t))[1] for p in points]
    region = [_timed(device, lambda: pipe.attention_maps(*stages, [0], timestep=t))[1] for _ in range(3)]
    _, result_first = _timed(device, lambda: pipe.attention_maps(*stages, [points[0]], timestep=t, stylization=result))
    result_next = [_timed(device, lambda p=p: pipe.attention_maps(*stages, [p], timestep=t, stylization=result))[1]
                   for p in points]

    view = AttentionView(pipe, *stages, steps=args.steps)
    updates = []
    for p in points:
        view.select(*p)
        updates.append(view.elapsed_ms / 1e3)

    scores = [_timed(device, lambda: metrics.region_scores(prepared, segmentation, matching, result))[1]
              for _ in range(3)]
    with_loss = [_timed(device, lambda: pipe.region_scores(prepared, segmentation, matching, result))[1]
                 for _ in range(3)]  # the first runs the UNet on the result; the next reuse its queries
    return {
        "machine": machine(), "model": args.model, "device": str(device), "dtype": str(pipe.dtype).replace("torch.", ""),
        "size": args.size, "refs": args.refs, "regions": segmentation.n_regions(0), "steps": args.steps,
        "points": args.points, "grid": list(view.maps.grid),
        "map_cold": cold, "map_point": median(warm), "map_region": median(region),
        "result_first": result_first, "result_point": median(result_next),
        "view_update": median(updates), "view_update_max": max(updates),
        "region_scores": median(scores), "region_scores_with_content_loss": with_loss[0],
        "region_scores_with_content_loss_again": median(with_loss[1:]),
        "load_average_end": load_average(),
    }


def render(r: dict) -> str:
    ms = lambda s: f"{1e3 * s:.1f}"  # noqa: E731
    lines = [
        f"Model `{r['model']}` on {r['device']} ({r['dtype']}), {r['size']} px, {r['refs']} references, "
        f"{r['regions']} content regions; first loss layer's token grid {r['grid'][0]} x {r['grid'][1]}; "
        f"medians over {r['points']} random points.",
        "",
        "| what | ms |",
        "|---|---:|",
        f"| attention map at a timestep not yet cached (UNet pass) | {ms(r['map_cold'])} |",
        f"| attention map of another point (cached features) | {ms(r['map_point'])} |",
        f"| `AttentionView` update for a click (maps + pictures + PNG) | {ms(r['view_update'])} (max {ms(r['view_update_max'])}) |",
        f"| attention map of a whole region | {ms(r['map_region'])} |",
        f"| from the result's queries, first call (UNet pass) | {ms(r['result_first'])} |",
        f"| from the result's queries, another point | {ms(r['result_point'])} |",
        f"| `metrics.region_scores` (colour, latent statistics, SSIM) | {ms(r['region_scores'])} |",
        f"| `pipe.region_scores` (also the content loss per region: a UNet pass) | {ms(r['region_scores_with_content_loss'])} |",
        f"| `pipe.region_scores` again on the same result | {ms(r['region_scores_with_content_loss_again'])} |",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--steps", type=int, default=2, help="timesteps of the stylize run the maps look at")
    parser.add_argument("--points", type=int, default=20)
    run_benchmark(SCRIPT, parser.parse_args(argv), measure, render, "inspect")


if __name__ == "__main__":
    main()
