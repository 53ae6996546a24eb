"""Pictures for the widgets' views: images as PNG bytes and data URLs, figures as PNG, region overlays, montages."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from stylegallery.analysis.pictures import border, overlay_array, to_numpy, upsample_labels
from stylegallery.images import rgb_array


def to_image(value) -> Image.Image:
    """A PIL RGB image from anything :func:`stylegallery.images.rgb_array` reads (PIL image, path, array, tensor)."""
    return Image.fromarray(rgb_array(value))


def png_bytes(image, max_side: int | None = None) -> bytes:
    """PNG-encoded bytes of an image (optionally shrunk so its longer side is at most ``max_side``)."""
    image = to_image(image)
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    """PNG bytes as a ``data:`` URL for an ``<img>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(figure) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def hex_colours(colours) -> list[str]:
    """RGB colours (n, 3) in 0..255 as CSS ``#rrggbb`` strings."""
    return ["#%02x%02x%02x" % tuple(int(v) for v in c) for c in colours]


def labels_array(labels) -> np.ndarray:
    """A label map (tensor or array) as an int64 numpy array."""
    return to_numpy(labels).astype(np.int64)


def overlay(image, labels, alpha: float = 0.5, highlight: list[int] | tuple = ()) -> Image.Image:
    """The image with its regions drawn over it (``stylegallery.plot.overlay_array``), ``highlight`` outlined in white."""
    image = to_image(image)
    labels = labels_array(labels)
    mixed = overlay_array(image, labels, alpha)
    if highlight:
        chosen = np.isin(upsample_labels(labels, mixed.shape[:2]), list(highlight))  # the grid overlay_array used
        mixed[border(chosen)] = (255, 255, 255)
    return Image.fromarray(mixed)


def montage(images: list[Image.Image], height: int = 192, gap: int = 6, background=(255, 255, 255)) -> Image.Image:
    """Images side by side at one height."""
    scaled = [im.resize((max(1, round(im.width * height / im.height)), height), Image.Resampling.LANCZOS) for im in images]
    width = sum(im.width for im in scaled) + gap * (len(scaled) - 1)
    canvas = Image.new("RGB", (max(width, 1), height), background)
    x = 0
    for im in scaled:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas
