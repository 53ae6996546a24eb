"""MaskPainter: paint regions over an image with a brush or a lasso, erase, grow or shrink one, undo; apply them to a
session, whose match stage then runs again with the painted regions."""

from __future__ import annotations

import weakref

import anywidget
import numpy as np
import traitlets as t

from stylegallery import plot
from stylegallery.analysis.figures import plural
from stylegallery.errors import StyleGalleryError
from stylegallery.stages import painting

from .shared.display import CSS, EditHooks, StaticReprMixin, SyncGuard, esm
from .shared.pictures import figure_png, hex_colours, labels_array, png_bytes
from .shared.runs import check_idle, model_lock

TOOLS = ("brush", "lasso", "erase")
NEW = -1  # the target "a new region"


class MaskPainter(StaticReprMixin, EditHooks, SyncGuard, anywidget.AnyWidget):
    """Paint the regions of image ``index`` of a :class:`~stylegallery.Session` (0: the content, 1.. the references).

    On the picture: the **brush** paints the cells it passes over (``radius`` in latent cells) into the target
    region, the **lasso** paints every cell inside the loop drawn, the **erase** brush gives cells back the region
    they had before painting. The target is an existing region (it grows where painted) or a new one. *Grow* and
    *shrink* move the target's border by one cell; *undo* steps back; *apply* puts the painted regions into the
    session (:meth:`Session.replace`: the later stages become stale) and runs the match stage again. Mouse, pen and
    touch all paint (pointer events). Every action is a method too: :meth:`stroke`, :meth:`grow`, :meth:`shrink`,
    :meth:`undo`, :meth:`reset`, :meth:`apply`; :meth:`label_map` is the painted map.
    """

    _esm = esm("mask_painter.js")
    _css = CSS
    _registry = weakref.WeakSet()

    image_png = t.Bytes(b"").tag(sync=True)
    labels = t.Bytes(b"").tag(sync=True)  # uint8, grid[0] * grid[1], row-major (numbers may have gaps)
    grid = t.List(t.Int(), default_value=[0, 0]).tag(sync=True)
    sizes = t.List(t.Int()).tag(sync=True)  # cells per region number (0 for a number painted away)
    colors = t.List(t.Unicode()).tag(sync=True)
    tool = t.Unicode("brush").tag(sync=True)
    target = t.Int(NEW).tag(sync=True)  # a region number, or -1: a new region
    radius = t.Float(1.5, min=0.5, max=16.0).tag(sync=True)  # brush radius in latent cells
    opacity = t.Float(0.55, min=0.0, max=1.0).tag(sync=True)
    can_undo = t.Bool(False).tag(sync=True)
    edited = t.Bool(False).tag(sync=True)  # painted since the last apply
    can_apply = t.Bool(False).tag(sync=True)
    strokes = t.Int(0).tag(sync=True)  # strokes the kernel has applied
    title = t.Unicode("").tag(sync=True)
    status = t.Unicode("").tag(sync=True)
    width = t.Int(320).tag(sync=True)

    def __init__(self, session, *, index: int = 0, width: int = 320, title: str | None = None, **kwargs):
        from stylegallery.session import Session

        if not isinstance(session, Session):
            raise StyleGalleryError("MaskPainter(session, index=...) paints the regions of a Session")
        if session.segmentation is None:
            raise StyleGalleryError("this session has no regions yet: run it up to 'segment' first")
        self._session = session
        self._history: list[np.ndarray] = []
        super().__init__(width=width, title=title or "", **kwargs)
        self._init_hooks()
        self.on_msg(self._on_message)
        self.show(index, title)

    # ------------------------------------------------------------------ state
    @property
    def session(self):
        return self._session

    def show(self, index: int, title: str | None = None) -> None:
        """Paint image ``index`` (its regions as the session has them now; the painting so far is dropped)."""
        segmentation = self._session.segmentation
        if segmentation is None:
            raise StyleGalleryError("these regions are stale (an earlier setting changed): run the segment stage again")
        if not 0 <= index < len(segmentation.labels):
            raise StyleGalleryError(f"there is no image {index} (images 0..{len(segmentation.labels) - 1})")
        self.index = index
        self._segmentation = segmentation
        self._base = labels_array(segmentation.labels[index]).astype(np.int64)
        self._current = self._base.copy()
        self._history = []
        names = plot.image_names(self._session.prepared.names)
        with self.hold_sync():
            self.title = title or f"paint the regions of the {names[index]}"
            self.image_png = png_bytes(self._session.prepared.image(index))
            self.grid = list(self._base.shape)
            self.target = NEW
            self.can_apply = True
            self.edited = False
            self._send_labels()

    def label_map(self) -> np.ndarray:
        """The painted region map (latent grid), numbered 0..n-1."""
        return np.unique(self._current, return_inverse=True)[1].reshape(self._current.shape)

    def _send_labels(self) -> None:
        n = int(self._current.max()) + 1
        with self.hold_sync():
            self.labels = self._current.astype(np.uint8).tobytes()
            self.sizes = np.bincount(self._current.ravel(), minlength=n).astype(int).tolist()
            self.colors = hex_colours(plot.region_palette(n))
            self.can_undo = bool(self._history)
            if self.target >= n or (self.target >= 0 and not self.sizes[self.target]):
                self.target = NEW

    def _change(self, labels: np.ndarray, message: str) -> None:
        if np.array_equal(labels, self._current):
            self.status = "nothing changed"
            return
        if int(labels.max()) > 254:
            raise StyleGalleryError("too many regions to paint (at most 255 numbers): apply, then paint on")
        self._history.append(self._current)
        self._current = labels
        self.edited = True
        self._send_labels()
        self.status = message

    # ------------------------------------------------------------------ edits
    def stroke(self, points, tool: str | None = None, radius: float | None = None, target: int | None = None) -> int:
        """Paint along ``points`` ((n, 2) row, column positions in latent cells) with ``tool`` (default: the chosen
        one) into ``target`` (default: the chosen target; -1 a new region); returns the cells changed."""
        tool = self.tool if tool is None else tool
        target = self.target if target is None else int(target)
        if tool not in TOOLS:
            raise StyleGalleryError(f"tool must be one of {', '.join(TOOLS)} (got {tool!r})")
        grid = tuple(self._current.shape)
        if tool == "lasso":
            cells = painting.lasso_cells(points, grid)
        else:
            cells = painting.brush_cells(points, self.radius if radius is None else radius, grid)
        if tool == "erase":
            labels = painting.erase(self._current, cells, self._base)
            message = f"erased {plural(int(cells.sum()), 'cell')}: back to the regions before painting"
        else:
            labels = painting.paint(self._current, cells, None if target == NEW else target)
            into = "a new region" if target == NEW else f"region {target}"
            message = f"painted {plural(int(cells.sum()), 'cell')} into {into}"
        changed = int((labels != self._current).sum())
        self._change(labels, message)
        if tool != "erase" and target == NEW and changed:
            self.target = int(labels.max())  # go on painting the region just made
        self.strokes += 1
        return changed

    def _target(self, region: int | None) -> int:
        region = self.target if region is None else int(region)
        if region < 0 or region >= len(self.sizes) or not self.sizes[region]:
            raise StyleGalleryError("choose a region to grow or shrink")
        return region

    def grow(self, region: int | None = None) -> None:
        """Grow ``region`` (default: the target) by one cell over its neighbours."""
        region = self._target(region)
        self._change(painting.grow(self._current, region), f"region {region} grown by one cell")

    def shrink(self, region: int | None = None) -> None:
        """Shrink ``region`` (default: the target) by one cell; its border cells go to the nearest other region."""
        region = self._target(region)
        self._change(painting.shrink(self._current, region), f"region {region} shrunk by one cell")

    def undo(self) -> None:
        """Step back one edit."""
        if not self._history:
            raise StyleGalleryError("nothing to undo")
        self._current = self._history.pop()
        self.edited = bool(self._history) or not np.array_equal(self._current, self._base)
        self._send_labels()
        self.status = "undone"

    def reset(self) -> None:
        """Back to the regions before painting (undo can bring the painting back)."""
        self._change(self._base.copy(), "back to the regions before painting")

    def apply(self, match: bool = True):
        """Put the painted regions into the session (the stages after segment become stale) and, with ``match``, run
        the match stage again; returns the new :class:`~stylegallery.Segmentation`."""
        session = self._session
        check_idle(session)
        if session.segmentation is not self._segmentation:
            raise StyleGalleryError("the regions were recomputed meanwhile: paint again on the new ones")
        painted = session.segmentation.repaint(self.index, self.label_map())
        lock = model_lock(session.pipe)
        if not lock.acquire(blocking=False):
            raise StyleGalleryError("another run is using the model: apply when it has finished")
        try:
            session.replace("segment", painted)
            if match:
                self.status = "matching the painted regions…"
                session.run("match", progress=False)
        finally:
            lock.release()
        self.show(self.index, self.title)
        regions = plural(painted.n_regions(self.index), "region")
        self.status = f"applied: {regions}" + ("; matched again" if match else "; match is stale")
        self._edited("segment", painted)
        if match:
            self._edited("match", session.matching)
        return painted

    def _on_message(self, _widget, content, _buffers) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        try:
            if kind == "stroke":
                self.stroke(content.get("points") or [], content.get("tool"), target=content.get("target"))
            elif kind in ("grow", "shrink", "undo", "reset"):
                getattr(self, kind)()
            elif kind == "apply":
                self.apply()
        except StyleGalleryError as exc:
            self.status = f"⚠ {exc}"
        finally:  # the view shows "painting…" until this answer
            self.send({"type": "answered"})

    # ------------------------------------------------------------------ static picture
    def _repr_png_(self) -> bytes:
        figure = plot.region_overlay(self._session.prepared.image(self.index), self.label_map(), self.opacity)
        if self.title:
            figure.axes[0].set_title(self.title, fontsize=10)
        return figure_png(figure)
