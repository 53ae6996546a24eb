"""Synthetic test images with planted regions."""

import numpy as np
from PIL import Image

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


SCENE = (("bands", ("red", "green", "blue")), ("rows", ("blue", "red", "green")), ("bands", ("yellow", "green", "red")))


def planted_scene(size=128):
    """The tests' content and two references (colour bands and rows; seeds 0, 1, 2): (images, label maps)."""
    made = [planted(size, layout, colours, seed=seed) for seed, (layout, colours) in enumerate(SCENE)]
    return [image for image, _ in made], [labels for _, labels in made]


def planted(size=128, layout="bands", colours=("red", "green", "blue"), seed=0, noise=6.0):
    """An image of flat colour areas with mild noise, and its planted label map (size x size)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), dtype=np.int64)
    n = len(colours)
    if layout == "bands":
        for i in range(n):
            labels[:, i * size // n : (i + 1) * size // n] = i
    else:  # rows
        for i in range(n):
            labels[i * size // n : (i + 1) * size // n, :] = i
    image = np.zeros((size, size, 3), dtype=np.float64)
    for i, name in enumerate(colours):
        image[labels == i] = COLOURS[name]
    image += rng.normal(0, noise, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)), labels
