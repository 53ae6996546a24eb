"""What device, dtype and memory settings ``"auto"`` chooses, on GPUs faked through torch.cuda's own functions
(a Colab T4, an A100, an H100), and that the low-memory setting reaches stylize."""

import pytest
import torch

from stylegallery import StyleGallery, StyleGalleryError
from stylegallery.models.devices import LOW_MEMORY_BELOW, Gpu, choose_device

GIB = 2**30
T4 = dict(name="Tesla T4", free=14.6 * GIB, total=14.7 * GIB, capability=(7, 5))
A100 = dict(name="NVIDIA A100-SXM4-40GB", free=39.1 * GIB, total=39.4 * GIB, capability=(8, 0))
H100_BUSY = dict(name="NVIDIA H100 80GB HBM3", free=9.0 * GIB, total=79.1 * GIB, capability=(9, 0))


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make torch.cuda report one GPU with the given properties (no CUDA call reaches a driver)."""

    def install(name, free, total, capability):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (int(free), int(total)))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)

    return install


def test_a_colab_t4_gets_float16_and_the_low_memory_setting(fake_gpu):
    fake_gpu(**T4)
    choice = choose_device()
    assert (choice.device.type, choice.dtype, choice.low_memory) == ("cuda", torch.float16, True)
    assert choice.gpu == Gpu("Tesla T4", int(T4["free"]), int(T4["total"]), bfloat16=False)
    line = str(choice)
    assert "\n" not in line
    assert "Tesla T4" in line and "14.6 of 14.7 GiB free" in line and "float16" in line and "low memory" in line


def test_a_large_gpu_keeps_every_model_on_it_in_float16(fake_gpu):
    fake_gpu(**A100)
    choice = choose_device()
    assert (choice.dtype, choice.low_memory) == (torch.float16, False)
    assert choice.gpu.bfloat16
    assert "all models kept on the device" in str(choice)


def test_free_memory_not_the_total_decides(fake_gpu):
    fake_gpu(**H100_BUSY)  # 80 GB, most of it taken by another process
    assert choose_device().low_memory
    assert H100_BUSY["free"] < LOW_MEMORY_BELOW < A100["free"]


def test_bfloat16_is_refused_where_the_gpu_has_none_and_given_where_it_has(fake_gpu):
    fake_gpu(**T4)
    with pytest.raises(StyleGalleryError, match="Tesla T4.*no native bfloat16.*float16"):
        choose_device(dtype="bfloat16")
    fake_gpu(**A100)
    assert choose_device(dtype="bf16").dtype == torch.bfloat16


def test_explicit_settings_win_over_the_choice(fake_gpu):
    fake_gpu(**T4)
    assert not choose_device(low_memory=False).low_memory
    assert choose_device(dtype="float32").dtype == torch.float32
    fake_gpu(**A100)
    assert choose_device(low_memory=True).low_memory


def test_on_a_cpu_auto_is_float32_without_offload():
    choice = choose_device("cpu")
    assert (choice.device.type, choice.dtype, choice.low_memory, choice.gpu) == ("cpu", torch.float32, False, None)
    assert str(choice) == "StyleGallery on cpu: float32, all models kept on the device"


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_an_impossible_low_memory_value_is_refused(bad):
    with pytest.raises(StyleGalleryError, match="low_memory must be True, False or 'auto'"):
        choose_device("cpu", low_memory=bad)


def test_low_memory_makes_stylize_checkpoint_and_says_nothing_on_a_cpu(model_dir, planted_stages, capsys):
    pipe = StyleGallery.from_pretrained(str(model_dir / "sd"), semantic_model=False, depth_model=False, device="cpu",
                                        low_memory=True)
    assert capsys.readouterr().out == ""  # the one line is for GPUs, where there is something to choose
    assert pipe.low_memory and pipe.device_choice.low_memory
    seen = []
    pipe.stylize(*planted_stages, steps=2, progress=False,
                 callback=lambda info: seen.append(pipe.unet.is_gradient_checkpointing))
    assert seen == [True, True]
    assert not pipe.unet.is_gradient_checkpointing  # off again after the stage


def test_the_gpu_check_runs_in_its_no_cuda_mode(tmp_path):
    """``benchmarks/gpu_check.py`` on a machine without CUDA: says so, runs the CPU parts, writes one line per
    measurement and exits 0 (on a GPU machine the same command measures)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would measure, which takes minutes")
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    proc = subprocess.run([sys.executable, str(script), "--budget-s", "3000", "--out", str(tmp_path),
                           "--items", "environment,build,default-run,sdxl-plain,high-resolution"],
                          capture_output=True, text=True, timeout=3600)  # budgets no load reaches: this is
    # about the no-CUDA mode, not about time
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no CUDA GPU found" in proc.stdout
    (jsonl,) = tmp_path.glob("gpu-check-*.jsonl")
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    measured = {(line["item"], line["measurement"]) for line in lines}
    assert ("environment", "CUDA") in measured and ("default run", "fast preset whole run") in measured
    assert ("sdxl-plain", "stylize step") in measured
    assert ("high resolution", "refinement step (all windows)") in measured
    assert not any(line["measurement"] == "status" for line in lines)  # no item failed or ran out of time
    assert next(tmp_path.glob("gpu-check-*.md")).read_text().count("\n| ") == len(lines) + 2  # + the header rows
