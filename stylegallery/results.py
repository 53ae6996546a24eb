"""The saveable result of each stage: tensors and metadata in one safetensors file (never pickle).

Each result is a small dataclass. ``save(path)`` writes atomically; ``load(path)`` checks that the file holds
the expected stage and format version and raises a clear error otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import StyleGalleryError

FORMAT_VERSION = 1


def write_atomic(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then move the temporary file onto ``path`` in one step.

    The file gets the permissions a plain ``open()`` would give it: those of the file it replaces, or else
    0666 less the umask (not the 0600 of a private temporary file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the OS applies the umask
            break
        except FileExistsError:
            continue
    try:
        # the mode the OS gave a new file under the umask, or the replaced file's: some writers (safetensors)
        # recreate the file with a private mode of their own, so it is set again after writing
        mode = stat.S_IMODE((path if path.exists() else tmp).stat().st_mode)
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class _Stage:
    """Save/load for dataclasses whose tensor fields go to safetensors and whose other fields go to JSON."""

    stage = ""

    def save(self, path: str | os.PathLike) -> Path:
        """Write this result to ``path`` (a ``.safetensors`` file), atomically."""
        tensors, meta = {}, {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                tensors[f.name] = value.detach().to("cpu").contiguous()
            else:
                meta[f.name] = value
        header = {"stage": self.stage, "version": FORMAT_VERSION, "fields": meta}
        return write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"stylegallery": json.dumps(header)}))

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a result written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise StyleGalleryError(f"no saved {cls.stage} result at {path}")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                header = json.loads((handle.metadata() or {}).get("stylegallery", "{}"))
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise StyleGalleryError(f"{path} is not a readable StyleGallery result ({exc}); run the stage again") from None
        if header.get("stage") != cls.stage or header.get("version") != FORMAT_VERSION:
            raise StyleGalleryError(
                f"{path} holds a {header.get('stage') or 'foreign'} result (format {header.get('version')}), "
                f"not a {cls.stage} result of format {FORMAT_VERSION}; run the {cls.stage} stage again"
            )
        values = dict(header["fields"])
        values.update(tensors)
        return cls(**values)


@dataclass
class Prepared(_Stage):
    """Stage 1a: the images at working size and their VAE latents. Index 0 is the content image."""

    names: list[str]
    hashes: list[str]
    pixels: torch.Tensor  # (N, 3, H, W) uint8
    latents: torch.Tensor  # (N, 4, H/8, W/8) float32, already times the VAE scaling factor
    model: str
    original: torch.Tensor | None = None  # (3, H0, W0) uint8: the content at its own size (cropped as with keep_aspect)
    stage = "prepare"

    @property
    def n_styles(self) -> int:
        return len(self.names) - 1

    def image(self, index: int) -> Image.Image:
        """Image ``index`` (0 = content) at working size."""
        return Image.fromarray(self.pixels[index].permute(1, 2, 0).numpy())


@dataclass
class Inversion(_Stage):
    """Stage 1b: DDIM inversion trajectories and the time-weighted diffusion features."""

    trajectories: torch.Tensor  # (N, steps + 1, 4, h, w) from clean latent to z_T
    features: torch.Tensor  # (N, C, h, w) weighted mean of the captured decoder-block outputs
    timesteps: list[int]
    weights: list[float]
    settings: dict
    stage = "invert"

    @property
    def final_latents(self) -> torch.Tensor:
        """z_T of every image, shape (N, 4, h, w)."""
        return self.trajectories[:, -1]


@dataclass
class Segmentation(_Stage):
    """Stage 2: one region label map per image on the latent grid, and how k was chosen."""

    labels: torch.Tensor  # (N, h, w) int64, regions numbered 0..n-1 per image
    silhouette: list[dict]  # per image: {k: silhouette score} over the k tried
    chosen_k: list[int]
    settings: dict
    stage = "segment"

    def n_regions(self, index: int) -> int:
        return int(self.labels[index].max()) + 1

    def region_sizes(self, index: int) -> list[int]:
        return torch.bincount(self.labels[index].flatten(), minlength=self.n_regions(index)).tolist()

    def merge(self, index: int, a: int, b: int) -> "Segmentation":
        """A copy where regions ``a`` and ``b`` of image ``index`` are one region, numbered with the lower of the two;
        the regions numbered above the higher one move down by one (regions stay numbered 0..n-1), the others keep
        their numbers, and so their colours in every picture."""
        n = self.n_regions(index)
        if not (0 <= a < n and 0 <= b < n) or a == b:
            raise StyleGalleryError(f"cannot merge regions {a} and {b} of image {index}: it has regions 0..{n - 1}")
        low, high = min(a, b), max(a, b)
        labels = self.labels.clone()
        image = labels[index]
        image[image == high] = low
        image[image > high] -= 1
        settings = dict(self.settings, edited=True)
        return Segmentation(labels, self.silhouette, self.chosen_k, settings)

    def repaint(self, index: int, labels) -> "Segmentation":
        """A copy where image ``index`` has the region map ``labels`` (its latent grid, e.g. painted with
        :mod:`stylegallery.stages.painting`); numbers with no cell are dropped and the others move down, keeping
        their order."""
        array = np.asarray(labels)
        if array.shape != tuple(self.labels.shape[-2:]):
            raise StyleGalleryError(f"a region map of image {index} must have the latent grid "
                                    f"{tuple(self.labels.shape[-2:])} (got {array.shape})")
        if not np.issubdtype(array.dtype, np.integer) or array.min() < 0:
            raise StyleGalleryError("a region map holds region numbers: whole numbers from 0")
        new = self.labels.clone()
        new[index] = torch.from_numpy(np.unique(array, return_inverse=True)[1].reshape(array.shape)).long()
        return Segmentation(new, self.silhouette, self.chosen_k, dict(self.settings, edited=True))


@dataclass
class Matching(_Stage):
    """Stage 3: scores of every content region against every region of every reference, and the matches.

    ``columns[j] = [reference, region]`` names column ``j`` of the matrices (reference 0 = first style image).
    ``matches[r]`` is ``[reference, region]`` for content region ``r``, or ``None`` to keep its content.
    """

    score: torch.Tensor  # (content regions, all style regions)
    statistical: torch.Tensor
    semantic: torch.Tensor
    geometric: torch.Tensor
    columns: list[list[int]]
    matches: list
    overridden: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    stage = "match"

    def _column(self, reference: int, region: int) -> int:
        try:
            return self.columns.index([reference, region])
        except ValueError:
            raise StyleGalleryError(f"style image {reference} has no region {region}") from None

    def _check_region(self, region: int) -> None:
        if not 0 <= region < len(self.matches):
            raise StyleGalleryError(f"content region {region} does not exist (regions 0..{len(self.matches) - 1})")

    def override(self, region: int, reference: int, style_region: int) -> None:
        """Match content ``region`` to ``style_region`` of style image ``reference`` (0-based), in place."""
        self._check_region(region)
        self._column(reference, style_region)
        self.matches[region] = [reference, style_region]
        if region not in self.overridden:
            self.overridden.append(region)

    def keep_content(self, region: int) -> None:
        """Leave content ``region`` unstylized (no style loss on it), in place."""
        self._check_region(region)
        self.matches[region] = None
        if region not in self.overridden:
            self.overridden.append(region)

    def reset(self, region: int) -> None:
        """Give content ``region`` its best-scoring match again and drop its override, in place."""
        self._check_region(region)
        self.matches[region] = list(self.columns[int(self.score[region].argmax())])
        if region in self.overridden:
            self.overridden.remove(region)

    def table(self) -> list[dict]:
        """One row per content region: its match and the score with its three parts."""
        rows = []
        for region, match in enumerate(self.matches):
            row = {"content_region": region, "style_image": None, "style_region": None, "overridden": region in self.overridden}
            if match is not None:
                j = self._column(*match)
                row.update(
                    style_image=match[0],
                    style_region=match[1],
                    score=float(self.score[region, j]),
                    statistical=float(self.statistical[region, j]),
                    semantic=float(self.semantic[region, j]),
                    geometric=float(self.geometric[region, j]),
                )
            rows.append(row)
        return rows


@dataclass
class Stylization(_Stage):
    """Stage 4: the optimized latent, the decoded image and the loss history."""

    latent: torch.Tensor  # (1, 4, h, w)
    pixels: torch.Tensor  # (3, H, W) uint8
    history: list[dict]
    stopped_early: bool
    settings: dict
    output_latent: torch.Tensor | None = None  # (1, 4, H/8, W/8): refined at output_size (ours), else None
    output_pixels: torch.Tensor | None = None  # (3, H, W) uint8 decoded from it
    output_history: list | None = None  # the refinement's steps, as ``history``
    stage = "stylize"

    @property
    def image(self) -> Image.Image:
        """The result: at the output size where one was asked for, else at the working size."""
        return Image.fromarray((self.pixels if self.output_pixels is None else self.output_pixels).permute(1, 2, 0).numpy())

    @property
    def working_image(self) -> Image.Image:
        """The result of the working-size run (before any refinement at the output size)."""
        return Image.fromarray(self.pixels.permute(1, 2, 0).numpy())

    @property
    def last_step(self) -> int:
        """The step (over the whole schedule, ``steps * iters``) the optimization ended at; a warm run's history
        starts later."""
        return self.history[-1]["step"] if self.history else 0

    @property
    def total_steps(self) -> int:
        """The steps of the whole schedule, ``steps * iters``."""
        return self.settings["steps"] * self.settings["iters"]


def region_png(labels: torch.Tensor) -> Image.Image:
    """A label map as a greyscale picture with one evenly spaced grey level per region."""
    labels = labels.cpu().numpy()
    n = int(labels.max()) + 1
    levels = np.round(np.linspace(0, 255, max(n, 2))).astype(np.uint8)
    return Image.fromarray(levels[labels], "L")
