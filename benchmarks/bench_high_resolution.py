"""Peak memory and time per optimization step of a refinement at the output size, in windows (issue 19).

Each output size runs in a fresh process on the same model (default ``sd15``: random weights of the real SD 1.5 UNet
and VAE) with the square sample content (astronaut) and one reference: regions and matches at the working size (512), a
working run of ``--steps`` steps, then the refinement at the output size over the last ``--refine-steps`` of them in
``--window`` px windows (stride 3/4 of the window, the default). At output 512 that is one window over the working
latent (a warm re-run of the working result: "one window's step").

Reported per size: the windows, the peak of the whole stylize call (working run + refinement) above what was resident
before it (CPU: resident-set high-water mark; CUDA: ``max_memory_allocated``), the same less the output-size buffers
(latent, Adam moments, content latent, the decoded image; estimated by
:data:`stylegallery.stages.windows.BUFFER_BYTES_PER_PIXEL`), and the time of a refinement step (the first one is left
out: it also encodes the start and the content), wall and CPU seconds. The ratio "per window" divides a step by the
number of windows times one window's step at 512; it is above 1 by the cost of each window's content queries (a
forward pass per window and timestep), which the 512 run reads from its cache: the last column adds that forward
(timed on one window's crop) to one window's step.

Run from the repository root::

    python benchmarks/bench_high_resolution.py --readme                                   # CPU: 512, 1024, 2048
    python benchmarks/bench_high_resolution.py --device cuda --sizes 512 2048 4096 --steps 10 --refine-steps 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    PeakMemory, benchmark_parser, load_average, machine, median, now, run_benchmark, run_worker, worker_stages,
)

SCRIPT = Path(__file__).resolve()


def worker(args) -> dict:
    from stylegallery.stages.windows import BUFFER_BYTES_PER_PIXEL

    pipe, (prepared, inversion, segmentation, matching) = worker_stages(args)
    stamps = []  # (phase, wall, cpu)

    def on_step(info) -> None:
        stamps.append((info.phase, now(args.device), time.process_time()))

    memory = PeakMemory(pipe.device).start()
    out = pipe.stylize(prepared, inversion, segmentation, matching, steps=args.steps, refine_steps=args.refine_steps,
                       output_size=args.output_size, window=args.window, progress=False, callback=on_step)
    peak = memory.read()
    # what each window adds at larger sizes: a forward pass for the content's own queries in it (the 512 px run reads
    # them from the cache), timed on one window's crop
    side = args.window // 8
    crop = out.output_latent[..., :side, :side].to(pipe.device, pipe.dtype)
    with torch.no_grad():
        start = time.process_time()
        pipe.recorder.run(pipe.unet, crop, 500, pipe.backbone.embedding, keep=("q",))
        forward_cpu = time.process_time() - start
    refine = [s for s in stamps if s[0] == "output size"]
    walls = [b[1] - a[1] for a, b in zip(refine, refine[1:])]
    cpus = [b[2] - a[2] for a, b in zip(refine, refine[1:])]
    height, width = out.output_pixels.shape[-2:]
    return {"output_size": args.output_size, "pixels": [height, width], "windows": out.settings["output"]["windows"],
            "peak_memory": peak, "buffers_bytes": height * width * BUFFER_BYTES_PER_PIXEL,
            "step_wall": median(walls), "step_cpu": median(cpus), "refine_steps_timed": len(walls),
            "content_forward_cpu": forward_cpu}


def measure(args) -> dict:
    runs = {}
    for size in args.sizes:
        argv = ["--worker", "--output-size", str(size), "--model", args.model, "--device", args.device, "--dtype",
                args.dtype, "--size", str(args.size), "--refs", str(args.refs), "--regions", str(args.regions),
                "--steps", str(args.steps), "--refine-steps", str(args.refine_steps), "--window", str(args.window)]
        argv += ["--threads", str(args.threads)] if args.threads else []
        runs[str(size)] = run_worker(SCRIPT, argv)
        print(f"{size}: {json.dumps(runs[str(size)])}", file=sys.stderr, flush=True)
    return {"machine": machine(), "model": args.model, "device": args.device, "size": args.size, "window": args.window,
            "steps": args.steps, "refine_steps": args.refine_steps, "runs": runs, "load_average_end": load_average()}


def render(r: dict) -> str:
    runs = list(r["runs"].values())
    base = runs[0]  # the smallest output: one window's step
    kind = base["peak_memory"]["kind"]
    lines = [
        f"`{r['model']}` on {r['device']}; working size {r['size']}, windows of {r['window']} px (stride 3/4), "
        f"{r['steps']} steps of which the last {r['refine_steps']} are refined at the output size. Peak: {kind} of the "
        f"stylize call above what was resident before it; buffers: the output-size latent and image buffers.",
        "",
        f"| output | pixels | windows | peak working GiB | less buffers GiB | vs {base['output_size']} (less buffers) "
        "| step wall s | step CPU s | step / (windows x one window's step), CPU "
        "| step / (windows x (one window's step + its content forward)), CPU |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    one = base["step_cpu"] / base["windows"]
    forward = base.get("content_forward_cpu")
    for run in runs:
        extra = run["peak_memory"]["extra"]
        less = max(extra - run["buffers_bytes"], 0)
        base_less = max(base["peak_memory"]["extra"] - base["buffers_bytes"], 1)
        lines.append(f"| {run['output_size']} | {run['pixels'][0]} x {run['pixels'][1]} | {run['windows']} | "
                     f"{extra / 2**30:.2f} | {less / 2**30:.2f} | {less / base_less:.2f}x | {run['step_wall']:.1f} | "
                     f"{run['step_cpu']:.1f} | {run['step_cpu'] / (run['windows'] * one):.2f} | "
                     + (f"{run['step_cpu'] / (run['windows'] * (one + forward)):.2f} |"
                        if forward is not None and run["windows"] > 1 else "|"))
    if forward is not None:
        lines += ["", f"- one window's step: {one:.1f} CPU s at {base['output_size']} (content queries cached); the "
                      f"content forward each window adds at larger sizes: {forward:.1f} CPU s"]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__)
    parser.set_defaults(model="sd15", size=512, refs=1, regions=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048], help="output long sides")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--refine-steps", type=int, default=2)
    parser.add_argument("--output-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    run_benchmark(SCRIPT, args, measure, render, "high-resolution")


if __name__ == "__main__":
    main()
