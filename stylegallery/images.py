"""Reading, validating and resizing the images a user hands to StyleGallery."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import StyleGalleryError

MIN_SIDE = 16
#: Most regions a label image may hold: more is a photo or a JPEG's compression noise, not a label image.
MAX_MASK_REGIONS = 64


def check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """Return the working size as ``(height, width)``; both must be positive multiples of 64."""
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    for side in (height, width):
        if not isinstance(side, (int, np.integer)) or side < 64 or side % 64:
            raise StyleGalleryError(
                f"working size {size!r} is not allowed: each side must be a positive multiple of 64 "
                "(the VAE downsamples by 8 and the UNet by another 8), e.g. 256, 512 or 768"
            )
    return int(height), int(width)


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Convert any mode PIL opens (L, P, RGBA, CMYK, 16-bit I;16, float F, ...) to 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        if image.mode == "F" and array.max() <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = image.convert("RGB")
    if min(rgb.size) < MIN_SIDE:
        raise StyleGalleryError(
            f"{name} is {rgb.size[0]}x{rgb.size[1]} pixels: too small to stylize; use an image of at least "
            f"{MIN_SIDE}x{MIN_SIDE} (it is resized to the working size anyway)"
        )
    return rgb


def load_image(source, name: str | None = None) -> tuple[Image.Image, str, str]:
    """Load ``source`` (path, PIL image or HxWx3 uint8 array) as RGB.

    Returns ``(image, name, sha256)`` where the hash is of the file bytes (or of the pixels for in-memory
    images), so caches follow the content, not the file name. EXIF orientation is honoured.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = name or path.name
        if not path.is_file():
            raise StyleGalleryError(f"image file not found: {path} (check the path)")
        data = path.read_bytes()
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise StyleGalleryError(
                f"cannot read {path} as an image ({exc}); the file is not an image or is damaged — "
                "re-export it as PNG or JPEG"
            ) from None
        image = ImageOps.exif_transpose(image)
        digest = hashlib.sha256(data).hexdigest()
    elif isinstance(source, Image.Image):
        image = ImageOps.exif_transpose(source)
        name = name or "image"
        digest = None
    elif isinstance(source, np.ndarray):
        array = source
        if array.dtype != np.uint8:
            raise StyleGalleryError(f"array images must be uint8 (got {array.dtype}); scale to 0..255 first")
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
            raise StyleGalleryError(f"array images must be HxW, HxWx3 or HxWx4 (got shape {array.shape})")
        image = Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[2] == 1 else array)
        name = name or "array"
        digest = None
    else:
        raise StyleGalleryError(
            f"cannot use {type(source).__name__} as an image: pass a file path, a PIL image or a uint8 array"
        )
    rgb = _to_rgb(image, name)
    if digest is None:
        digest = hashlib.sha256(rgb.tobytes() + repr(rgb.size).encode()).hexdigest()
    return rgb, name, digest


def fit_to_size(image: Image.Image, size: tuple[int, int], keep_aspect: bool = False) -> Image.Image:
    """Resize to ``size`` = (height, width); with ``keep_aspect`` scale to cover, then centre-crop."""
    height, width = size
    if keep_aspect:
        return ImageOps.fit(image, (width, height), method=Image.Resampling.BICUBIC)
    return image.resize((width, height), Image.Resampling.BICUBIC)


def resized(pixels, size: tuple[int, int]):
    """uint8 pixels (3, H, W) resized (bicubic) to ``size`` = (height, width), as a tensor like them."""
    import torch

    image = Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy()).resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def own_size(image: Image.Image, size: tuple[int, int], keep_aspect: bool = False) -> Image.Image:
    """The image at its own resolution, as :func:`fit_to_size` frames it at ``size`` = (height, width): whole, or
    with ``keep_aspect`` centre-cropped to that aspect."""
    if not keep_aspect:
        return image
    height, width = size
    if image.width * height > width * image.height:  # wider than the target: crop the sides
        crop = (max(1, round(image.height * width / height)), image.height)
    else:
        crop = (image.width, max(1, round(image.width * height / width)))
    return ImageOps.fit(image, crop, method=Image.Resampling.BICUBIC)


def rgb_array(image) -> np.ndarray:
    """An image as an (H, W, 3) uint8 array: a PIL image, a file path, or an (H, W, 3), (H, W, 1), (H, W), (3, H, W)
    or (1, H, W) array or tensor (uint8, or floats: in 0..1 when their maximum is at most 1, else 0..255)."""
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = image.detach().to("cpu").numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise StyleGalleryError(f"expected an RGB image (H, W, 3) or (3, H, W), got shape {array.shape}")
    if array.dtype != np.uint8:
        scale = 255.0 if array.dtype.kind == "f" and array.size and array.max() <= 1.0 else 1.0
        array = np.clip(np.round(array * scale), 0, 255).astype(np.uint8)
    return array


def load_label_mask(source, sizes=None, name: str | None = None) -> np.ndarray:
    """A user's region mask as an (H, W) int array: 0 where no region is given, 1..n for the regions in the order
    they first appear (row by row), as the authors' release numbers them.

    ``source``: a file path, a PIL image or an array. A label image: each palette index (the LabelMe ``label.png``
    layout), grey value or colour is one region, and index 0, black or transparent is no region; a binary mask is
    one region. ``sizes``: the (width, height) pairs the mask may have (its image's own size, the working size).
    Raises :class:`StyleGalleryError` for a missing or unreadable file, another size, no region at all or more than
    :data:`MAX_MASK_REGIONS`.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = name or str(path)
        if not path.is_file():
            raise StyleGalleryError(f"mask file not found: {path} (check the path)")
        try:
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened)
                image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise StyleGalleryError(f"cannot read the mask {path} as an image ({exc}): save it as a PNG") from None
    elif isinstance(source, Image.Image):
        image, name = source, name or "mask"
    else:
        image, name = None, name or "mask"
    if image is None:
        array = np.asarray(source)
        if array.ndim not in (2, 3):
            raise StyleGalleryError(f"{name} must be an (H, W) label array or an (H, W, 3) colour image "
                                    f"(got shape {array.shape})")
    elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"))
        array = np.where(rgba[..., 3:] > 0, rgba[..., :3], 0)
    elif image.mode in ("RGB", "CMYK", "YCbCr", "HSV", "LAB"):
        array = np.asarray(image.convert("RGB"))
    else:  # P (palette indices), 1, L, I, I;16, F: the values themselves
        array = np.asarray(image)
    width, height = array.shape[1], array.shape[0]
    sizes = [] if sizes is None else [tuple(size) for size in sizes]
    if sizes and (width, height) not in sizes:
        allowed = " or ".join(f"{w}x{h}" for w, h in dict.fromkeys(sizes))
        raise StyleGalleryError(f"{name} is {width}x{height} pixels but must be {allowed}: a mask has its image's size "
                                f"(or the working size)")
    flat = array.reshape(height * width, -1)
    values, first, labels = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    labels = labels.reshape(height, width)
    background = np.flatnonzero(~values.any(axis=1))
    regions = len(values) - len(background)
    if regions == 0:
        raise StyleGalleryError(f"{name} is empty: every pixel is 0 (black); paint each region in its own value or "
                                f"colour")
    if regions > MAX_MASK_REGIONS:
        raise StyleGalleryError(f"{name} has {regions} different values: a label image has one flat value or colour "
                                f"per region (at most {MAX_MASK_REGIONS}); save it as PNG, not JPEG")
    kept = np.array([v for v in np.argsort(first, kind="stable") if v not in set(background)])
    order = np.zeros(len(values), dtype=np.int64)
    order[kept] = np.arange(1, regions + 1)
    return order[labels]


def load_masks(paths: dict[int, str], images: list, size: tuple[int, int]) -> dict[int, np.ndarray]:
    """``user_masks`` for segment from mask files: ``paths`` {image index (0 = content): mask file} of ``images``
    (the content, then the references), each mask at its image's own size or the working ``size`` = (h, w)."""
    out = {}
    for index, path in sorted(paths.items()):
        if not 0 <= index < len(images):
            raise StyleGalleryError(f"a mask is given for reference {index}, but there are only {len(images) - 1} "
                                    f"references (they count from 1)")
        own = load_image(images[index])[0].size
        out[index] = load_label_mask(path, [own, (size[1], size[0])])
    return out
