"""Which attention kernel should stylize's gradient pass use on the CPU: PyTorch's flash kernel or the math one?

An earlier ``AttentionRecorder.run`` forced ``SDPBackend.MATH`` for CPU passes with gradients; this benchmark is
why it no longer does. It times exactly that pass (record q and o of the loss layers, stop after the last,
backward from a loss on them) with PyTorch's own kernel choice and with the math kernel forced, each in a fresh
process, and reports time and extra peak memory.

    python benchmarks/bench_kernels.py                        # sd15 at 256 and 512 px, tiny at 512 px
    python benchmarks/bench_kernels.py --setting sd15:512 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakMemory, load_pipe, machine, run_worker, write_readme_table  # noqa: E402

SCRIPT = Path(__file__).resolve()


def worker(model: str, size: int, kernel: str, threads: int, repeats: int) -> dict:
    if threads:
        torch.set_num_threads(threads)
    # "default": PyTorch chooses (flash on the CPU for these shapes)
    forced = (lambda: sdpa_kernel(SDPBackend.MATH)) if kernel == "math" else contextlib.nullcontext
    pipe = load_pipe(model)
    emb = pipe.backbone.embedding
    with torch.no_grad():  # page the weights in
        pipe.unet(torch.zeros(1, 4, 8, 8), 999, encoder_hidden_states=emb)
    z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    wall, cpu, extra = [], [], []
    for _ in range(repeats):
        mem = PeakMemory(torch.device("cpu")).start()
        start, start_cpu = time.perf_counter(), time.process_time()
        with forced():
            records = pipe.recorder.run(pipe.unet, z, 500, emb, keep=("q", "o"))
        sum(r["o"].abs().mean() + r["q"].abs().mean() for r in records.values()).backward()
        z.grad = None
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        extra.append(mem.read()["extra"])
    return {"wall": wall, "cpu": cpu, "extra": extra}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", action="append", help="MODEL:SIZE, repeatable (default sd15:256, sd15:512, tiny:512)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--readme", action="store_true", help="write the table into benchmarks/README.md")
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "SIZE", "KERNEL"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        model, size, kernel = args.worker
        print(json.dumps(worker(model, int(size), kernel, args.threads, args.repeats)))
        return
    settings = args.setting or ["sd15:256", "sd15:512", "tiny:512"]
    info = machine()
    lines = ["| model | size | kernel | fastest pass, CPU s | wall s | extra peak RSS of the pass |",
             "|---|---:|---|---:|---:|---:|"]
    for setting in settings:
        model, size = setting.rsplit(":", 1)
        for kernel in ("default", "math"):
            r = run_worker(SCRIPT, ["--worker", model, size, kernel, "--threads", str(args.threads),
                                    "--repeats", str(args.repeats)])
            label = "math (forced)" if kernel == "math" else "PyTorch's choice (flash)"
            lines.append(f"| {model} | {size} | {label} | {min(r['cpu']):.2f} | {min(r['wall']):.2f} | "
                         f"{max(r['extra']) / 2**30:.2f} GiB |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    if args.readme:
        write_readme_table(SCRIPT, argv or sys.argv[1:], info, "kernels", ". One stylize gradient pass (record q and o "
                           "of the loss layers, stop after the last, backward).", text)


if __name__ == "__main__":
    main()
