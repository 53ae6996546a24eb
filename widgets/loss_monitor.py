"""LossMonitor: live loss curves and latent previews during stylize, with a Stop button."""

from __future__ import annotations

import threading
import time

import anywidget
import traitlets as t

from stylegallery import plot
from stylegallery.analysis.figures import plural
from stylegallery.errors import StyleGalleryError
from stylegallery.results import Stylization

from .shared.display import CSS, StaticReprMixin, SyncGuard, esm
from .shared.export import FigureExport, file_name
from .shared.pictures import figure_png, png_bytes, to_image
from .shared.runs import BackgroundRun


class LossMonitor(StaticReprMixin, FigureExport, SyncGuard, anywidget.AnyWidget):
    """Live loss curves (total, content, style per region) and previews of a running stylization.

    :meth:`run` stylizes in a worker thread with this monitor watching (``monitor.run(session)`` or
    ``monitor.run(pipe, prepared, inversion, segmentation, matching, steps=...)``); :meth:`wait` returns the
    result. While it runs the monitor shows a preview of the latent at every step (SD 1.5's linear
    latent-to-RGB map, next to free), and the VAE-decoded result when it ends. *Stop* makes the callback
    return True: stylize then stops after the current step and keeps the current result (``stopped_early``).
    A new run starts fresh curves. ``min_interval``: seconds between updates sent to the view (the curves and
    the latest preview; the first and the last step always go at once). ``preview_size``: longest side in
    pixels of the pictures sent (the view scales a small preview up).

    :meth:`callback` can also go to :meth:`StyleGallery.stylize` or :meth:`Session.run` by hand (with
    ``preview_every=N`` for a preview every N steps; :meth:`show` the result at the end). Run so on the kernel's
    main thread, the kernel reads no click until the cell ends: the view then says to use the kernel's
    interrupt button, which stops stylize the same way. :meth:`stop` works from any thread.

    :meth:`to_png`, :meth:`to_svg` (and the view's *save PNG*) write the curves as shown (log scale included)
    with the latest preview or result beside them, at its full resolution.
    """

    _esm = esm("loss_monitor.js")
    _css = CSS

    steps = t.List().tag(sync=True)
    total = t.List().tag(sync=True)
    content = t.List().tag(sync=True)
    style_loss = t.List().tag(sync=True)  # not `style`: ipywidgets reserves that name for a DOM widget's styling
    regions = t.Dict().tag(sync=True)  # {"0": [...], "1": [...]} style loss per content region
    region_colors = t.List().tag(sync=True)
    total_steps = t.Int(0).tag(sync=True)
    step = t.Int(0).tag(sync=True)
    timestep = t.Int(0).tag(sync=True)
    running = t.Bool(False).tag(sync=True)
    stop_requested = t.Bool(False).tag(sync=True)
    stoppable = t.Bool(True).tag(sync=True)  # False while the run holds the kernel's main thread
    preview_png = t.Bytes(b"").tag(sync=True)
    preview_step = t.Int(0).tag(sync=True)
    preview_caption = t.Unicode("").tag(sync=True)
    log_scale = t.Bool(False).tag(sync=True)
    status = t.Unicode("waiting for stylize").tag(sync=True)

    def __init__(self, *, min_interval: float = 0.25, preview_size: int = 320, history=None, **kwargs):
        super().__init__(**kwargs)
        self.min_interval = min_interval
        self.preview_size = preview_size
        self._buffer: dict = {}
        self._preview = None  # (picture, step, loss) of the latest preview not yet sent to the view
        self._shown = None  # the full-resolution picture of the preview shown
        self._last_sent = 0.0
        self._started = 0.0
        self._run = BackgroundRun("stylegallery-loss-monitor")
        self._reset()
        if history is not None:
            self.show(history)

    # ------------------------------------------------------------------ running in a worker thread
    def run(self, source, *args, preview_every: int = 1, preview: str = "linear", **kwargs) -> None:
        """Stylize in a worker thread with this monitor's callback, so that the kernel reads *Stop* meanwhile.

        ``source``: a :class:`~stylegallery.Session` (runs ``session.run(*args, **kwargs)``, its stale stages up
        to stylize; ``refine=True`` continues from its last result) or a :class:`~stylegallery.StyleGallery`
        (runs ``pipe.stylize(*args, **kwargs)``; ``init=`` and ``start_step=`` for a warm re-run).
        ``preview_every``, ``preview``: a picture of the latent every N steps (0: none) and how it is made
        (``"linear"``, ``"tiny-vae"`` or ``"vae"``; see :meth:`StyleGallery.preview`). Returns at once;
        :meth:`wait` returns the result. An error shows in the monitor and :meth:`wait` raises it.
        """
        from stylegallery.session import Session

        if self.busy:
            raise StyleGalleryError("this monitor is watching a run already: wait() for it or stop it first")
        function, pipe = (source.run, source.pipe) if isinstance(source, Session) else (source.stylize, source)
        kwargs.update(callback=self.callback, preview_every=preview_every, preview=preview)
        self.start()

        def finished():
            if isinstance(self._run.result, Stylization):
                self._show_image(self._run.result)
            elif self._run.error is not None:  # shown in the view; wait() raises it
                self.running = False
                self.status = f"⚠ {type(self._run.error).__name__}: {self._run.error}"

        self._run.start(lambda: function(*args, **kwargs), pipe, finished=finished)

    @property
    def busy(self) -> bool:
        """True while a run started by :meth:`run` goes on."""
        return self._run.busy

    @property
    def result(self):
        """What the last run started by :meth:`run` returned."""
        return self._run.result

    @property
    def error(self) -> BaseException | None:
        """What the last run started by :meth:`run` raised."""
        return self._run.error

    def wait(self, timeout: float | None = None):
        """Wait for the run started by :meth:`run` (at most ``timeout`` seconds); returns its result or raises its
        error (None while it still runs). In a notebook cell prefer ``await monitor.wait_async()``: Stop then works
        while the cell waits."""
        return self._outcome(self._run.wait(timeout))

    async def wait_async(self, timeout: float | None = None):
        """:meth:`wait` for a notebook cell (``result = await monitor.wait_async()``): the kernel reads the widgets'
        messages meanwhile, so a click on Stop lands, under Run All too."""
        return self._outcome(await self._run.wait_async(timeout))

    def _outcome(self, finished: bool):
        if not finished:
            return None
        if self.error is not None:
            raise self.error
        return self.result

    # ------------------------------------------------------------------ the callback
    def _reset(self, total_steps: int = 0) -> None:
        self._buffer = {"steps": [], "total": [], "content": [], "style": [], "regions": {}}
        self._preview = self._shown = None
        with self.hold_sync():
            self.steps, self.total, self.content, self.style_loss, self.regions = [], [], [], [], {}
            self.total_steps = total_steps
            self.step = 0
            self.stop_requested = False
            self.preview_png = b""
            self.preview_step = 0
            self.preview_caption = ""

    def start(self, total_steps: int = 0) -> None:
        """Clear the curves for a new run (the callback does this itself when a run begins)."""
        self._reset(total_steps)
        self._started = time.perf_counter()
        self._last_sent = 0.0
        self.running = True
        self.status = "starting…"

    def stop(self) -> None:
        """Ask the running stylization to stop after the current step (what the Stop button does)."""
        self.stop_requested = True

    def callback(self, info) -> bool:
        """Record one :class:`~stylegallery.StepInfo`; returns True (stop) once Stop was pressed."""
        if not self.running or info.step <= self._buffer_step():
            self.start(info.total_steps)
        if not self._buffer["steps"]:
            self._note_thread()
        b = self._buffer
        b["steps"].append(int(info.step))
        b["total"].append(float(info.loss))
        b["content"].append(float(info.content))
        b["style"].append(float(info.style))
        for region, value in info.style_per_region.items():
            b["regions"].setdefault(str(region), [None] * (len(b["steps"]) - 1)).append(float(value))
        for values in b["regions"].values():  # a region without a value this step (kept content)
            if len(values) < len(b["steps"]):
                values.append(None)
        self.total_steps = int(info.total_steps)
        self.timestep = int(info.timestep)
        if info.preview is not None:  # encoded and sent with the next update of the view
            self._preview = (info.preview, int(info.step), float(info.loss))
        last = info.step >= info.total_steps
        stop = bool(self.stop_requested)
        now = time.perf_counter()
        if last or stop or len(b["steps"]) == 1 or now - self._last_sent >= self.min_interval:
            self._flush(info.step)
            self._last_sent = now
        if last or stop:
            self.running = False
            seconds = now - self._started
            phase = "" if info.phase == "working size" else f" ({info.phase})"
            self.status = (f"stopped at step {info.step} of {info.total_steps}" if stop and not last
                           else f"done: {self._span()}") + f"{phase} in {seconds:.1f} s"
        else:
            self.status = f"step {info.step} / {info.total_steps} · t = {info.timestep} · loss {info.loss:.4g}"
        return stop

    __call__ = callback

    def _note_thread(self) -> None:
        """At a run's first step: can the kernel read Stop meanwhile (not while the run holds its main thread)?"""
        self.stoppable = threading.current_thread() is not threading.main_thread()
        if not self.stoppable:
            self._end_with_cell()

    def _end_with_cell(self) -> None:
        """A run on the kernel's main thread ends with its cell at the latest: the interrupt button stops stylize
        without a last callback, so when the cell ends the view gets the steps recorded and stops showing a run."""
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            return

        def ended(*_):
            shell.events.unregister("post_run_cell", ended)
            if self.running:
                self._flush(self._buffer_step())
                self.running = False
                self.status = f"ended at step {self.step} of {self.total_steps}"

        shell.events.register("post_run_cell", ended)

    def _buffer_step(self) -> int:
        return self._buffer["steps"][-1] if self._buffer["steps"] else 0

    def _span(self) -> str:
        """The steps recorded: "20 steps", or "steps 15 to 20 of 20" for a run that started later (warm)."""
        steps = self._buffer["steps"]
        if not steps or steps[0] <= 1:
            return plural(len(steps), "step")
        return f"steps {steps[0]} to {steps[-1]} of {self.total_steps}"

    def _flush(self, step: int) -> None:
        b = self._buffer
        with self.hold_sync():
            self.steps = list(b["steps"])
            self.total = list(b["total"])
            self.content = list(b["content"])
            self.style_loss = list(b["style"])
            self.regions = {k: list(v) for k, v in b["regions"].items()}
            colours = plot.region_palette(len(b["regions"]))
            self.region_colors = ["#%02x%02x%02x" % tuple(int(x) for x in c) for c in colours]
            self.step = int(step)
            if self._preview is not None:
                picture, at, loss = self._preview
                self.preview_png = png_bytes(picture, self.preview_size)
                self._shown = picture
                self.preview_step = at
                self.preview_caption = f"live preview · step {at} of {self.total_steps} · loss {loss:.4g}"
                self._preview = None

    # ------------------------------------------------------------------ finished runs
    def show(self, history) -> None:
        """Show a finished run: a :class:`~stylegallery.Stylization` or its ``history`` (list of dicts)."""
        stylization = history if hasattr(history, "history") else None
        records = stylization.history if stylization is not None else list(history)
        self._reset(int(records[-1]["step"]) if records else 0)
        b = self._buffer
        for h in records:
            b["steps"].append(int(h["step"]))
            b["total"].append(float(h["total"]))
            b["content"].append(float(h["content"]))
            b["style"].append(float(h["style"]))
            for region, value in h.get("style_per_region", {}).items():
                b["regions"].setdefault(str(region), []).append(float(value))
        self._flush(b["steps"][-1] if b["steps"] else 0)
        if stylization is not None:
            self.total_steps = stylization.total_steps
            self._show_image(stylization)
        self.running = False
        stopped = stylization is not None and stylization.stopped_early
        self.status = f"{'stopped early:' if stopped else 'finished:'} {self._span()}"

    def _show_image(self, stylization: Stylization) -> None:
        """The result's VAE-decoded image in place of the live preview."""
        step = stylization.last_step
        with self.hold_sync():
            self.preview_png = png_bytes(stylization.image, self.preview_size)
            self._shown = stylization.image
            self.preview_step = step
            self.preview_caption = f"result (VAE decode) · step {step}"

    @property
    def history(self) -> list[dict]:
        """The recorded steps as dicts (like :attr:`Stylization.history`)."""
        b = self._buffer
        # zip: a step the run's thread is recording now (some of its lists longer by one) is left out
        return [
            dict(step=s, total=total, content=content, style=style,
                 style_per_region={k: v[i] for k, v in b["regions"].items() if i < len(v) and v[i] is not None})
            for i, (s, total, content, style) in enumerate(zip(b["steps"], b["total"], b["content"], b["style"]))
        ]

    # ------------------------------------------------------------------ pictures
    def _figure(self):
        """The loss curves as shown, with the preview shown beside them (at its full resolution)."""
        picture = None if self._shown is None or not self.preview_png else to_image(self._shown)
        return _loss_figure(self.history, picture, self.preview_caption, self.status, self.log_scale)

    def _picture(self):
        if not self._buffer["steps"]:
            raise StyleGalleryError("this monitor has no steps yet: run stylize with it, or show() a result")
        return self._figure()

    def _picture_name(self) -> str:
        return file_name("loss curves")

    def _repr_png_(self) -> bytes:
        return figure_png(self._figure())


def _loss_figure(history: list[dict], picture, caption: str, status: str, log_scale: bool):
    """Loss curves (``stylegallery.plot.loss_curves``, on a log scale if asked) with ``picture`` (a PIL image or
    None) beside them."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0 if picture is None else 9.0, 3.4), layout="constrained")
    axes = [fig.subplots(1, 1)] if picture is None else fig.subplots(1, 2, width_ratios=[2.2, 1])
    plot.loss_curves(history, ax=axes[0])
    if log_scale and history:
        axes[0].set_yscale("log")
        axes[0].set_ylabel("loss (log scale)")
    fig.suptitle(status, fontsize=9)
    if picture is not None:
        side = axes[1]
        side.imshow(picture)
        side.set_axis_off()
        side.set_title(caption, fontsize=8)
    return fig
