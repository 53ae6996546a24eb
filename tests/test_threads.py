"""CPU threads (README, "CPU threads"): OpenMP waits passively when stylegallery is imported before torch, and then
the stages use every core; where torch came first, each stage takes the cores other processes left free."""

import os
import subprocess
import sys

import pytest
import torch

from stylegallery import StyleGalleryError, threads


def _fresh_python(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True,
                          check=True).stdout.strip()


REPORT = "import os, stylegallery.threads as t; print(os.environ.get('OMP_WAIT_POLICY'), t.PASSIVE_WAIT)"


def test_importing_stylegallery_first_makes_openmp_wait_passively():
    assert _fresh_python(REPORT) == "PASSIVE True"
    # the command line imports the package before torch
    assert _fresh_python("import os, stylegallery.tools.cli; print(os.environ['OMP_WAIT_POLICY'])") == "PASSIVE"


def test_torch_imported_first_or_a_users_policy_is_left_alone():
    assert _fresh_python("import torch; " + REPORT) == "None False"
    assert _fresh_python(REPORT, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE False"
    assert _fresh_python("import torch; " + REPORT, OMP_WAIT_POLICY="passive") == "passive True"


class _Clock:
    """Scripted CPU-time samples (time, machine busy seconds, own seconds) in place of psutil's."""

    def __init__(self, monkeypatch, *samples):
        self.samples = list(samples)
        self.slept = []
        monkeypatch.setattr(threads.FreeCores, "_sample", staticmethod(lambda: self.samples.pop(0)))
        monkeypatch.setattr(threads.time, "sleep", self.slept.append)


def test_free_cores_are_the_cores_other_processes_left(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    # start at 0 s; a stage runs 10 s using 2 cores while another process uses 1: the machine is busy 30 s
    clock = _Clock(monkeypatch, (0.0, 0.0, 0.0), (10.0, 30.0, 20.0), (10.05, 30.05, 20.0))
    free = threads.FreeCores(window=0.2)
    free.mark()
    # 0.05 s after the mark is too short a window: measured from the start, 1 core taken by others
    assert free.others() == pytest.approx(1.0, abs=0.01)
    # the machine idle apart from us: both cores
    clock.samples = [(20.0, 40.0, 30.0), (30.0, 45.0, 35.0)]
    free.mark()
    assert free.others() == 0.0 and not clock.slept
    clock.samples = [(40.0, 45.0, 35.0)]
    assert free.threads(most=2) == 2
    # one other busy process: one thread; two: still one, never fewer
    clock.samples = [(50.0, 70.0, 30.0)]
    assert free.threads(most=2) == 1
    clock.samples = [(60.0, 120.0, 30.0)]
    assert free.threads(most=4) == 1


def test_the_first_measure_waits_for_the_window(monkeypatch):
    clock = _Clock(monkeypatch, (0.0, 0.0, 0.0), (0.05, 0.1, 0.0), (0.2, 0.3, 0.1))
    free = threads.FreeCores(window=0.2)
    assert free.others() == pytest.approx(1.0)
    assert clock.slept == [pytest.approx(0.15)]


def test_stage_threads_follow_the_setting_and_the_wait_policy(monkeypatch):
    assert threads.stage_threads(3) == 3 and threads.stage_threads(None) is None
    monkeypatch.setattr(threads, "PASSIVE_WAIT", True)
    assert threads.stage_threads("auto") is None  # torch's own setting: every core
    monkeypatch.setattr(threads, "PASSIVE_WAIT", False)
    monkeypatch.setattr(threads, "_FREE_CORES", type("Fixed", (), {"threads": lambda self, most: min(most, 1)})())
    assert threads.stage_threads("auto") == 1


def test_stages_run_on_the_chosen_threads_and_restore_torchs(pipe, planted_stages, monkeypatch):
    prepared, inversion, seg, matching = planted_stages
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(threads, "PASSIVE_WAIT", False)
        monkeypatch.setattr(threads, "_FREE_CORES", type("Fixed", (), {"threads": lambda self, most: 1,
                                                                        "mark": lambda self: None})())
        for setting, expected in [(1, 1), (None, 2), ("auto", 1)]:
            monkeypatch.setattr(pipe, "cpu_threads", setting)
            seen = []
            pipe.stylize(prepared, inversion, seg, matching, steps=2, progress=False,
                         callback=lambda info: seen.append(torch.get_num_threads()))
            assert seen == [expected, expected] and torch.get_num_threads() == 2  # restored after the stage
    finally:
        torch.set_num_threads(before)


def test_impossible_thread_counts_are_refused(pipe):
    for bad in (0, -2, 1.5, "all", True):
        with pytest.raises(StyleGalleryError, match="cpu_threads must be"):
            pipe.cpu_threads = bad
    assert pipe.cpu_threads == "auto"
