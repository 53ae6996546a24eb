"""RegionView: an image with its region overlay; hover, pick, merge, and re-segment with a chosen k."""

from __future__ import annotations

import weakref

import anywidget
import numpy as np
import traitlets as t
from PIL import Image

from stylegallery import plot
from stylegallery.analysis.figures import plural
from stylegallery.analysis.pictures import border, overlay_array, upsample_labels
from stylegallery.errors import StyleGalleryError
from stylegallery.results import Prepared, Segmentation

from .shared.display import CSS, EditHooks, StaticReprMixin, SyncGuard, esm
from .shared.export import PictureExport, file_name
from .shared.pictures import figure_png, hex_colours, labels_array, overlay, png_bytes, to_image
from .shared.runs import check_idle, model_lock

# per session and image: the silhouette curve of the last automatic choice of k, kept to be shown once k is forced
_CURVES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_CURVE_SETTINGS = ("max_clusters", "n_components", "n_init", "silhouette_sample", "seed")


class RegionView(StaticReprMixin, EditHooks, PictureExport, SyncGuard, anywidget.AnyWidget):
    """An image with its region label map drawn over it on a canvas.

    Hover shows a region's id and size (in latent pixels: cells of the latent grid, 8×8 image pixels each with
    SD's VAE); a click picks a region (``selected``; the last two picks are in ``picked``); the slider sets the
    overlay's opacity. With two regions picked, *merge* joins the second into the first
    (:meth:`Segmentation.merge`). With a session, the bar chart of the silhouette score per k
    re-segments with that k (``n_clusters`` for this image; the chart keeps the curve of the automatic choice) and
    merges go into the session (:meth:`Session.replace`), making the later stages stale.

    Build from a :class:`~stylegallery.Session` (``RegionView(session, index=0)``), from results
    (``RegionView(prepared, segmentation, index=0)``) or from a picture and a label map (``RegionView(image, labels)``).
    :meth:`to_png` (and the view's *save PNG*) writes the overlay as shown, at the image's full resolution.
    """

    _esm = esm("region_view.js")
    _css = CSS
    _registry = weakref.WeakSet()

    image_png = t.Bytes(b"").tag(sync=True)
    labels = t.Bytes(b"").tag(sync=True)  # uint8, grid[0] * grid[1], row-major
    grid = t.List(t.Int(), default_value=[0, 0]).tag(sync=True)
    sizes = t.List(t.Int()).tag(sync=True)
    colors = t.List(t.Unicode()).tag(sync=True)
    opacity = t.Float(0.5, min=0.0, max=1.0).tag(sync=True)
    selected = t.Int(-1).tag(sync=True)
    picked = t.List(t.Int()).tag(sync=True)
    silhouette = t.List().tag(sync=True)  # [[k, score], ...]
    chosen_k = t.Int(0).tag(sync=True)
    forced_k = t.Int(0).tag(sync=True)  # 0 = automatic
    can_segment = t.Bool(False).tag(sync=True)
    title = t.Unicode("").tag(sync=True)
    status = t.Unicode("").tag(sync=True)
    width = t.Int(320).tag(sync=True)  # displayed width in CSS pixels

    def __init__(self, source, labels=None, *, index: int = 0, opacity: float = 0.5, title: str | None = None,
                 width: int = 320, **kwargs):
        from stylegallery.session import Session

        self._session = None
        self._prepared = None
        self._image = None
        self.index = index
        if isinstance(source, Session):
            if source.segmentation is None or source.prepared is None:
                raise StyleGalleryError("this session has no regions yet: run it up to 'segment' first")
            self._session = source
            segmentation = source.segmentation
        elif isinstance(source, Prepared):
            if not isinstance(labels, Segmentation):
                raise StyleGalleryError("RegionView(prepared, segmentation, index=...) needs a Segmentation")
            self._prepared = source
            segmentation = labels
        else:
            if labels is None:
                raise StyleGalleryError("RegionView(image, labels) needs a label map")
            self._image = to_image(source)
            if isinstance(labels, Segmentation):
                segmentation = labels
            else:
                array = labels_array(labels)
                if array.ndim != 2:
                    raise StyleGalleryError(f"labels must be a 2-D label map (got shape {array.shape})")
                import torch

                renumbered = np.unique(array, return_inverse=True)[1].reshape(array.shape)
                segmentation = Segmentation(torch.from_numpy(renumbered)[None].long(), [{}], [0], {})
                self.index = 0
        self._segmentation = segmentation
        if not 0 <= self.index < len(segmentation.labels):
            raise StyleGalleryError(f"there is no image {self.index} (images 0..{len(segmentation.labels) - 1})")
        if title is None:
            prepared = self._session.prepared if self._session is not None else self._prepared
            title = "" if prepared is None else plot.image_names(prepared.names)[self.index]
        super().__init__(opacity=opacity, title=title, width=width, **kwargs)
        self._init_hooks()
        self.on_msg(self._on_message)
        self.refresh()

    # ------------------------------------------------------------------ state
    @property
    def session(self):
        return self._session

    @property
    def segmentation(self) -> Segmentation:
        """The segmentation shown."""
        return self._segmentation

    def image(self):
        """The picture shown (image ``index`` at working size)."""
        if self._image is None:
            prepared = self._session.prepared if self._session is not None else self._prepared
            self._image = prepared.image(self.index)
        return self._image

    def label_map(self) -> np.ndarray:
        return labels_array(self.segmentation.labels[self.index])

    def _check_current(self) -> None:
        """Edits go into the session only while it still holds the regions shown (and runs no stage)."""
        check_idle(self._session)
        if self._session is None or self._session.segmentation is self._segmentation:
            return
        if self._session.segmentation is not None:
            self.refresh()
            raise StyleGalleryError("the regions were recomputed meanwhile: now showing the new ones, pick again")
        raise StyleGalleryError("these regions are stale (an earlier setting changed): run the segment stage again")

    def refresh(self) -> None:
        """Show the session's current regions (when it has them) and send picture, labels and curve to the view."""
        if self._session is not None and self._session.segmentation is not None:
            self._segmentation = self._session.segmentation
            if self._session.prepared is not None:
                self._image = self._session.prepared.image(self.index)
        seg = self._segmentation
        labels = self.label_map()
        n = int(labels.max()) + 1
        curve = {int(k): float(v) for k, v in (seg.silhouette[self.index] if self.index < len(seg.silhouette) else {}).items()}
        forced = 0
        if self._session is not None:
            value = self._session.value("n_clusters")
            value = value[self.index] if isinstance(value, (list, tuple)) and self.index < len(value) else value
            forced = int(value) if isinstance(value, (int, np.integer)) else 0
            curve = self._full_curve(curve, forced)
        with self.hold_sync():
            self.image_png = png_bytes(self.image())
            self.grid = list(labels.shape)
            self.labels = labels.astype(np.uint8).tobytes()
            self.sizes = np.bincount(labels.ravel(), minlength=n).astype(int).tolist()
            self.colors = hex_colours(plot.region_palette(n))
            self.silhouette = sorted([k, v] for k, v in curve.items())
            self.chosen_k = int(seg.chosen_k[self.index]) if self.index < len(seg.chosen_k) else 0
            self.forced_k = forced
            self.can_segment = self._session is not None
            self.picked = [p for p in self.picked if p < n]
            if self.selected >= n:
                self.selected = -1

    def _full_curve(self, curve: dict[int, float], forced: int) -> dict[int, float]:
        """The automatic run's curve with this run's scores over it, while k is forced; remembers automatic curves."""
        session = self._session
        key = (id(session.inversion),) + tuple(session.value(name) for name in _CURVE_SETTINGS)
        kept = _CURVES.setdefault(session, {})
        if not forced:
            kept[self.index] = (key, curve)
            return curve
        if self.index in kept and kept[self.index][0] == key:
            return {**kept[self.index][1], **curve}
        return curve

    # ------------------------------------------------------------------ edits
    def pick(self, region: int) -> None:
        """What a click on ``region`` does: pick it (keeping the last two picks), or drop it if already picked."""
        picked = list(self.picked)
        if region in picked:
            picked.remove(region)
            selected = picked[-1] if picked else -1
        else:
            picked = (picked + [int(region)])[-2:]
            selected = int(region)
        with self.hold_trait_notifications():
            self.picked = picked
            self.selected = selected

    def merge(self, a: int | None = None, b: int | None = None) -> Segmentation:
        """Make regions ``a`` and ``b`` one region, numbered with the lower number (default: the two picked regions);
        see :meth:`Segmentation.merge`."""
        if a is None or b is None:
            if len(self.picked) != 2:
                raise StyleGalleryError("pick two regions to merge")
            a, b = self.picked
        self._check_current()
        merged = self.segmentation.merge(self.index, int(a), int(b))
        if self._session is not None:
            self._session.replace("segment", merged)
        self._segmentation = merged
        low, high = sorted((int(a), int(b)))
        self.picked = []
        self.selected = -1
        self.refresh()
        moved = f"; regions above {high} move down by one" if high < self.segmentation.n_regions(self.index) else ""
        self.status = f"merged regions {low} and {high} into region {low}{moved}"
        self._update_siblings()
        self._edited("segment", merged)
        return merged

    def set_k(self, k: int | None) -> Segmentation:
        """Re-segment with ``k`` clusters for this image (``None``/0 = choose k by silhouette) via the session."""
        if self._session is None:
            raise StyleGalleryError("choosing k re-runs the segment stage: build the RegionView from a Session")
        session = self._session
        check_idle(session)
        lock = model_lock(session.pipe)
        if not lock.acquire(blocking=False):
            raise StyleGalleryError("another run is using the model: choose k when it has finished")
        try:
            return self._segment_with(k)
        finally:
            lock.release()

    def _segment_with(self, k: int | None) -> Segmentation:
        session = self._session
        count = len(session.styles) + 1
        current = session.value("n_clusters")
        forced = list(current) if isinstance(current, (list, tuple)) else [current] * count
        forced[self.index] = int(k) if k else None
        session.set(n_clusters=None if all(f is None for f in forced) else forced)
        self.status = f"segmenting with k = {k}…" if k else "segmenting with automatic k…"
        result = session.run("segment", progress=False)
        self.picked = []
        self.selected = -1
        self.refresh()
        self.status = f"k = {k}: {plural(result.n_regions(self.index), 'region')}" if k else f"automatic k = {result.chosen_k[self.index]}"
        self._update_siblings()
        self._edited("segment", result)
        return result

    def _update_siblings(self) -> None:
        """Other views of this session show its new regions."""
        if self._session is None:
            return
        for other in self._siblings():
            if other._session is self._session and other._segmentation is not self._session.segmentation:
                other.refresh()

    def _on_message(self, _widget, content, _buffers) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind not in ("merge", "set_k"):
            return
        try:
            if kind == "merge":
                self.merge()
            elif kind == "set_k":
                self.set_k(content.get("k") or None)
        except StyleGalleryError as exc:
            self.status = f"⚠ {exc}"
        finally:  # the view shows "merging…" until this answer, then the status (which may not have changed)
            self.send({"type": "answered"})

    # ------------------------------------------------------------------ pictures
    def _picture(self) -> Image.Image:
        """The image with the overlay at its opacity, the borders between regions and the picked regions outlined
        (the last one white, the one before yellow), as the view draws them, at the image's resolution."""
        labels = self.label_map()
        mixed = overlay_array(self.image(), labels, self.opacity)
        full = upsample_labels(labels, mixed.shape[:2])
        if self.opacity > 0:
            edges = np.zeros(full.shape, dtype=bool)
            edges[:, 1:] |= full[:, 1:] != full[:, :-1]
            edges[1:] |= full[1:] != full[:-1]
            strength = min(0.85, 0.3 + self.opacity)
            mixed[edges] = np.round((1 - strength) * mixed[edges] + strength * 255).astype(np.uint8)
        picked = list(self.picked)
        for i, region in enumerate(picked):
            mixed[border(full == region, width=2)] = (255, 255, 255) if i == len(picked) - 1 else (255, 225, 77)
        return Image.fromarray(mixed)

    def _picture_name(self) -> str:
        return file_name("regions", self.title or f"image {self.index}")

    def _repr_png_(self) -> bytes:
        highlight = list(self.picked) or ([self.selected] if self.selected >= 0 else [])
        if highlight:  # plot.region_overlay has no outline for picked regions
            return png_bytes(overlay(self.image(), self.label_map(), self.opacity, highlight), max_side=512)
        figure = plot.region_overlay(self.image(), self.label_map(), self.opacity)
        if self.title:
            figure.axes[0].set_title(self.title, fontsize=10)
        return figure_png(figure)
