"""How many CPU threads the stages use (torch's intra-op threads, set for the length of a stage), and OpenMP's wait
policy.

An OpenMP thread that finishes its share of a parallel region spins for a while ("active" waiting) before it
sleeps. When another process holds a core, every region then waits for a thread that is not running, and a step on
all cores can take longer than on one. With a passive wait policy idle threads sleep at once and all cores cost
nothing under load. OpenMP reads the policy once, when its runtime starts (when torch is imported), so importing
stylegallery sets ``OMP_WAIT_POLICY=PASSIVE`` if torch is not loaded yet and the user has not set the variable.
Where torch was loaded first, each stage instead takes the cores other processes left free lately (:class:`FreeCores`).
This module imports torch only inside its functions, so that the package can set the policy first.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

#: ``pipe.cpu_threads`` by default: every core with a passive wait policy, else the cores left free (per stage).
AUTO = "auto"


def prefer_passive_wait() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless torch is loaded already or the variable is set; return whether the
    OpenMP runtime works with a passive policy (the variable, as set before torch was loaded)."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


#: Whether this process's OpenMP threads sleep when idle: decided when stylegallery was first imported.
PASSIVE_WAIT = prefer_passive_wait()


def usable_cores() -> int:
    """The logical cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class FreeCores:
    """The cores other processes left free lately: the machine's busy CPU time less this process's own, over the
    latest stretch of at least ``window`` seconds between two marks (:meth:`mark` is called as each stage ends).
    """

    def __init__(self, window: float = 0.2):
        self.window = window
        self._marks = [self._sample()]

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        import psutil

        machine, own = psutil.cpu_times(), psutil.Process().cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        busy -= getattr(machine, "guest", 0.0) + getattr(machine, "guest_nice", 0.0)  # counted in user on Linux
        return time.monotonic(), busy, own.user + own.system

    def mark(self) -> None:
        """Remember the CPU times now (the end of a stage)."""
        self._marks = [*self._marks[-3:], self._sample()]

    def others(self) -> float:
        """Cores taken by other processes over the latest stretch of at least ``window`` seconds (waits for the
        rest of the window after the first mark)."""
        now = self._sample()
        start = next((m for m in reversed(self._marks) if now[0] - m[0] >= self.window), None)
        if start is None:
            start = self._marks[0]
            time.sleep(max(0.0, self.window - (now[0] - start[0])))
            now = self._sample()
        seconds = max(now[0] - start[0], 1e-6)
        return max(0.0, ((now[1] - start[1]) - (now[2] - start[2])) / seconds)

    def threads(self, most: int) -> int:
        """Threads for the next stage: the cores the others left free, rounded, from 1 to ``most``."""
        return max(1, min(most, round(usable_cores() - self.others())))


_FREE_CORES: FreeCores | None = None


def stage_threads(setting: int | str | None) -> int | None:
    """Torch threads for a stage on the CPU. An int is the user's choice; None keeps torch's own setting;
    ``"auto"``: torch's own setting (every core) with a passive wait policy, else the cores left free lately."""
    global _FREE_CORES
    if setting != AUTO:
        return setting
    if PASSIVE_WAIT:
        return None
    import torch

    if _FREE_CORES is None:
        _FREE_CORES = FreeCores()
    return _FREE_CORES.threads(torch.get_num_threads())


def stage_ended() -> None:
    """Mark the end of a stage for :class:`FreeCores` (nothing to do unless it is in use)."""
    if _FREE_CORES is not None:
        _FREE_CORES.mark()


def check_cpu_threads(value) -> None:
    """``pipe.cpu_threads`` must be ``"auto"``, None or a positive int."""
    from .errors import StyleGalleryError

    if value is None or value == AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return
    raise StyleGalleryError(f"cpu_threads must be 'auto', None (torch's own setting) or a thread count >= 1, "
                            f"not {value!r}")


@contextlib.contextmanager
def torch_threads(count: int | None):
    """Run the block with ``count`` torch threads (None: torch's own setting), restoring torch's setting after."""
    import torch

    before = torch.get_num_threads()
    if count and count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
