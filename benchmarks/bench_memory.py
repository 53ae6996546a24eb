"""Peak memory of a whole run (prepare, invert, segment, match, stylize, decode) per memory setting.

Each arm runs in a fresh process on the same model (default: ``sdxl``, random weights of the real SDXL UNet and
VAE architectures) with 2 references:

* **plain** - everything on the device, no gradient checkpointing;
* **checkpointing** - ``stylize(gradient_checkpointing=True)`` (the CLI's ``--low-memory`` on a CPU);
* **checkpointing + offload** - also ``enable_model_cpu_offload``: each model on the GPU only while its stage
  runs (the CLI's ``--low-memory`` on a GPU; CUDA only).

Reported: the peak of the whole run with the weights (CUDA ``max_memory_allocated``; CPU resident-set high-water
mark) and the time of a stylize step. ``--cap-gib G`` limits the process to G GiB of the GPU
(``torch.cuda.set_per_process_memory_fraction``), so a run that does not fit a smaller card fails as it would
there; the arm is then reported "out of memory".

Run from the repository root::

    python benchmarks/bench_memory.py --size 512 --steps 2 --readme                       # CPU, float32
    python benchmarks/bench_memory.py --device cuda --size 1024 --cap-gib 24 --steps 3
    python benchmarks/bench_memory.py --device cuda --size 768 --cap-gib 16 --steps 3
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
    CONTENT, STYLES, PeakMemory, benchmark_parser, load_average, load_pipe, machine, median, run_benchmark, run_worker,
)

SCRIPT = Path(__file__).resolve()
ARMS = {"plain": (False, False), "checkpointing": (True, False), "checkpointing + offload": (True, True)}


def worker(args) -> dict:
    checkpointing, offload = ARMS[args.arm]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and args.cap_gib:
        torch.cuda.set_per_process_memory_fraction(args.cap_gib * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    pipe = load_pipe(args.model, args.device, args.dtype)
    if offload:
        pipe.enable_model_cpu_offload(device)
    if args.threads:
        pipe.cpu_threads = args.threads
    if device.type == "cpu":  # page in the memory-mapped weights, so that the baseline holds them
        with torch.no_grad():
            for module in (pipe.unet, pipe.vae):
                for param in module.parameters():
                    param.sum()
    memory = PeakMemory(pipe.device).start()
    out = {"arm": args.arm, "family": pipe.backbone.family, "dtype": str(pipe.dtype).removeprefix("torch.")}
    stamps = []
    try:
        prepared = pipe.prepare(CONTENT, STYLES[: args.refs], size=args.size)
        inversion = pipe.invert(prepared, inversion_steps=args.inversion_steps, progress=False)
        segmentation = pipe.segment(prepared, inversion, n_clusters=args.regions or None, progress=False)
        matching = pipe.match(prepared, inversion, segmentation)
        stamps.append(time.perf_counter())
        pipe.stylize(prepared, inversion, segmentation, matching, steps=args.steps, progress=False,
                     gradient_checkpointing=checkpointing, callback=lambda _info: stamps.append(time.perf_counter()))
        out["status"] = "ok"
    except torch.OutOfMemoryError:
        out["status"] = "out of memory"
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    out["step_seconds"] = median(steps[1:]) if len(steps) > 1 else None  # the first step also computes features
    out["peak_memory"] = memory.read()
    out["weights_bytes"] = sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.vae) for p in m.parameters())
    return out


def measure(args) -> dict:
    arms = args.arms or [a for a in ARMS if torch.device(args.device).type == "cuda" or "offload" not in a]
    runs = {}
    for arm in arms:
        argv = ["--worker", "--arm", arm, "--model", args.model, "--device", args.device, "--dtype", args.dtype,
                "--size", str(args.size), "--refs", str(args.refs), "--regions", str(args.regions),
                "--steps", str(args.steps), "--inversion-steps", str(args.inversion_steps)]
        argv += ["--threads", str(args.threads)] if args.threads else []
        argv += ["--cap-gib", str(args.cap_gib)] if args.cap_gib else []
        runs[arm] = run_worker(SCRIPT, argv)
    return {"machine": machine(), "model": args.model, "device": args.device, "size": args.size, "refs": args.refs,
            "steps": args.steps, "cap_gib": args.cap_gib, "runs": runs, "load_average_end": load_average()}


def render(r: dict) -> str:
    first = next(iter(r["runs"].values()))
    kind = first["peak_memory"]["kind"]
    cap = f", the process capped at {r['cap_gib']} GiB" if r.get("cap_gib") else ""
    lines = [
        f"`{r['model']}` ({first['family']}, {first['dtype']}) at {r['size']} px, {r['refs']} references, "
        f"{r['steps']} stylize steps; device {r['device']}{cap}. Peak: {kind}, weights included "
        f"(UNet + VAE: {first['weights_bytes'] / 2**30:.1f} GiB).",
        "",
        "| setting | status | peak GiB | stylize s / step |",
        "|---|---|---:|---:|",
    ]
    for arm, run in r["runs"].items():
        step = "" if run["step_seconds"] is None else f"{run['step_seconds']:.1f}"
        lines.append(f"| {arm} | {run['status']} | {run['peak_memory']['peak'] / 2**30:.1f} | {step} |")
    plain, low = r["runs"].get("plain"), r["runs"].get("checkpointing")
    if plain and low and plain["status"] == low["status"] == "ok":
        extra = [run["peak_memory"]["extra"] for run in (plain, low)]
        lines += ["", f"- the run's working memory (peak minus what was resident with the models loaded): "
                      f"{extra[0] / 2**30:.2f} GiB plain, {extra[1] / 2**30:.2f} GiB with checkpointing "
                      f"({extra[1] / extra[0]:.2f}x), at {low['step_seconds'] / plain['step_seconds']:.2f}x the step time"]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__)
    parser.set_defaults(model="sdxl", size=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--inversion-steps", type=int, default=2)
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=None,
                        help="default: all (offload only on CUDA)")
    parser.add_argument("--cap-gib", type=float, default=None, help="CUDA: limit the process to this many GiB")
    parser.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    run_benchmark(SCRIPT, args, measure, render, "memory")


if __name__ == "__main__":
    main()
