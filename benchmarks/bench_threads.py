"""CPU threads: every stage with the thread settings before and after OpenMP's passive wait policy, on an idle
machine and next to one other busy process.

Each setting runs in a fresh process, since OpenMP reads its wait policy once, when torch loads:

* ``1 thread`` and ``2 threads``: torch imported before stylegallery, so the wait policy is OpenMP's default.
  This was the setting before: one thread fewer than the cores, which is 1 on a 2-core machine.
* ``auto, stylegallery first``: the command line and scripts that import stylegallery first. OpenMP waits
  passively and the stages use every core.
* ``auto, torch first``: a notebook that imported torch first. Each stage takes the cores that other processes
  left free lately.

The busy process is a one-core Python loop, started before the worker and stopped after it. Times are wall-clock
seconds (a stall shows only there): per stage, and per stylize step as the median of ``--steps`` steps, both on
the first run and on a re-run after one match override (features from the cache). The authors' loop
(``bench_stylize.reference_stylize``) runs on the idle machine with all cores and torch imported first, as a
plain script of theirs would.
"""

import sys

if "--torch-first" in sys.argv:
    import torch  # noqa: F401  (first, as in a notebook that imported torch before stylegallery)
import stylegallery  # noqa: E402,F401  (sets OMP_WAIT_POLICY=PASSIVE unless torch came first)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from common import CONTENT, STYLES, load_average, load_pipe, machine, median, run_worker, write_readme_table  # noqa: E402

SETTINGS = [  # (label, worker arguments)
    ("1 thread (before)", ["--threads", "1", "--torch-first"]),
    ("2 threads (before)", ["--threads", "2", "--torch-first"]),
    ("auto, stylegallery first (CLI)", ["--threads", "auto"]),
    ("auto, torch first (notebook)", ["--threads", "auto", "--torch-first"]),
]
STAGES = ("prepare", "invert", "segment", "match", "first-run step", "re-run step")


def _steps(run, count: int) -> float:
    """Median wall-clock seconds of the first ``count`` steps of ``run(on_step)``, where ``on_step(step)`` returning
    True stops."""
    marks = [time.perf_counter()]

    def on_step(_step):
        marks.append(time.perf_counter())
        return len(marks) > count

    run(on_step)
    return median([b - a for a, b in zip(marks, marks[1:])])


def worker(args) -> dict:
    import torch

    from stylegallery import threads

    pipe = load_pipe(args.model)
    pipe.cpu_threads = args.threads if args.threads == "auto" else int(args.threads)
    seconds = {}

    def timed(name, call):
        start = time.perf_counter()
        out = call()
        seconds[name] = time.perf_counter() - start
        return out

    styles = [str(s) for s in STYLES[: args.refs]]
    prepared = timed("prepare", lambda: pipe.prepare(str(CONTENT), styles, size=args.size))
    inversion = timed("invert", lambda: pipe.invert(prepared, inversion_steps=args.inversion_steps, progress=False))
    segmentation = timed("segment", lambda: pipe.segment(prepared, inversion, n_clusters=args.regions,
                                                         use_depth=False, min_region_size=1, progress=False))
    matching = timed("match", lambda: pipe.match(prepared, inversion, segmentation))
    pipe.feature_cache.clear()

    def stylize(m):
        return lambda on_step: pipe.stylize(prepared, inversion, segmentation, m, progress=False,
                                            callback=lambda info: on_step(info.step))

    seconds["first-run step"] = _steps(stylize(matching), args.steps)
    if args.reference:
        from bench_stylize import reference_stylize

        seconds["authors' step"] = _steps(lambda on_step: reference_stylize(
            pipe, prepared, inversion, segmentation, matching, steps=args.steps + 1, on_step=on_step), args.steps)
    region = next(r for r, m in enumerate(matching.matches) if m is not None)
    reference, style_region = matching.matches[region]
    matching.override(region, reference, (style_region + 1) % segmentation.n_regions(reference + 1))
    seconds["re-run step"] = _steps(stylize(matching), args.steps)
    return {"seconds": seconds, "passive": threads.PASSIVE_WAIT, "torch_threads": torch.get_num_threads()}


def measure(args) -> dict:
    script = Path(__file__).resolve()
    common = ["--worker", "--model", args.model, "--size", str(args.size), "--refs", str(args.refs), "--regions",
              str(args.regions), "--steps", str(args.steps), "--inversion-steps", str(args.inversion_steps)]
    runs = {}
    for busy in (0, 1):
        for label, extra in SETTINGS:
            reference = ["--reference"] if busy == 0 and label.startswith("2 threads") else []
            burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
            try:
                print(f"  {label}, {busy} busy process(es)...", flush=True)
                runs[f"{label} | {busy}"] = run_worker(script, common + extra + reference)
            finally:
                for burner in burners:
                    burner.kill()
                    burner.wait()
    return {"runs": runs, "machine": machine(), "load_average_end": load_average(), "args": vars(args)}


def render(result) -> str:
    runs = result["runs"]

    def sec(label, busy, stage):
        return runs[f"{label} | {busy}"]["seconds"][stage]

    lines = ["Seconds per stylize step on a re-run (features cached), wall-clock:", "",
             "| setting | idle machine | one other busy process |", "| --- | ---: | ---: |"]
    for label, _ in SETTINGS:
        lines.append(f"| {label} | {sec(label, 0, 're-run step'):.2f} | {sec(label, 1, 're-run step'):.2f} |")
    for busy, title in ((0, "on the idle machine"), (1, "next to one other busy process")):
        lines += ["", f"Every stage {title}, seconds (and x the 1-thread setting's):", "",
                  "| setting | " + " | ".join(STAGES) + " |", "| --- |" + " ---: |" * len(STAGES)]
        for label, _ in SETTINGS:
            cells = []
            for stage in STAGES:
                value, one = sec(label, busy, stage), sec(SETTINGS[0][0], busy, stage)
                cells.append(f"{value:.2f}" if label == SETTINGS[0][0] else f"{value:.2f} ({value / one:.2f}x)")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    authors = sec(SETTINGS[1][0], 0, "authors' step")
    lines += ["", f"The authors' loop on all cores (torch first, idle machine): {authors:.2f} s per step. Our first-run "
              "step on the idle machine: " + ", ".join(
                  f"{label} {sec(label, 0, 'first-run step'):.2f} s ({sec(label, 0, 'first-run step') / authors:.2f}x)"
                  for label, _ in SETTINGS) + "."]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sd15")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--refs", type=int, default=2)
    ap.add_argument("--regions", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="stylize steps timed per run (the median is kept)")
    ap.add_argument("--inversion-steps", type=int, default=5)
    ap.add_argument("--json", help="write the measurements here")
    ap.add_argument("--readme", action="store_true", help="write the tables into benchmarks/README.md")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--torch-first", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    start = time.perf_counter()
    result = measure(args)
    result["minutes"] = (time.perf_counter() - start) / 60
    text = render(result)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.readme:
        write_readme_table(Path(__file__).resolve(), sys.argv[1:], result["machine"], "threads",
                           f"; {result['minutes']:.1f} min in all.", text)


if __name__ == "__main__":
    main()
