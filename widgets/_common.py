"""Shared helpers of the StyleGallery widgets: PNG bytes, overlays, JS text, static pictures, ipywidgets 7/8 display."""

from __future__ import annotations

import base64
import contextlib
import contextvars
import io
import pathlib
import threading
import weakref
from typing import Any, Callable

import numpy as np
from PIL import Image

from stylegallery import plot
from stylegallery.errors import StyleGalleryError

HERE = pathlib.Path(__file__).parent
CSS = HERE / "style.css"

try:  # ipywidgets 7 displays through _ipython_display_, 8 through _repr_mimebundle_
    import ipywidgets as _ipw

    IPYWIDGETS_MAJOR = int(_ipw.__version__.split(".")[0])
except Exception:  # pragma: no cover - ipywidgets is a requirement of the widgets
    IPYWIDGETS_MAJOR = 8


def esm(name: str) -> str:
    """A widget's ``_esm``: common.js (the shared JS helpers) followed by the widget's own file ``name``.

    anywidget loads each ``_esm`` as one module that cannot import a sibling file, so the helpers go in as text.
    """
    return (HERE / "common.js").read_text(encoding="utf-8") + "\n" + (HERE / name).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------- runs
_MODEL_LOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()
RUNNING: "weakref.WeakSet" = weakref.WeakSet()  # sessions whose stages a widget runs in a worker thread now


def start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """Run ``target`` in a daemon thread, leaving the kernel free to read widget messages (a click on Stop).

    The thread runs in a copy of the caller's context: what it prints or displays goes where the caller's would.
    """
    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), name=name, daemon=True)
    thread.start()
    return thread


def model_lock(pipe) -> threading.Lock:
    """Held by a widget while it runs a stage on ``pipe``: one run at a time per model (the stages hook its UNet)."""
    with _LOCKS_GUARD:
        return _MODEL_LOCKS.setdefault(pipe, threading.Lock())


class SyncGuard:
    """Changes from the view and batched updates (``hold_sync``) one at a time, whichever thread makes them.

    A worker thread updates the widgets while the kernel's thread applies the view's messages; both go through
    ipywidgets' set of states waiting to be sent, which must not change while a batch is being sent.
    """

    def _guard(self) -> threading.RLock:
        return self.__dict__.setdefault("_sync_guard", threading.RLock())

    def set_state(self, sync_data) -> None:
        with self._guard():
            super().set_state(sync_data)

    @contextlib.contextmanager
    def hold_sync(self):
        with self._guard(), super().hold_sync():
            yield


def check_idle(session) -> None:
    """Refuse an edit of a session whose stages run in a worker thread now."""
    if session is not None and session in RUNNING:
        raise StyleGalleryError("a run is in progress on this session: edit when it has finished")


# ---------------------------------------------------------------------------------------------- images
def to_image(value) -> Image.Image:
    """A PIL RGB image from a PIL image, an (H, W, 3) uint8 array, a (3, H, W) tensor or a file path."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (str, pathlib.Path)):
        return Image.open(value).convert("RGB")
    array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array).convert("RGB")


def png_bytes(image, max_side: int | None = None) -> bytes:
    """PNG-encoded bytes of an image (optionally shrunk so its longer side is at most ``max_side``)."""
    image = to_image(image)
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def figure_png(figure) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def labels_array(labels) -> np.ndarray:
    """A label map (tensor or array) as an int64 numpy array."""
    array = labels.detach().cpu().numpy() if hasattr(labels, "detach") else np.asarray(labels)
    return array.astype(np.int64)


# ---------------------------------------------------------------------------------------------- regions
def overlay(image, labels, alpha: float = 0.5, highlight: list[int] | tuple = ()) -> Image.Image:
    """The image with its regions drawn over it (``stylegallery.plot.overlay_array``), ``highlight`` outlined in white."""
    image = to_image(image)
    labels = labels_array(labels)
    mixed = plot.overlay_array(image, labels, alpha)
    if highlight:
        chosen = np.isin(plot.upsample_labels(labels, mixed.shape[:2]), list(highlight))  # the grid overlay_array used
        mixed[chosen ^ _eroded(chosen)] = (255, 255, 255)
    return Image.fromarray(mixed)


def _eroded(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


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


# ---------------------------------------------------------------------------------------------- display
class StaticReprMixin:
    """Adds a static PNG (``_repr_png_``) to the widget's MIME bundle, for notebooks viewed without a kernel.

    Subclasses implement ``_repr_png_``. A live frontend shows the widget view; a static renderer (GitHub,
    nbviewer, a saved notebook whose kernel is gone) shows the picture.
    """

    def _repr_png_(self) -> bytes:  # pragma: no cover - every widget overrides it
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs):
        parent = getattr(super(), "_repr_mimebundle_", None)
        bundle = parent(**kwargs) if parent is not None else None
        if bundle is None:  # ipywidgets 7 containers: build the widget view entry ourselves
            bundle = {
                "text/plain": object.__repr__(self),
                "application/vnd.jupyter.widget-view+json": {"version_major": 2, "version_minor": 0, "model_id": self.model_id},
            }
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
        data = dict(data)
        try:
            data["image/png"] = base64.b64encode(self._repr_png_()).decode("ascii")
        except Exception as exc:  # a picture must never break the live widget
            data.setdefault("text/plain", f"<{type(self).__name__}: no picture ({exc})>")
        return data, metadata

    if IPYWIDGETS_MAJOR < 8:  # pragma: no cover - exercised on Colab's ipywidgets 7

        def _ipython_display_(self, **kwargs):
            from IPython.display import display

            data, metadata = self._repr_mimebundle_()
            display(data, metadata=metadata, raw=True)
            if hasattr(self, "_handle_displayed"):
                self._handle_displayed(**kwargs)


class EditHooks:
    """``on_edit(callback)``: callbacks run after the widget changed a result in place or in its session.

    Every live widget of a class is kept in a weak registry, so that an edit made in one view also shows in the
    other views of the same result or session (``_siblings``).
    """

    # each widget class sets its own ``_registry = weakref.WeakSet()`` (an instance's class may be a dynamic
    # subclass made by ``add_traits``, which shares the attribute)
    _registry: "weakref.WeakSet | None" = None

    def _init_hooks(self) -> None:
        self._edit_callbacks: list[Callable[[str, Any], None]] = []
        if self._registry is not None:
            self._registry.add(self)

    def _siblings(self):
        """The other live (not closed) widgets of this class."""
        return [w for w in list(self._registry or ()) if w is not self and getattr(w, "comm", True) is not None]

    def on_edit(self, callback: Callable[[str, Any], None], remove: bool = False) -> None:
        """Register ``callback(stage, result)``, called after an edit (merge, re-segment, override, keep)."""
        if remove:
            self._edit_callbacks.remove(callback)
        else:
            self._edit_callbacks.append(callback)

    def _edited(self, stage: str, result) -> None:
        for callback in list(self._edit_callbacks):
            callback(stage, result)
