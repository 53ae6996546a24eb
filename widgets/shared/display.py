"""The display machinery of the StyleGallery widgets: each widget's JavaScript, its static PNG for notebooks viewed
without a kernel, ipywidgets 7 and 8, thread-safe syncing, and edit hooks shared by the views of one session."""

from __future__ import annotations

import base64
import contextlib
import pathlib
import threading
import weakref
from typing import Any, Callable

SHARED = pathlib.Path(__file__).parent
CSS = SHARED / "style.css"

try:  # ipywidgets 7 displays through _ipython_display_, 8 through _repr_mimebundle_
    import ipywidgets as _ipw

    IPYWIDGETS_MAJOR = int(_ipw.__version__.split(".")[0])
except Exception:  # pragma: no cover - ipywidgets is a requirement of the widgets
    IPYWIDGETS_MAJOR = 8


def esm(name: str) -> str:
    """A widget's ``_esm``: common.js (the shared JS helpers) followed by the widget's own file ``name`` (in the
    widgets' folder).

    anywidget loads each ``_esm`` as one module that cannot import a sibling file, so the helpers go in as text.
    """
    return (SHARED / "common.js").read_text(encoding="utf-8") + "\n" + (SHARED.parent / name).read_text(encoding="utf-8")


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
