"""A bounded cache of tensors keyed by content hashes and settings: in memory, and optionally on disk.

Used for the per-timestep attention features of stylize and for inversion results, so that re-running a later
stage never recomputes what depends only on the images, the model and the settings. Disk entries are
safetensors files, written atomically, so several processes can share a directory (``stylegallery batch``
does); an unreadable entry is deleted and recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .results import write_atomic


def cache_key(**parts) -> str:
    """A stable hex key from JSON-serialisable parts (image hashes, model fingerprint, settings)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def inversion_key(model: str, image: str, grid: tuple[int, int], steps: int, weights: list[float],
                  dtype: torch.dtype, vae_dtype: torch.dtype) -> str:
    """The key of one image's inversion: what it depends on (model fingerprint, image hash, latent grid, steps, the
    features' temporal weights, and the dtypes the UNet and the VAE ran in)."""
    return cache_key(kind="inversion", model=model, image=image, grid=grid, steps=steps, weights=weights,
                     dtype=str(dtype), vae_dtype=str(vae_dtype))


def attention_key(model: str, image: str, grid: tuple[int, int], t: int, layers: list[int], role: str,
                  dtype: torch.dtype, vae_dtype: torch.dtype, precision: torch.dtype) -> str:
    """The key of one image's attention features at timestep ``t`` (the content's queries, or a reference's keys
    and values, by ``role``): the stylize model (with its LoRA), image, grid, timestep, layers, dtypes (the UNet's,
    the VAE's that made the latent, and the stored features')."""
    return cache_key(kind="attention", model=model, image=image, grid=grid, t=int(t), layers=layers, role=role,
                     dtype=str(dtype), vae_dtype=str(vae_dtype), precision=str(precision))


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _nbytes(entry: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values())


class TensorCache:
    """LRU cache of ``{name: tensor}`` entries, at most ``max_bytes`` in memory and ``max_disk_bytes`` on disk.

    Floating tensors are stored as ``dtype`` (half precision by default: attention features survive it to
    about 1e-3 relative error). ``enabled=False`` turns every lookup into a miss and stores nothing.

    A caller that walks many entries in order (stylize's timesteps) calls :meth:`start_run` first. Entries used
    since then are never evicted for new ones of the same run: when a run needs more than ``max_bytes``, the
    part that fits stays cached (a re-run is served for that share) instead of each entry being evicted just
    before the next run asks for it, and a warning says how to make room.
    """

    def __init__(self, max_bytes: int = 4 << 30, directory: str | os.PathLike | None = None,
                 max_disk_bytes: int = 20 << 30, dtype: torch.dtype = torch.float16, enabled: bool = True):
        self.max_bytes = max_bytes
        self.directory = Path(directory) if directory else None
        self.max_disk_bytes = max_disk_bytes
        self.dtype = dtype
        self.enabled = enabled
        self._memory: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._in_run: set[str] = set()
        self._warned = False
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        """Bytes held in memory."""
        return sum(_nbytes(e) for e in self._memory.values())

    @property
    def disk_bytes(self) -> int:
        """Bytes held on disk."""
        if self.directory is None or not self.directory.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.directory.glob("*.safetensors") if p.exists())

    def clear(self) -> None:
        """Forget everything held in memory (disk entries stay)."""
        self._memory.clear()
        self._in_run.clear()

    def start_run(self) -> None:
        """Begin a run: from now on, entries this run uses are kept in preference to older ones."""
        self._in_run.clear()
        self._warned = False

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def get(self, key: str, device=None, dtype=None) -> dict[str, torch.Tensor] | None:
        """The entry for ``key`` moved to ``device``/``dtype``, or None (a miss, also counted when disabled)."""
        if not self.enabled:
            self.misses += 1
            return None
        entry = self._memory.get(key)
        if entry is not None:
            self._memory.move_to_end(key)
            self._in_run.add(key)
        elif self.directory is not None and self._path(key).is_file():
            try:
                entry = load_file(str(self._path(key)))
            except Exception:  # a damaged file is rebuilt, never trusted
                self._path(key).unlink(missing_ok=True)
                entry = None
            if entry is not None:
                self._remember(key, entry)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        return {n: t.to(device=device, dtype=dtype if dtype and t.is_floating_point() else t.dtype) for n, t in entry.items()}

    def put(self, key: str, entry: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> None:
        """Store ``entry``: a copy on the CPU, floating tensors in ``dtype`` (default: the cache's dtype).

        A caller whose values must come back exactly as computed passes their own precision as ``dtype``
        (and keeps it in the key), so a hit never returns them rounded further.
        """
        if not self.enabled:
            return
        dtype = dtype or self.dtype
        stored = {
            n: (t.detach().to("cpu", dtype) if t.is_floating_point() else t.detach().cpu()).contiguous()
            for n, t in entry.items()
        }
        self._remember(key, stored)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(self._path(key), lambda tmp: save_file(stored, tmp))
            self._trim_disk()

    def _remember(self, key: str, entry: dict[str, torch.Tensor]) -> None:
        self._memory.pop(key, None)
        total = self.nbytes + _nbytes(entry)
        for old in [k for k in self._memory if k not in self._in_run]:  # least recently used first
            if total <= self.max_bytes:
                break
            total -= _nbytes(self._memory.pop(old))
        if total > self.max_bytes and self._memory:  # what is left belongs to this run: keep it, not the new one
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"a TensorCache is full ({_size(self.nbytes)} of max_bytes = {_size(self.max_bytes)}): the rest of "
                    "this run is not cached, so a re-run recomputes it. For stylize's features, pass "
                    "cache=TensorCache(max_bytes=...) or TensorCache(directory=...) to from_pretrained to keep it all.",
                    stacklevel=4,
                )
            return
        self._memory[key] = entry
        self._in_run.add(key)

    def _trim_disk(self) -> None:
        files = []
        for path in self.directory.glob("*.safetensors"):
            try:  # another process sharing the directory may remove a file at any time
                files.append((path.stat(), path))
            except FileNotFoundError:
                continue
        files.sort(key=lambda item: item[0].st_mtime)
        total = sum(stat.st_size for stat, _ in files)
        for stat, path in files[:-1]:
            if total <= self.max_disk_bytes:
                break
            total -= stat.st_size
            path.unlink(missing_ok=True)
