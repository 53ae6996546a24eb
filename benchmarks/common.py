"""Helpers shared by the benchmarks: machine description, peak-memory probes, loading, worker subprocesses.

Not part of the package or the test suite. Run the benchmarks from the repository root, e.g.
``python benchmarks/bench_stylize.py --quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
CONTENT = DATA / "content_astronaut.jpg"
STYLES = [DATA / n for n in ("style_painting.png", "style_brick.jpg", "style_grass.jpg", "style_gravel.jpg")]


# ---------------------------------------------------------------------------------------------- machine
def machine() -> dict:
    """What the numbers were measured on."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", info["cpu"]).strip()
        info["cpus"] = int(fields.get("CPU(s)", info["cpus"]))
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def code_state() -> str:
    """The commit measured, and which package files differed from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "stylegallery"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.split("\n")
        changed = [line[3:] for line in dirty if line.strip()]
        return head + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------- memory
def _status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of one phase of a process.

    CPU: the resident-set high-water mark (``getrusage`` ``ru_maxrss``), reset at :meth:`start` by writing 5 to
    ``/proc/self/clear_refs`` (Linux) so that model loading does not count; where that is impossible the mark
    covers the whole process (``reset`` is then False). CUDA: ``torch.cuda.max_memory_allocated`` after
    ``reset_peak_memory_stats``. ``baseline`` is what was resident when the phase began; ``extra`` = peak -
    baseline is the phase's working memory.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.reset = False
        self.baseline = 0

    def start(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline, self.reset = torch.cuda.memory_allocated(), True
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.baseline = _status("VmRSS") or 0
        return self

    def read(self) -> dict:
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            kind = "cuda max_memory_allocated"
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            kind = "ru_maxrss" + ("" if self.reset else " (whole process: clear_refs unavailable)")
        return {"peak": peak, "baseline": self.baseline, "extra": max(peak - self.baseline, 0), "kind": kind}


# ---------------------------------------------------------------------------------------------- loading
def load_pipe(model: str, device: str = "cpu", dtype: str = "auto", low_memory: bool = False):
    """The pipeline without DINOv2 / depth (matching then uses its statistical and geometric terms), with the
    low-memory setting only if asked (never chosen from the GPU's free memory)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from stylegallery import StyleGallery

    return StyleGallery.from_pretrained(model, device=device, torch_dtype=dtype, semantic_model=False, depth_model=False,
                                        low_memory=low_memory)


def worker_stages(args):
    """A worker's pipeline (``args``: model, device, dtype, threads) and the sample content with ``args.refs``
    references at ``args.size``, run up to match (2 inversion steps, ``args.regions`` content regions):
    ``(pipe, (prepared, inversion, segmentation, matching))``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipe(args.model, args.device, args.dtype)
    if args.threads:
        pipe.cpu_threads = args.threads
    prepared = pipe.prepare(CONTENT, STYLES[: args.refs], size=args.size)
    inversion = pipe.invert(prepared, inversion_steps=2, progress=False)
    segmentation = pipe.segment(prepared, inversion, n_clusters=args.regions or None, progress=False)
    return pipe, (prepared, inversion, segmentation, pipe.match(prepared, inversion, segmentation))


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def now(device=None) -> float:
    if device is not None:
        sync(device)
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------- workers
def run_worker(script: Path, args: list[str], timeout: float | None = None) -> dict:
    """Run ``python script --worker ...`` in a fresh process; return the JSON object it prints last."""
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"), TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {args} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.2f} {unit}" if unit == "GiB" else f"{n:.0f} {unit}"
        n /= 1024
    return str(n)


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """The options every pipeline benchmark takes: model, device, dtype, size, references, content regions,
    threads, ``--json FILE`` and ``--readme``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--model", default="sd15")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--refs", type=int, default=2)
    parser.add_argument("--regions", type=int, default=4, help="content regions (k forced: random weights give "
                                                                "one adaptive cluster); 0 = adaptive")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="write the measurements here")
    parser.add_argument("--readme", action="store_true", help="write the table into benchmarks/README.md")
    return parser


def run_benchmark(script: Path, args, measure, render, marker: str) -> dict:
    """Run ``measure(args)`` (on ``args.threads`` torch threads if given), print ``render(result)`` and the JSON, and
    write them to ``args.json`` and, with ``args.readme``, into benchmarks/README.md under ``marker``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = measure(args)
    result["minutes"] = (time.perf_counter() - start) / 60
    text = render(result)
    print(text)
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.readme:
        write_readme_table(script, sys.argv[1:], result["machine"], marker, f"; {result['minutes']:.1f} min in all.",
                           text)
    return result


def write_readme_table(script: Path, argv, info: dict, marker: str, what: str, text: str) -> None:
    """Write ``text`` into benchmarks/README.md under ``marker``, headed by date, command, machine and code."""
    cmd = f"python benchmarks/{script.name} " + " ".join(a for a in argv if a != "--readme")
    head = (f"Measured {time.strftime('%Y-%m-%d')} with `{cmd.strip()}` on {info.get('cpu')} ({info.get('cpus')} "
            f"CPUs, torch {info.get('torch')}), code {code_state()}; load average {load_average()} at the end{what}\n\n")
    replace_section(script.parent / "README.md", marker, head + text)


def replace_section(path: Path, marker: str, text: str) -> None:
    """Put ``text`` between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in ``path`` (appended if absent)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    body = path.read_text() if path.exists() else ""
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in body and end in body:
        head, rest = body.split(start, 1)
        body = head + block + rest.split(end, 1)[1]
    else:
        body = body.rstrip() + ("\n\n" if body else "") + block + "\n"
    path.write_text(body)
