"""AttentionView: click a point of the content image, see where the style loss's target attention sends it."""

from __future__ import annotations

import math
import time

import anywidget
import numpy as np
from matplotlib import colormaps
import traitlets as t
from PIL import Image

from stylegallery import plot
from stylegallery.analysis.pictures import OUTLINE_GREEN, border, heat_picture
from stylegallery.stages.attention import self_attention_names
from stylegallery.stages.attention_maps import MAP_MODES
from stylegallery.errors import StyleGalleryError
from stylegallery.results import Matching, Prepared, Segmentation

from .shared.display import CSS, StaticReprMixin, SyncGuard, esm
from .shared.export import FigureExport, file_name
from .shared.pictures import data_url, figure_png, labels_array, png_bytes
from .shared.runs import model_lock

#: The heat maps' colour map (matplotlib's inferno, as :func:`stylegallery.analysis.pictures.heat_picture`) as colour
#: stops for the view's scale bar.
HEAT_COLOURS = ["#%02x%02x%02x" % tuple(round(255 * v) for v in colormaps["inferno"](i / 8)[:3]) for i in range(9)]


def _heat_picture(reference: np.ndarray, weights: np.ndarray, inside: np.ndarray, top: float) -> np.ndarray:
    """The reference under the heat map of ``weights`` (:func:`stylegallery.analysis.pictures.heat_picture`), the
    matched style region (``inside``, same grid) outlined in green, two pixels wide; as in
    :func:`stylegallery.plot.attention_map`."""
    mixed = heat_picture(reference, weights, top)
    h, w = mixed.shape[:2]
    grid_h, grid_w = weights.shape
    mask = np.asarray(inside, dtype=bool)[(np.arange(h) * grid_h // h)[:, None], (np.arange(w) * grid_w // w)[None, :]]
    mixed[border(mask, width=2)] = OUTLINE_GREEN
    return mixed


def loss_layer_heads(pipe, layer: int) -> int:
    """The number of attention heads of self-attention layer ``layer`` (call order) of the pipe's UNet."""
    name = self_attention_names(pipe.unet)[layer]
    module = pipe.unet.get_submodule(name[: -len(".processor")] if name.endswith(".processor") else name)
    return int(getattr(module, "heads", 1))


class AttentionView(StaticReprMixin, FigureExport, SyncGuard, anywidget.AnyWidget):
    """Where a content point attends in the references under the style loss's target attention
    (:meth:`StyleGallery.attention_maps`).

    The content image is drawn on a canvas; a click (or a drag) on it selects a point (``point``: [y, x] pixels of
    the working image) and the kernel computes that point's attention weights over every reference token. Each
    reference is shown in grey under its heat map, the matched style region outlined in green, with the share of
    the weight it gets; the line above names the point's content region, its match and the share of the weight
    inside the matched region (``share``; 1 for ``"masked"``, None for a region that keeps its content).

    Controls: the timestep (those of the stylize run: ``steps`` and ``scheduler``), the loss layer, the head
    (``head`` = -1 for the mean over heads), the mode (``"zeroed"``, ``"masked"``, ``"plain"``) and whose queries
    (``queries``: the clean content's, or ``"result"``: the stylize result's latent, as the loss's target used
    them at the end; one UNet pass per timestep). After the first point at a timestep the features come from the
    pipe's cache, so another point costs milliseconds.
    ``elapsed_ms``: the kernel's time for the last update (maps and pictures).

    ``AttentionView(session)`` uses the session's results and stylize settings (:meth:`refresh` follows new
    ones); ``AttentionView(pipe, prepared, segmentation, matching, steps=..., scheduler=..., stylization=...)``
    works on results. :meth:`to_png`, :meth:`to_svg` (and the view's *save PNG*) write the maps shown as a
    figure (:func:`stylegallery.plot.attention_map`): the point, and the mode, timestep, layer, head and queries.
    """

    _esm = esm("attention_view.js")
    _css = CSS

    content_png = t.Bytes(b"").tag(sync=True)
    image_size = t.List(t.Int(), default_value=[0, 0]).tag(sync=True)  # working image (H, W)
    labels = t.Bytes(b"").tag(sync=True)  # content label map, uint8, label_grid[0] * label_grid[1], row-major
    label_grid = t.List(t.Int(), default_value=[0, 0]).tag(sync=True)
    reference_names = t.List(t.Unicode()).tag(sync=True)
    heatmaps = t.List(t.Unicode()).tag(sync=True)  # one PNG data URL per reference
    heat_scale = t.Dict().tag(sync=True)  # the heat maps' colour scale: {"colors": [hex, ...], "top": weight at the top}
    reference_shares = t.List(t.Float()).tag(sync=True)  # share of the point's weight on each reference
    point = t.List(t.Int()).tag(sync=True)  # [y, x] in pixels of the working image; [] = none
    region = t.Int(-1).tag(sync=True)  # the point's content region
    match = t.List(allow_none=True, default_value=None).tag(sync=True)  # [reference, style region] or None
    share = t.Float(None, allow_none=True).tag(sync=True)  # weight inside the matched region
    caption = t.Unicode("").tag(sync=True)
    timesteps = t.List(t.Int()).tag(sync=True)
    timestep = t.Int(0).tag(sync=True)
    layers = t.List(t.Int()).tag(sync=True)
    layer = t.Int(0).tag(sync=True)
    heads = t.Int(1).tag(sync=True)
    head = t.Int(-1).tag(sync=True)  # -1: mean over heads
    mode = t.Unicode("zeroed").tag(sync=True)
    modes = t.List(t.Unicode(), default_value=list(MAP_MODES)).tag(sync=True)
    queries = t.Unicode("content").tag(sync=True)  # "content" (clean content) or "result" (the stylize result's latent)
    has_result = t.Bool(False).tag(sync=True)  # a result is there to take queries from
    elapsed_ms = t.Float(0.0).tag(sync=True)
    status = t.Unicode("").tag(sync=True)
    width = t.Int(256).tag(sync=True)  # displayed width of the content canvas in CSS pixels
    reference_width = t.Int(192).tag(sync=True)

    def __init__(self, pipe, prepared: Prepared | None = None, segmentation: Segmentation | None = None,
                 matching: Matching | None = None, *, steps: int | None = None, scheduler: str | None = None,
                 stylization=None,
                 point=None, mode: str = "zeroed", timestep: int | None = None, layer: int | None = None,
                 head: int | None = None, width: int = 256, reference_width: int = 192, **kwargs):
        from stylegallery.session import Session

        self._session = None
        if isinstance(pipe, Session):
            self._session = pipe
            pipe = pipe.pipe
        elif not (isinstance(prepared, Prepared) and isinstance(segmentation, Segmentation)
                  and isinstance(matching, Matching)):
            raise StyleGalleryError("AttentionView(pipe, prepared, segmentation, matching) needs the results of "
                                    "prepare, segment and match (or AttentionView(session))")
        self.pipe = pipe
        self._results = (prepared, segmentation, matching)
        self._steps, self._scheduler = steps, scheduler
        self._stylization = stylization
        self._shown = None  # what the pictures were made from: results and matches
        self._maps = None
        self._maps_queries = "content"  # whose queries the maps shown were computed from
        self._computed = None  # what the maps shown were computed from (see _key)
        self._quiet = True  # no update while the traits are set up
        super().__init__(width=width, reference_width=reference_width, **kwargs)
        self.layers = [int(x) for x in pipe.recorder.layers]
        self.mode = mode if mode in MAP_MODES else "zeroed"
        self._quiet = False
        self.observe(self._control_changed, names=["point", "timestep", "layer", "head", "mode", "queries"])
        self.on_msg(self._on_message)
        self.refresh(point=point, timestep=timestep, layer=layer, head=head, mode=mode)

    # ------------------------------------------------------------------ inputs
    @property
    def session(self):
        return self._session

    @property
    def maps(self):
        """The :class:`~stylegallery.stages.attention_maps.AttentionMaps` shown (None before the first point)."""
        return self._maps

    def _inputs(self):
        """prepared, segmentation, matching, steps, scheduler (the session's current ones)."""
        if self._session is None:
            prepared, segmentation, matching = self._results
            steps = self._steps if self._steps is not None else 150
            scheduler = self._scheduler if self._scheduler is not None else "ddim"
            return prepared, segmentation, matching, steps, scheduler
        s = self._session
        if s.prepared is None or s.segmentation is None or s.matching is None:
            raise StyleGalleryError("this session has no matches (the match stage is stale): run it up to 'match'")
        steps = self._steps if self._steps is not None else s.value("steps")
        scheduler = self._scheduler if self._scheduler is not None else s.value("scheduler")
        return s.prepared, s.segmentation, s.matching, steps, scheduler

    def refresh(self, *, point=None, timestep: int | None = None, layer: int | None = None, head: int | None = None,
                mode: str | None = None) -> None:
        """Follow the session's current results and settings (new regions, matches, timesteps), then recompute
        the maps of the selected point. Errors (stale results, a bad setting) show in ``status``."""
        try:
            prepared, segmentation, matching, steps, scheduler = self._inputs()
            timesteps = [int(x) for x in self.pipe.timesteps(steps, scheduler)]
        except StyleGalleryError as exc:
            self._maps = self._computed = None
            with self.hold_sync():
                self.heatmaps, self.reference_shares, self.share, self.caption = [], [], None, ""
                self.heat_scale = {}
                self.status = f"⚠ {exc}"
            self._shown = None
            return
        shown = (id(prepared), id(segmentation), id(matching))
        H, W = (int(v) for v in prepared.pixels.shape[-2:])
        self._quiet = True
        try:
            with self.hold_sync():
                if self._shown is None or self._shown[0] != shown[0]:
                    self.content_png = png_bytes(prepared.image(0))
                    self.image_size = [H, W]
                    self.reference_names = list(plot.image_names(prepared.names)[1:])
                if self._shown is None or self._shown[:2] != shown[:2]:
                    content = labels_array(segmentation.labels[0])
                    self.labels = content.astype(np.uint8).tobytes()
                    self.label_grid = [int(v) for v in content.shape]
                self.timesteps = timesteps
                self.has_result = self._result() is not None
                if not self.has_result:  # the result went stale or away: back to the content's queries
                    self.queries = "content"
                if timestep is not None:
                    self.timestep = int(timestep)
                elif self.timestep not in timesteps:
                    self.timestep = timesteps[0]
                if layer is not None:
                    self.layer = int(layer)
                elif self.layer not in self.layers:
                    self.layer = self.layers[0]
                self.heads = loss_layer_heads(self.pipe, self.layer) if self.layer in self.layers else 1
                if head is not None:
                    self.head = int(head)
                if mode is not None:
                    self.mode = mode
                if point is not None:
                    self.point = [int(v) for v in point]
                elif not self.point or not (0 <= self.point[0] < H and 0 <= self.point[1] < W):
                    self.point = [H // 2, W // 2]
        finally:
            self._quiet = False
        self._shown = shown
        if self._key(matching) != self._computed:  # nothing changed: the maps shown are current
            self.update()

    # ------------------------------------------------------------------ maps
    def _result(self):
        """The stylization whose latent's queries ``queries="result"`` shows (None when there is none)."""
        if self._session is None:
            return self._stylization
        return None if "stylize" in self._session.stale else self._session.stylization

    def _key(self, matching) -> tuple:
        prepared, segmentation = (self._session.prepared, self._session.segmentation) if self._session else self._results[:2]
        matches = tuple(None if m is None else tuple(m) for m in matching.matches)
        return (id(prepared), id(segmentation), id(matching), matches, self.timestep, self.layer, self.head, self.mode,
                tuple(self.point), self.queries, id(self._result()))

    def _control_changed(self, change) -> None:
        if self._quiet:
            return
        if change["name"] == "layer" and change["new"] in self.layers:
            self._quiet = True
            try:
                self.heads = loss_layer_heads(self.pipe, change["new"])
            finally:
                self._quiet = False
        self.update()

    def select(self, y: int, x: int) -> None:
        """Select the point (y, x) (pixels of the working image), as a click on the content does."""
        self.point = [int(y), int(x)]

    def update(self) -> bool:
        """Compute the maps of the selected point with the current controls and show them; False when it could
        not (the reason is in ``status``). Never waits for a run on the model: one that holds it defers the maps
        to the next :meth:`refresh` or selection."""
        if not self.point:
            return False
        lock = model_lock(self.pipe)
        if not lock.acquire(blocking=False):
            self.status = "⚠ another run is using the model: the maps update when it has finished"
            self.send({"type": "answered"})
            return False
        start = time.perf_counter()
        try:
            prepared, segmentation, matching, _steps, _scheduler = self._inputs()
            if self.mode not in MAP_MODES:
                raise StyleGalleryError(f"mode must be one of {', '.join(MAP_MODES)} (got {self.mode!r})")
            if self.head >= self.heads or self.head < -1:
                raise StyleGalleryError(f"head must be between 0 and {self.heads - 1}, or -1 for the mean (got {self.head})")
            if self.queries not in ("content", "result"):
                raise StyleGalleryError(f"queries must be content or result (got {self.queries!r})")
            result = self._result() if self.queries == "result" else None
            if self.queries == "result" and result is None:
                raise StyleGalleryError("there is no stylize result yet: run stylize, or use the content's queries")
            maps = self.pipe.attention_maps(prepared, segmentation, matching, [tuple(self.point)], timestep=self.timestep,
                                            stylization=result,
                                            layer=self.layer, mode=self.mode, head=None if self.head < 0 else self.head)
            pictures = self._pictures(prepared, maps)
            key = self._key(matching)
        except StyleGalleryError as exc:
            self.status = f"⚠ {exc}"
            self.send({"type": "answered"})
            return False
        except Exception as exc:  # shown, never only in a log
            self.status = f"⚠ {type(exc).__name__}: {exc}"
            self.send({"type": "answered"})
            return False
        finally:
            lock.release()
        self._maps, self._computed, self._maps_queries = maps, key, self.queries
        share = maps.share_inside[0]
        match = maps.matches[0]
        names = self.reference_names
        region = maps.regions[0]
        y, x = self.point
        if match is None:
            caption = f"point ({y}, {x}) · content region {region} keeps its content (no style attention)"
        else:
            name = names[match[0]] if match[0] < len(names) else f"style {match[0] + 1}"
            caption = (f"point ({y}, {x}) · content region {region} → {name} region {match[1]} · "
                       f"{share:.0%} inside the matched region")
        elapsed = 1000 * (time.perf_counter() - start)
        with self.hold_sync():
            self.heatmaps = pictures
            self.heat_scale = {"colors": HEAT_COLOURS, "top": float(max(float(m.max()) for m in maps.maps[0]) or 1.0)}
            self.reference_shares = [round(float(m.sum()), 4) for m in maps.maps[0]]
            self.region = int(region)
            self.match = None if match is None else [int(match[0]), int(match[1])]
            self.share = None if match is None or math.isnan(share) else round(float(share), 4)
            self.caption = caption
            self.elapsed_ms = round(elapsed, 1)
            head = "mean of heads" if self.head < 0 else f"head {self.head}"
            self.status = (f"{maps.mode} · t = {maps.timestep} · layer {maps.layer} · {head} · queries of the {self.queries} · "
                           f"{elapsed:.0f} ms")
        self.send({"type": "answered"})
        return True

    def _pictures(self, prepared: Prepared, maps) -> list[str]:
        top = max(float(m.max()) for m in maps.maps[0]) or 1.0
        out = []
        for j, (weights, inside) in enumerate(zip(maps.maps[0], maps.inside[0])):
            reference = np.asarray(prepared.image(j + 1))
            out.append(data_url(png_bytes(Image.fromarray(_heat_picture(reference, weights, inside, top)))))
        return out

    def _on_message(self, _widget, content, _buffers) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "refresh":
            self.refresh()

    # ------------------------------------------------------------------ pictures
    def _picture(self):
        """The figure of the maps shown: the point on the content, each reference under its heat map."""
        if self._maps is None:
            raise StyleGalleryError("there are no attention maps to draw yet: select a point of the content")
        figure = plot.attention_map(self._inputs()[0], self._maps)
        head = "mean of heads" if self._maps.head is None else f"head {self._maps.head}"
        figure.suptitle(f"{figure.get_suptitle()}\n{head} · queries of the {self._maps_queries}", fontsize=11)
        return figure

    def _picture_name(self) -> str:
        y, x = self._maps.points[0]  # asked for once the picture is made: there are maps
        return file_name("attention", self._maps.mode, f"y{y}", f"x{x}")

    def _repr_png_(self) -> bytes:
        if self._maps is not None:
            try:
                return figure_png(self._picture())
            except StyleGalleryError:
                pass
        if self.content_png:
            return self.content_png
        return png_bytes(Image.new("RGB", (64, 64), (255, 255, 255)))
