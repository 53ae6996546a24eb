"""A widget's picture in a file: ``to_png`` (and ``to_svg`` for figures) in the kernel, and the view's "save PNG"
button, which asks the kernel for the same PNG by a custom message and gets the bytes back as the answer's buffer."""

from __future__ import annotations

import io
import re
from pathlib import Path

from PIL import Image

from stylegallery.errors import StyleGalleryError
from stylegallery.results import write_atomic

#: The resolution of figures, and the density recorded in pictures, unless asked otherwise (print quality).
DPI = 300
SAVE_REQUEST, SAVE_ANSWER = "save_png", "png"


def file_name(*words) -> str:
    """A download's file name from ``words``: lower case letters and digits, joined by hyphens, ``.png``."""
    parts = [re.sub(r"[^a-z0-9]+", "-", str(word).lower()).strip("-") for word in words]
    return "-".join(p for p in parts if p) + ".png"


def _target(path, overwrite: bool) -> Path:
    """``path`` as a Path; refused when the file exists and ``overwrite`` is false."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise StyleGalleryError(f"{path} exists: pass overwrite=True to replace it")
    return path


class PictureExport:
    """:meth:`to_png` and the view's save-PNG request for a widget that implements ``_picture()`` and
    ``_picture_name()``.

    ``_picture()`` is what the widget shows now: a PIL image at full resolution, or a matplotlib figure; it raises
    StyleGalleryError while there is nothing to draw. ``_picture_name()`` names the view's download. An error
    while answering the view goes to the widget's ``status``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_msg(self._picture_request)

    def png(self, dpi: int = DPI) -> bytes:
        """The PNG :meth:`to_png` writes, as bytes."""
        picture = self._picture()
        buffer = io.BytesIO()
        if isinstance(picture, Image.Image):
            picture.save(buffer, format="PNG", dpi=(dpi, dpi))
        else:
            picture.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        return buffer.getvalue()

    def to_png(self, path, *, dpi: int = DPI, overwrite: bool = False) -> Path:
        """Write what the widget shows now to ``path`` as a PNG, atomically; returns the path.

        A figure is drawn at ``dpi``; a picture keeps its full resolution (one pixel per image pixel) and records
        ``dpi`` as its print density. An existing file is replaced only with ``overwrite=True``.
        """
        path = _target(path, overwrite)
        data = self.png(dpi)
        return write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))

    def _picture_request(self, _widget, content, _buffers) -> None:
        if not isinstance(content, dict) or content.get("type") != SAVE_REQUEST:
            return
        answer = {"type": SAVE_ANSWER, "id": content.get("id")}
        try:
            data = self.png()
            name = self._picture_name()
        except Exception as exc:  # shown in the view, never lost in the kernel's log
            answer["error"] = str(exc) if isinstance(exc, StyleGalleryError) else f"{type(exc).__name__}: {exc}"
            self.status = f"⚠ {answer['error']}"
            self.send(answer)
            return
        self.send({**answer, "name": name}, buffers=[data])


class FigureExport(PictureExport):
    """:class:`PictureExport` for a widget whose picture is a matplotlib figure (``_picture()``), with :meth:`to_svg`."""

    def to_svg(self, path, *, overwrite: bool = False) -> Path:
        """Write what the widget shows now to ``path`` as an SVG (vector) figure, atomically; returns the path. An
        existing file is replaced only with ``overwrite=True``."""
        path = _target(path, overwrite)
        figure = self._picture()
        return write_atomic(path, lambda tmp: figure.savefig(tmp, format="svg", bbox_inches="tight", metadata={"Date": None}))
