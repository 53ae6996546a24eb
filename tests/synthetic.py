"""Synthetic test images with planted regions."""

import numpy as np
from PIL import Image

COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40),
    "purple": (140, 50, 170), "cyan": (40, 200, 210), "white": (235, 235, 235), "orange": (240, 140, 30),
}


SCENE = (("bands", ("red", "green", "blue")), ("rows", ("blue", "red", "green")), ("bands", ("yellow", "green", "red")))

#: Scenes of 3 to 5 flat or textured regions for the segmentation-accuracy test: (layout, colours, texture).
SEGMENTATION_SCENES = (
    ("bands", ("red", "green", "blue"), "flat"),
    ("rows", ("yellow", "purple", "cyan", "red"), "textured"),
    ("quadrants", ("blue", "yellow", "white", "green"), "flat"),
    ("disc", ("orange", "blue", "green"), "textured"),
    ("quadrants+disc", ("cyan", "red", "yellow", "purple", "green"), "textured"),
)


def planted_scene(size=128):
    """The tests' content and two references (colour bands and rows with gently undulating edges; seeds 0, 1,
    2): (images, label maps)."""
    made = [planted(size, layout, colours, seed=seed, wave=0.04) for seed, (layout, colours) in enumerate(SCENE)]
    return [image for image, _ in made], [labels for _, labels in made]


def planted_labels(size, layout, n, wave=0.0):
    """Label map (size x size) of ``n`` regions: vertical ``bands``, horizontal ``rows``, four ``quadrants`` (with a
    fifth region, a disc over the centre: ``quadrants+disc``), or a ``disc`` over a background split into ``n - 1`` rows. ``wave``: boundaries of bands and rows undulate by
    this share of the image size (natural edges cross the latent grid at every phase)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    if layout in ("bands", "rows"):
        along, across = (xx, yy) if layout == "bands" else (yy, xx)
        along = along + wave * size * np.sin(2 * np.pi * across / size * 1.5 + 0.7)
        return np.clip((along * n // size).astype(np.int64), 0, n - 1)
    if layout.startswith("quadrants"):
        quadrants = (yy >= size // 2) * 2 + (xx >= size // 2)
        if layout == "quadrants+disc":  # a disc over the centre: a fifth region
            return np.where(np.hypot(yy - size * 0.47, xx - size * 0.53) < size * 0.2, 4, quadrants)
        return quadrants
    if layout == "disc":
        rows = planted_labels(size, "rows", n - 1, wave) + 1
        return np.where(np.hypot(yy - size * 0.45, xx - size * 0.55) < size * 0.22, 0, rows)
    raise ValueError(f"unknown layout {layout!r}")


def planted(size=128, layout="bands", colours=("red", "green", "blue"), seed=0, noise=6.0, texture="flat", wave=0.0):
    """An image of colour areas with mild noise, and its planted label map (size x size).

    ``texture="textured"`` adds to each area its own stripes (period 4 to 12 px, amplitude 35, random angle)
    and stronger noise.
    """
    rng = np.random.default_rng(seed)
    labels = planted_labels(size, layout, len(colours), wave)
    image = np.zeros((size, size, 3), dtype=np.float64)
    yy, xx = np.mgrid[:size, :size]
    for i, name in enumerate(colours):
        image[labels == i] = COLOURS[name]
        if texture == "textured":
            angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
            stripes = 35 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
            image[labels == i] += stripes[labels == i, None]
    image += rng.normal(0, noise * (3 if texture == "textured" else 1), image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)), labels
