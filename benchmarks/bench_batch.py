"""Batch runs: jobs per minute with 1 and 2 processes, and what the shared inversion cache saves.

A grid of 4 contents x 4 references (the sample images; the fourth content is the first one mirrored), one
reference per job: 16 jobs. Each arm runs ``stylegallery batch`` in a fresh output folder as a user would (a
subprocess, model loading and, for 2 processes, ``accelerate launch`` included):

* **1 process**, inversions shared through the on-disk cache (the default);
* **2 processes** (``--processes 2``), the same cache shared by both;
* **1 process without the shared cache** (``--no-shared-cache``): every job inverts its content and reference.

Reported: wall seconds, jobs per minute, the inversions run (from ``summary.csv``) against 16 x 2 without the
cache, and the seconds the jobs spent inverting.

Run from the repository root::

    python benchmarks/bench_batch.py --readme                # tiny models, CPU, 128 px
    python benchmarks/bench_batch.py --model /path/to/sd15 --device cuda --size 512 --steps 150
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CONTENT, DATA, STYLES, benchmark_parser, load_average, machine, run_benchmark  # noqa: E402

SCRIPT = Path(__file__).resolve()
ARMS = (("1 process", []), ("2 processes", ["--processes", "2"]), ("1 process, no shared cache", ["--no-shared-cache"]))


def _folders(root: Path) -> tuple[Path, Path]:
    contents, styles = root / "contents", root / "styles"
    contents.mkdir()
    styles.mkdir()
    for path in [CONTENT, DATA / "content_cat.jpg", DATA / "content_coffee.jpg"]:
        (contents / path.name).write_bytes(path.read_bytes())
    ImageOps.mirror(Image.open(CONTENT).convert("RGB")).save(contents / "content_astronaut_mirrored.png")
    for path in STYLES:
        (styles / path.name).write_bytes(path.read_bytes())
    return contents, styles


def measure(args) -> dict:
    arms = {}
    with tempfile.TemporaryDirectory() as tmp:
        contents, styles = _folders(Path(tmp))
        for name, extra in ARMS:
            out = Path(tmp) / name.replace(" ", "-").replace(",", "")
            command = [sys.executable, "-m", "stylegallery", "batch", "--contents", str(contents), "--styles",
                       str(styles), "-o", str(out), "--model", args.model, "--device", args.device, "--dtype", args.dtype,
                       "--size", str(args.size), "--steps", str(args.steps), "--inversion-steps",
                       str(args.inversion_steps), "--quiet", *extra]
            start = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"{name}: exit status {proc.returncode}\n{proc.stderr[-2000:]}")
            with open(out / "summary.csv", newline="") as handle:
                rows = list(csv.DictReader(handle))
            arms[name] = {
                "wall": wall, "jobs": len(rows), "done": sum(r["status"] == "done" for r in rows),
                "inversions": sum(int(r["inversions"]) for r in rows),
                "invert_seconds": sum(float(r["seconds_invert"]) for r in rows),
                "job_seconds": sum(float(r["seconds"]) for r in rows),
                "processes": sorted({r["process"] for r in rows}),
            }
    return {"machine": machine(), "model": args.model, "device": args.device, "size": args.size, "steps": args.steps,
            "inversion_steps": args.inversion_steps, "arms": arms, "load_average_end": load_average()}


def render(r: dict) -> str:
    arms = r["arms"]
    jobs = next(iter(arms.values()))["jobs"]
    lines = [
        f"Model `{r['model']}` on {r['device']}, {r['size']} px, {r['steps']} stylize steps, {r['inversion_steps']} "
        f"inversion steps; {jobs} jobs (4 contents x 4 references, one reference per job). Wall time of the whole "
        "command (model loading, and for 2 processes `accelerate launch`, included).",
        "",
        "| arm | wall s | jobs / min | inversions run | seconds inverting (sum over jobs) | seconds in jobs (sum) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, a in arms.items():
        lines.append(f"| {name} | {a['wall']:.1f} | {60 * a['jobs'] / a['wall']:.1f} | {a['inversions']} | "
                     f"{a['invert_seconds']:.1f} | {a['job_seconds']:.1f} |")
    one, two = arms["1 process"], arms["2 processes"]
    plain = arms["1 process, no shared cache"]
    lines += [
        "",
        f"- 2 processes against 1: **{one['wall'] / two['wall']:.2f}x** the jobs per minute",
        f"- the shared cache ran **{one['inversions']}** inversions against {plain['inversions']} without it "
        f"({jobs} x 2), and the jobs spent {one['invert_seconds']:.1f} s inverting against {plain['invert_seconds']:.1f} s",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = benchmark_parser(__doc__)
    parser.set_defaults(model="tiny", size=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--inversion-steps", type=int, default=15)
    run_benchmark(SCRIPT, parser.parse_args(argv), measure, render, "batch")


if __name__ == "__main__":
    main()
