"""How many CPU threads the stages use: torch's intra-op threads, set for the length of a stage."""

from __future__ import annotations

import contextlib
import os

import torch


def spare_core_threads() -> int:
    """Torch's intra-op thread count less one, leaving a core free (at least 1 thread)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores - 1))


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run the block with ``count`` torch threads (None: torch's own setting), restoring torch's setting after."""
    before = torch.get_num_threads()
    if count and count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
