"""One command that checks and measures the CUDA path, offline, on random-weight models it builds itself.

Items run in order of value, correctness first, each in its own process (a crash or an out-of-memory error ends
that item only) and within what is left of ``--budget-s``:

1. **environment** - torch, CUDA, the GPU, and what ``from_pretrained`` would choose on it;
2. **tests** - ``pytest -m gpu`` (tests/test_gpu.py: every stage in float16 and bfloat16, offload, checkpointing,
   LoRA, a cached re-run, the independent reference loss, a batch);
3. **build** - the random-weight ``sd15`` architecture (``make-test-model``), timed apart from the measurements;
4. **default run** - float16, 512 px, 2 references, 4 content regions, DINOv2 and depth off: each stage and the
   whole default run (150 steps), a warm re-run after one match override, an AttentionView map, the fast preset;
5. **compile** - ``torch.compile`` of the UNet for the stylize passes: per-step time against plain, and whether the
   compile time pays back within one default run;
6. **sdxl** - the random-weight ``sdxl`` architecture at 1024 px: seconds per step and peak memory, plain and
   with the low-memory setting (model offload and gradient checkpointing);
7. **high resolution** - a 2048 px result (``output_size``) of a 20-step run whose last 6 steps are refined in 512 px
   windows: the whole run, a refinement step, the peak memory.

Each measurement is appended, as it finishes, to ``gpu-check-<time>.jsonl`` and ``gpu-check-<time>.md`` in
``--out``, so a run cut short keeps what it measured. A failing item prints its traceback and the run goes on;
the exit status is the number of failed items. Without CUDA the script says so, runs the CPU stand-in tests
(tests/test_dtypes.py, tests/test_devices.py) and every item once on the tiny models at 128 px as a smoke run
(not a measurement; ``compile`` is left out), and exits 0 when nothing failed.

On the GPU machine, from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/gpu_check.py --budget-s 420
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CONTENT, ROOT, STYLES, code_state, machine, median  # noqa: E402

SCRIPT = Path(__file__).resolve()
ITEMS = ("environment", "tests", "build", "default-run", "compile", "sdxl-plain", "sdxl-low-memory", "high-resolution")


# ---------------------------------------------------------------------------------------------- settings
def plan(cuda: bool) -> dict:
    """What each item runs with: the measurement on a GPU, a smoke run on the tiny models on a CPU."""
    if cuda:
        return dict(device="cuda", model="sd15", size=512, steps=None, inversion_steps=15, per_step=10, xl="sdxl",
                    xl_size=1024, xl_steps=5, high_size=2048, high_steps=20)
    return dict(device="cpu", model="tiny", size=128, steps=4, inversion_steps=3, per_step=2, xl="tiny-sdxl",
                xl_size=128, xl_steps=2, high_size=256, high_steps=10)


class Log:
    """Appends one line per measurement to the run's JSONL and markdown files (flushed at once) and prints it."""

    def __init__(self, jsonl: Path, markdown: Path):
        self.jsonl, self.markdown = jsonl, markdown

    def __call__(self, item: str, measurement: str, value, unit: str = "", note: str = "", **extra) -> None:
        line = dict(item=item, measurement=measurement, value=value, unit=unit, note=note, **extra)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(line) + "\n")
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        row = f"| {item} | {measurement} | {shown} {unit} | {note} |".replace("  |", " |")
        with self.markdown.open("a") as f:
            f.write(row + "\n")
        print(row, flush=True)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _timed(device, call):
    _sync(device)
    start = time.perf_counter()
    out = call()
    _sync(device)
    return out, time.perf_counter() - start


def _peak_reset(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def _load(model: str, device: str, low_memory: bool = False):
    from stylegallery import StyleGallery

    return StyleGallery.from_pretrained(model, device=device, torch_dtype="float16" if device == "cuda" else "float32",
                                        semantic_model=False, depth_model=False, low_memory=low_memory)


def _per_step(pipe, stages, count: int, device, **settings) -> float:
    """Median wall seconds of a stylize step over ``count`` steps (the first one, which may fetch features or
    compile, left out)."""
    stamps = []

    def on_step(_info):
        _sync(device)
        stamps.append(time.perf_counter())
        return len(stamps) > count

    _sync(device)
    stamps.append(time.perf_counter())
    pipe.stylize(*stages, progress=False, callback=on_step, **settings)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return median(gaps[1:] or gaps)


def _stages(pipe, p: dict, size: int, inversion_steps: int | None = None):
    prepared = pipe.prepare(str(CONTENT), [str(s) for s in STYLES[:2]], size=size)
    inversion = pipe.invert(prepared, inversion_steps=inversion_steps or p["inversion_steps"], progress=False)
    segmentation = pipe.segment(prepared, inversion, n_clusters=4, use_depth=False, progress=False)
    return prepared, inversion, segmentation, pipe.match(prepared, inversion, segmentation)


# ---------------------------------------------------------------------------------------------- items
def item_environment(log: Log, p: dict, cuda: bool) -> None:
    log("environment", "torch", torch.__version__, note=f"CUDA {torch.version.cuda}; code {code_state()}")
    if not cuda:
        log("environment", "CUDA", "not available", note="no-CUDA mode: the CPU stand-in tests, and every item once on "
            "the tiny models at 128 px as a smoke run (not a measurement)")
        return
    from stylegallery.models.devices import choose_device

    properties = torch.cuda.get_device_properties(0)
    log("environment", "GPU", properties.name, note=f"{properties.total_memory / 2**30:.1f} GiB, compute capability "
        f"{properties.major}.{properties.minor}, {machine().get('cpus')} CPUs")
    log("environment", "automatic choice", str(choose_device()))


def item_tests(log: Log, p: dict, cuda: bool, timeout: float) -> None:
    files = ["tests/test_gpu.py"] + ([] if cuda else ["tests/test_dtypes.py", "tests/test_devices.py"])
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(["-m", "gpu"] if cuda else []), *files]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1].strip("= ")
    log("tests", " ".join(command[3:]), summary, note=f"{seconds:.0f} s")
    if proc.returncode != 0:
        print(proc.stdout[-6000:], proc.stderr[-2000:], sep="\n", flush=True)
        raise RuntimeError(f"pytest exited {proc.returncode}: {summary}")


def item_build(log: Log, p: dict, cuda: bool, name: str | None = None) -> None:
    from stylegallery.testing import cached_test_models

    name = name or p["model"]
    _, seconds = _timed("cpu", lambda: cached_test_models(name))
    log("build", f"random-weight {name} models", seconds, "s", "setup, not a measurement (cached afterwards)")


def item_default_run(log: Log, p: dict, cuda: bool) -> None:
    device = p["device"]
    pipe = _load(p["model"], device)
    what = f"{p['model']}, {p['size']} px, 2 refs, {'float16' if cuda else 'float32'}"
    if cuda:  # kernels load and cuDNN picks its algorithms on first use: not part of any measurement
        pipe(str(CONTENT), [str(s) for s in STYLES[:2]], size=p["size"], inversion_steps=2, n_clusters=4,
             use_depth=False, steps=2, progress=False)
        pipe.feature_cache.clear()
        pipe.inversion_cache.clear()
    settings = {} if p["steps"] is None else {"steps": p["steps"]}
    out, seconds = _timed(device, lambda: pipe(str(CONTENT), [str(s) for s in STYLES[:2]], size=p["size"],
                                               inversion_steps=p["inversion_steps"], n_clusters=4, use_depth=False,
                                               progress=False, **settings))
    for stage, stage_seconds in out.timings.items():
        log("default run", stage, stage_seconds, "s", what)
    steps = len(out.stylization.history)
    log("default run", f"whole run ({steps} steps)", seconds, "s", what + "; target on one H100: < 12 s")
    log("default run", "peak GPU memory", _peak_gib(device) or "n/a", "GiB" if cuda else "", what)

    stages = (out.prepared, out.inversion, out.segmentation, out.matching)
    overridden = copy.deepcopy(out.matching)
    second = overridden.columns[int(torch.as_tensor(overridden.score[0]).argsort(descending=True)[1])]
    overridden.override(0, *second)
    warm, seconds = _timed(device, lambda: pipe.stylize(*stages[:3], overridden, init=out.stylization, progress=False,
                                                        **settings))
    log("default run", f"warm re-run after one override ({len(warm.history)} steps)", seconds, "s",
        "stylize(init=...) over the last 30% of the timesteps; target on one H100: < 3 s")

    h, w = out.prepared.latents.shape[-2:]
    point = [(w * 4, h * 4)]  # the centre of the picture, in pixels
    for label in ("AttentionView map, first click", "AttentionView map, next click"):
        _, seconds = _timed(device, lambda: pipe.attention_maps(out.prepared, out.segmentation, out.matching, point))
        log("default run", label, seconds, "s", "one point, every reference")

    preset = pipe.use_preset("lcm")
    fast, seconds = _timed(device, lambda: pipe.stylize(*stages, **preset, progress=False))
    before = sum(v for k, v in out.timings.items() if k != "stylize")
    log("default run", f"fast preset stylize ({len(fast.history)} steps)", seconds, "s", "LCM-LoRA fused (random)")
    log("default run", "fast preset whole run", before + seconds, "s",
        "the stages before stylize as above, plus the fast stylize; target on one H100: < 6 s")


def item_compile(log: Log, p: dict, cuda: bool) -> None:
    device = p["device"]
    pipe = _load(p["model"], device)
    stages = _stages(pipe, p, p["size"], inversion_steps=2)
    steps = p["per_step"]
    plain = _per_step(pipe, stages, steps, device, steps=steps + 2)
    log("compile", "plain step", plain, "s", f"{p['model']}, {p['size']} px, median of {steps}")
    pipe.unet.compile()
    _, first = _timed(device, lambda: pipe.stylize(*stages, steps=2, progress=False))
    compiled = _per_step(pipe, stages, steps, device, steps=steps + 2)
    gain = plain - compiled
    pays = gain > 0 and first / gain < 150
    log("compile", "first 2 steps with torch.compile", first, "s", "includes compiling")
    log("compile", "compiled step", compiled, "s", f"{plain / compiled:.2f}x plain; "
        + (f"pays back in {first / gain:.0f} steps of a 150-step run" if pays else "does not pay within one run"))


def _item_sdxl(log: Log, p: dict, cuda: bool, low_memory: bool) -> None:
    device = p["device"]
    item_build(log, p, cuda, p["xl"])
    pipe = _load(p["xl"], device, low_memory=low_memory)
    stages = _stages(pipe, p, p["xl_size"], inversion_steps=2)
    _peak_reset(device)
    step = _per_step(pipe, stages, p["xl_steps"], device, steps=p["xl_steps"] + 2)
    what = "model offload + gradient checkpointing" if low_memory else "plain"
    name = "sdxl-low-memory" if low_memory else "sdxl-plain"
    log(name, "stylize step", step, "s", f"{p['xl']}, {p['xl_size']} px, 2 refs, {what}")
    log(name, "peak GPU memory during stylize", _peak_gib(device) or "n/a", "GiB" if cuda else "", what)


def item_sdxl_plain(log: Log, p: dict, cuda: bool) -> None:
    _item_sdxl(log, p, cuda, low_memory=False)


def item_sdxl_low_memory(log: Log, p: dict, cuda: bool) -> None:
    _item_sdxl(log, p, cuda, low_memory=True)


def item_high_resolution(log: Log, p: dict, cuda: bool) -> None:
    device = p["device"]
    pipe = _load(p["model"], device)
    stages = _stages(pipe, p, p["size"], inversion_steps=2)
    stamps = []

    def stamp(info) -> None:
        _sync(device)
        stamps.append((info.phase, time.perf_counter()))

    _peak_reset(device)
    out, seconds = _timed(device, lambda: pipe.stylize(*stages, output_size=p["high_size"], steps=p["high_steps"],
                                                       progress=False, callback=stamp))
    refined = out.settings["output"]
    log("high resolution", f"{p['high_size']} px run ({len(out.history)} steps, the last {len(out.output_history)} "
        f"refined in {refined['windows']} windows of {refined['window']} px)", seconds, "s", p["model"])
    refine = [at for phase, at in stamps if phase == "output size"]
    if len(refine) > 1:
        log("high resolution", "refinement step (all windows)", median([b - a for a, b in zip(refine, refine[1:])]), "s")
    log("high resolution", "peak GPU memory", _peak_gib(device) or "n/a", "GiB" if cuda else "")


WORKERS = {"build": item_build, "default-run": item_default_run, "compile": item_compile,
           "sdxl-plain": item_sdxl_plain, "sdxl-low-memory": item_sdxl_low_memory,
           "high-resolution": item_high_resolution}


# ---------------------------------------------------------------------------------------------- driver
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSONL and "
                        "markdown files (default benchmarks/results)")
    parser.add_argument("--budget-s", type=float, default=420, help="the whole run's limit in seconds (420)")
    parser.add_argument("--items", default=",".join(ITEMS), help=f"comma-separated subset of {', '.join(ITEMS)}")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--log", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cuda = torch.cuda.is_available()
    p = plan(cuda)
    if args.worker:  # one item in this process, logging into the driver's files
        WORKERS[args.worker](Log(Path(args.log[0]), Path(args.log[1])), p, cuda)
        return 0

    items = [i.strip() for i in args.items.split(",") if i.strip()]
    unknown = [i for i in items if i not in ITEMS]
    if unknown or args.budget_s <= 0:
        print(f"gpu_check: {'unknown item(s) ' + ', '.join(unknown) if unknown else '--budget-s must be positive'}; "
              f"items: {', '.join(ITEMS)}", file=sys.stderr)
        return 2
    if not cuda:
        print("gpu_check: no CUDA GPU found: running the CPU parts (stand-in tests and a smoke run of every item on "
              "the tiny models); nothing here is a GPU measurement", flush=True)
        items = [i for i in items if i != "compile"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = Log(out / f"gpu-check-{stamp}.jsonl", out / f"gpu-check-{stamp}.md")
    log.markdown.write_text(f"GPU check of {time.strftime('%Y-%m-%d %H:%M')}, `python benchmarks/gpu_check.py "
                            f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
                            "| item | measurement | value | note |\n| --- | --- | --- | --- |\n")
    start = time.perf_counter()
    failed, not_run = [], []
    for item in items:
        left = args.budget_s - (time.perf_counter() - start)
        if left < 5:
            not_run.append(item)
            continue
        print(f"gpu_check: {item} ({left:.0f} s of the budget left)", flush=True)
        try:
            if item == "environment":
                item_environment(log, p, cuda)
            elif item == "tests":
                item_tests(log, p, cuda, timeout=left)
            else:
                proc = subprocess.run([sys.executable, str(SCRIPT), "--worker", item, "--log", str(log.jsonl),
                                       str(log.markdown)], cwd=ROOT, timeout=left,
                                      env=dict(os.environ, TQDM_DISABLE="1"))
                if proc.returncode != 0:
                    raise RuntimeError(f"the {item} worker exited {proc.returncode} (its traceback is above)")
        except subprocess.TimeoutExpired:
            failed.append(item)
            log(item, "status", "stopped", note="the budget ran out while it ran")
        except Exception as error:  # noqa: BLE001  (any failure is reported and the next item runs)
            traceback.print_exc()
            failed.append(item)
            log(item, "status", "failed", note=str(error).splitlines()[0] if str(error) else type(error).__name__)
    seconds = time.perf_counter() - start
    for item in not_run:
        log(item, "status", "not run", note="the budget was spent")
    print(f"gpu_check: {len(items) - len(failed) - len(not_run)} item(s) done, {len(failed)} failed, {len(not_run)} not "
          f"run, in {seconds:.0f} s; results in {log.markdown} and {log.jsonl}", flush=True)
    return min(len(failed), 255)


if __name__ == "__main__":
    sys.exit(main())
