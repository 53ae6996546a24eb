"""Cost of a stylize step per Stable Diffusion family: the SDXL architecture against SD 1.5's on the same machine.

Each model runs in a fresh process (random weights of the real UNet and VAE architectures, ``make-test-model
--arch sd15|sdxl``): prepare one content and one reference, invert (2 steps: inversion is not what is timed),
segment into 4 regions, match, then stylize ``--steps`` timesteps twice:

* **first run** - the attention features of each timestep are computed as the run reaches it;
* **re-run** - the features come from the cache: the step is the optimization alone (UNet forward to the last
  loss layer, backward, Adam).

For SDXL the default loss layers (the first transformer layer of each decoder attention module at the two
resolutions that have attention: 6 layers) are compared with all 36 self-attention layers there, the subset's
reason. Reported: seconds per step (process CPU time on a CPU, wall time after synchronising on CUDA) and the
peak memory of the process.

Run from the repository root::

    python benchmarks/bench_families.py --threads 1 --readme       # sd15 and sdxl architectures, CPU, 256 px
    python benchmarks/bench_families.py --device cuda --size 1024 --models sdxl
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
    PeakMemory, benchmark_parser, load_average, machine, median, run_benchmark, run_worker, worker_stages,
)

SCRIPT = Path(__file__).resolve()


def _clock(device) -> float:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def worker(args) -> dict:
    from stylegallery.stages.attention import self_attention_names

    pipe, (prepared, inversion, segmentation, matching) = worker_stages(args)
    names = self_attention_names(pipe.unet)
    decoder = sorted({int(names[i].split(".")[1]) for i in pipe.recorder.layers})
    every = [i for i, n in enumerate(names) if n.startswith("up_blocks.") and int(n.split(".")[1]) in decoder]
    variants = {"default": None}
    if len(every) > len(pipe.recorder.layers):
        variants["all"] = every
    out = {"model": args.model, "family": pipe.backbone.family, "grid": list(prepared.latents.shape[-2:]), "variants": {}}
    memory = PeakMemory(pipe.device).start()
    for variant, layers in variants.items():
        if layers is not None:  # the recorder must record every layer asked for
            from stylegallery.stages.attention import install_recorder

            pipe.recorder = install_recorder(pipe.unet, layers)
            pipe.default_loss_layers = list(layers)
            pipe.feature_cache.clear()
        times = {}
        for run in ("first", "rerun"):
            stamps = [_clock(pipe.device)]

            def step_done(_info, stamps=stamps):
                stamps.append(_clock(pipe.device))  # returns None: the run goes on

            pipe.stylize(prepared, inversion, segmentation, matching, steps=args.steps, progress=False,
                         callback=step_done)
            steps = [b - a for a, b in zip(stamps, stamps[1:])]
            times[run] = median(steps[1:]) if len(steps) > 2 else median(steps)
        out["variants"][variant] = dict(times, layers=len(layers or pipe.recorder.layers))
    out["peak_memory"] = memory.read()
    return out


def measure(args) -> dict:
    runs = {}
    for model in args.models:
        argv = ["--worker", "--model", model, "--device", args.device, "--dtype", args.dtype, "--size", str(args.size),
                "--refs", str(args.refs), "--regions", str(args.regions), "--steps", str(args.steps)]
        if args.threads:
            argv += ["--threads", str(args.threads)]
        runs[model] = run_worker(SCRIPT, argv)
    return {"machine": machine(), "device": args.device, "size": args.size, "refs": args.refs, "steps": args.steps,
            "runs": runs, "load_average_end": load_average()}


def render(r: dict) -> str:
    unit = "CPU s" if r["device"] == "cpu" else "s"
    lines = [
        f"{r['size']} px, {r['refs']} reference, 4 content regions, {r['steps']} timesteps per run (the first step of "
        f"each run not counted); device {r['device']}.",
        "",
        f"| model | latent grid | loss layers | first run, {unit} / step | re-run, {unit} / step | peak memory GiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model, run in r["runs"].items():
        for variant, v in run["variants"].items():
            name = f"{model} ({run['family']})" + ("" if variant == "default" else ", every layer there")
            lines.append(f"| {name} | {run['grid'][0]} x {run['grid'][1]} | {v['layers']} | {v['first']:.2f} | "
                         f"{v['rerun']:.2f} | {run['peak_memory']['peak'] / 2**30:.1f} |")
    if {"sd15", "sdxl"} <= set(r["runs"]):
        a, b = r["runs"]["sd15"]["variants"]["default"], r["runs"]["sdxl"]["variants"]["default"]
        lines += ["", f"- SDXL / SD 1.5 per step: **{b['first'] / a['first']:.2f}x** (first run), "
                      f"**{b['rerun'] / a['rerun']:.2f}x** (re-run)"]
        every = r["runs"]["sdxl"]["variants"].get("all")
        if every:
            lines.append(f"- SDXL with all {every['layers']} layers / the 6-layer subset: "
                         f"{every['first'] / b['first']:.2f}x (first run), {every['rerun'] / b['rerun']:.2f}x (re-run)")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__)
    parser.set_defaults(refs=1)
    parser.add_argument("--models", nargs="+", default=["sd15", "sdxl"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    run_benchmark(SCRIPT, args, measure, render, "families")


if __name__ == "__main__":
    main()
