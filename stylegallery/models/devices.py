"""Devices, dtypes and memory: what ``device="auto"``, ``torch_dtype="auto"`` and ``low_memory="auto"`` choose.

On CUDA the dtype is float16, the release's, on every GPU (bfloat16 only when asked for, and refused on GPUs
without it, such as Colab's T4); the low-memory setting (models offloaded to the CPU between stages, gradient
checkpointing in stylize) is chosen when the GPU has less than :data:`LOW_MEMORY_BELOW` free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import StyleGalleryError

#: ``low_memory="auto"`` offloads and checkpoints on a CUDA GPU with less free memory than this (a 16 GB T4 has
#: about 15 GiB; an A100 40 GB, 39 GiB).
LOW_MEMORY_BELOW = 16 * 2**30
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise StyleGalleryError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StyleGalleryError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise StyleGalleryError("device 'mps' was asked for but MPS is not available; use --device cpu")
    return device


@dataclass(frozen=True)
class Gpu:
    """What a CUDA GPU offers, as far as the choice of dtype and memory settings needs it."""

    name: str
    free_bytes: int
    total_bytes: int
    bfloat16: bool  # native bfloat16 (compute capability 8.0 or later: A100, H100, RTX 30xx...; not a T4)

    @classmethod
    def of(cls, device: torch.device) -> "Gpu":
        """Read the facts of a CUDA device from torch."""
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        return cls(torch.cuda.get_device_name(index), free, total, torch.cuda.get_device_capability(index)[0] >= 8)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, gpu: Gpu | None = None) -> torch.dtype:
    """``auto`` is float16 on CUDA and float32 elsewhere; bfloat16 on a GPU ``gpu`` says lacks it is refused."""
    if not isinstance(dtype, torch.dtype):
        if dtype != "auto" and dtype not in _DTYPES:
            raise StyleGalleryError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
        dtype = (torch.float16 if device.type == "cuda" else torch.float32) if dtype == "auto" else _DTYPES[dtype]
    if dtype == torch.bfloat16 and gpu is not None and not gpu.bfloat16:
        raise StyleGalleryError(f"this GPU ({gpu.name}) has no native bfloat16; use float16 (the default on CUDA)")
    return dtype


@dataclass(frozen=True)
class DeviceChoice:
    """Where and how the models run: device, dtype and whether the low-memory setting is on."""

    device: torch.device
    dtype: torch.dtype
    low_memory: bool
    gpu: Gpu | None = None

    def __str__(self) -> str:
        where = str(self.device)
        if self.gpu is not None:
            where += f" ({self.gpu.name}, {self.gpu.free_bytes / 2**30:.1f} of {self.gpu.total_bytes / 2**30:.1f} GiB free)"
        memory = ("low memory: each model on the GPU only while its stage runs, gradient checkpointing in stylize"
                  if self.low_memory else "all models kept on the device")
        return f"StyleGallery on {where}: {str(self.dtype).replace('torch.', '')}, {memory}"


def choose_device(device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
                  low_memory: bool | str = "auto", gpu: Gpu | None = None) -> DeviceChoice:
    """Resolve the three settings; ``gpu`` (read from torch when None and the device is CUDA) is what they are
    chosen from. ``low_memory="auto"`` is on for a CUDA GPU with less than :data:`LOW_MEMORY_BELOW` free."""
    if low_memory != "auto" and not isinstance(low_memory, bool):
        raise StyleGalleryError(f"low_memory must be True, False or 'auto' (got {low_memory!r})")
    device = resolve_device(device)
    if device.type == "cuda" and gpu is None:
        gpu = Gpu.of(device)
    if low_memory == "auto":
        low_memory = gpu is not None and gpu.free_bytes < LOW_MEMORY_BELOW
    return DeviceChoice(device, resolve_dtype(dtype, device, gpu), low_memory, gpu)


def free_memory(device: torch.device) -> int:
    """Bytes free for new work on ``device``: the CUDA GPU's free memory, or elsewhere the memory the operating
    system reports available."""
    if device.type == "cuda":
        return Gpu.of(device).free_bytes
    import psutil

    return int(psutil.virtual_memory().available)
