"""Draw the teaching scenes of data/ (teach_*.jpg): a landscape with five clearly different regions and four references,
each of which fits some of those regions and not the others.

On the random-weight test models the photos in data/ are mostly one region: their features do not separate a face
from a suit. These scenes are made of flat colours and plain textures, which those models do separate, so that every
step the notebooks teach shows on them. Deterministic: the same files every time.

    python scripts/make_teaching_images.py            # writes data/teach_*.jpg
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 512
SHADOW = 0.75
NEAR_FAR = (0.3, 1.5)  # brightness of the path at the horizon and at the bottom  # brightness of the house's shadow on the meadow: k-means tells it apart, merging joins it back
DATA = Path(__file__).resolve().parent.parent / "data"


def _grid(size: int = SIZE):
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    return yy / size, xx / size


def _noise(rng, size, strength):
    return rng.normal(0, strength, (size, size, 1))


def _paint(image, mask, colour, texture=None):
    """Colour the pixels of ``mask``; ``texture`` (an (H, W) array in about -1..1) modulates the brightness."""
    colour = np.asarray(colour, dtype=np.float64)
    if texture is None:
        image[mask] = colour
    else:
        image[mask] = colour[None] * (1 + 0.25 * texture[mask][:, None])


def landscape(rng) -> tuple[np.ndarray, np.ndarray]:
    """The content: sky, sun, a brick house, a meadow (with the house's shadow on it) and a gravel path; and its label
    map (0..4, in that order).

    Every border lies on the 32-pixel grid: at a working size of 256 or 512 px no latent pixel, nor any pixel of the
    UNet's half-resolution level, mixes two parts.
    """
    y, x = np.mgrid[:SIZE, :SIZE]
    labels = np.zeros((SIZE, SIZE), dtype=np.int64)  # sky
    labels[y >= 256] = 3  # meadow
    for band, top in enumerate(range(256, SIZE, 32)):  # a path widening towards the viewer, in steps of the grid
        half = 32 * (1 + band // 2)
        labels[top:top + 32, 352 - half:352 + half] = 4
    labels[32:128, 384:480] = 1  # sun
    labels[160:384, 64:224] = 2  # brick house
    image = np.zeros((SIZE, SIZE, 3))
    fine = rng.uniform(-1, 1, (SIZE, SIZE))
    _paint(image, labels == 0, (120, 175, 230), 0.3 * np.sin(2 * np.pi * y / 6))  # sky with fine streaks
    _paint(image, labels == 1, (250, 215, 70))
    rows = y // 16
    bricks = ((y % 16 < 2) | ((x + 16 * (rows % 2)) % 32 < 2)).astype(float)
    _paint(image, labels == 2, (175, 65, 45), 0.8 - 2.4 * bricks)  # bricks and dark mortar lines
    _paint(image, labels == 3, (70, 150, 60), np.sin(2 * np.pi * x / 6))  # grass blades
    shadow = (labels == 3) & (y >= 256) & (y < 352) & (x >= 224) & (x < 320)  # the house's shadow on the meadow
    image[shadow] *= SHADOW
    _paint(image, labels == 4, (150, 145, 135), fine)  # gravel
    path = labels == 4  # lit near the viewer, dim in the distance: it spans a wide range of (brightness-read) depth
    image[path] *= (NEAR_FAR[0] + (NEAR_FAR[1] - NEAR_FAR[0]) * (y[path] - 256) / 256)[:, None]
    image += _noise(rng, SIZE, 4)
    return image, labels


def painting(rng) -> np.ndarray:
    """A painted sky over a golden field: fits the content's sky (and, less, its sun), not the rest."""
    y, x = _grid()
    image = np.zeros((SIZE, SIZE, 3))
    sky = y < 0.53
    swirl = np.sin(2 * np.pi * (12 * x + 3 * np.sin(2 * np.pi * y * 3)))
    _paint(image, sky, (70, 120, 215), swirl)
    _paint(image, ~sky, (235, 190, 60), np.sin(2 * np.pi * (x * 60 + y * 20)))
    return image + _noise(rng, SIZE, 5)


def bricks(rng) -> np.ndarray:
    """An orange-red brick wall: fits the content's house."""
    y, x = _grid()
    rows = np.floor(y * SIZE / 24)
    mortar = ((np.mod(y * SIZE, 24) < 4) | (np.mod(x * SIZE + 26 * np.mod(rows, 2), 52) < 4)).astype(float)
    image = np.zeros((SIZE, SIZE, 3))
    shade = rng.uniform(-0.3, 0.3, (int(rows.max()) + 1, 12))[rows.astype(int), np.floor(x * 12).astype(int)]
    _paint(image, np.ones((SIZE, SIZE), bool), (195, 85, 50), 1.0 - 3.2 * mortar + shade)
    return image + _noise(rng, SIZE, 4)


def meadow(rng) -> np.ndarray:
    """Grass with a few flowers: fits the content's meadow."""
    y, x = _grid()
    image = np.zeros((SIZE, SIZE, 3))
    _paint(image, np.ones((SIZE, SIZE), bool), (60, 160, 70), np.sin(2 * np.pi * (x * SIZE / 6 + 2 * y)))
    for cy, cx in rng.uniform(0.05, 0.95, (40, 2)):
        image[np.hypot(y - cy, x - cx) < 0.012] = (240, 240, 120)
    return image + _noise(rng, SIZE, 5)


def gravel(rng) -> np.ndarray:
    """Grey pebbles: fits the content's path."""
    image = np.zeros((SIZE, SIZE, 3))
    small = rng.uniform(-1, 1, (SIZE // 8, SIZE // 8))
    pebbles = np.kron(small, np.ones((8, 8))) + 0.5 * rng.uniform(-1, 1, (SIZE, SIZE))
    _paint(image, np.ones((SIZE, SIZE), bool), (155, 150, 140), pebbles)
    return image + _noise(rng, SIZE, 3)


def main() -> None:
    rng = np.random.default_rng(2026)
    content, labels = landscape(rng)
    scenes = {"teach_landscape.jpg": content, "teach_painting.jpg": painting(rng), "teach_bricks.jpg": bricks(rng),
              "teach_meadow.jpg": meadow(rng), "teach_gravel.jpg": gravel(rng)}
    for name, image in scenes.items():
        Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8)).save(DATA / name, quality=90)
    Image.fromarray((labels * 60).astype(np.uint8)).save(DATA / "teach_landscape_labels.png", optimize=True)
    print("wrote", ", ".join(sorted(scenes)), "and teach_landscape_labels.png to", DATA)


if __name__ == "__main__":
    main()
