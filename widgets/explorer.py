"""StageExplorer: one panel per stage with its main settings, a Run button, progress and pictures."""

from __future__ import annotations

import html

import ipywidgets as W
import numpy as np
from PIL import Image

from stylegallery import plot
from stylegallery.errors import StyleGalleryError
from stylegallery.models.presets import get_preset
from stylegallery.session import Session
from stylegallery.settings import STAGES
from stylegallery.stages.stylize import REFINE_FRACTION

from .shared.display import StaticReprMixin
from .shared.pictures import montage, overlay, png_bytes
from .shared.runs import RUNNING, BackgroundRun, check_idle, model_lock
from .attention_view import AttentionView
from .compare import Compare
from .loss_monitor import LossMonitor
from .mask_painter import MaskPainter
from .match_matrix import MatchMatrix
from .region_view import RegionView
from .stage_controls import PAPER, STYLE, TITLES, badge, current_preset, preset_options, stage_controls

MATCH_TABS = ("match matrix", "attention map", "style strength")
SEGMENT_TABS = ("regions", "paint")

class StageExplorer(StaticReprMixin, W.VBox):
    """Step through StyleGallery stage by stage: one fold per stage (the running or first stale one open) with
    its main settings, a Run button, a progress bar and its pictures (images, features, RegionViews,
    MatchMatrix, LossMonitor, Compare).

    Changing a setting marks that stage and the later ones stale (badge); *Run* in a fold runs the stale
    stages up to that one, *Run all* up to stylize. Edits in the pictures (merged regions, another k,
    overridden matches) go into the session and mark the later stages stale too. The stages run in a worker
    thread, so the kernel keeps reading the widgets: *Stop* in the loss monitor ends stylize after the current
    step and keeps that result. Meanwhile the controls are locked and edits of the session are refused;
    :meth:`wait` waits for the run (``background=False`` runs on the kernel's thread instead: Stop then has
    no effect). ``StageExplorer(pipe, content, styles, **settings)`` or ``StageExplorer(session)``.

    The stylize fold also has a preset control (the paper's settings, or a fast LoRA preset: :meth:`use_preset`)
    and, besides *Start over*, *Refine last result*: a stale stylization (after an override, another
    ``c_ratio``...) continues from the last result's latent over its last timesteps (``run(refine=True)``).
    ``preview_every``, ``preview``: the loss monitor's picture of the latent during stylize, every N steps (0:
    none), made by ``"linear"`` (the default: next to free), ``"tiny-vae"`` or ``"vae"``.
    """

    def __init__(self, pipe, content=None, styles=None, *, preview_every: int = 1, preview: str = "linear",
                 background: bool = True, **settings):
        if isinstance(pipe, Session):
            session = pipe
            if settings:
                session.set(**settings)
        else:
            if content is None or styles is None:
                raise StyleGalleryError("StageExplorer(pipe, content, styles, **settings) needs a content image and styles")
            session = Session(pipe, content, styles, **settings)
        self.session = session
        self.preview_every, self.preview = preview_every, preview
        self.background = background
        self._worker = BackgroundRun("stylegallery-explorer")
        self._disabled_before: dict[str, bool] = {}
        self.last_error: BaseException | None = None
        self.ran: list[str] = []  # stages run by the last Run
        self._shown: dict[str, int] = {}
        self._running: str | None = None
        self._errors: dict[str, str] = {}
        self._quiet = False  # True while the preset control is set to follow the session
        self._change_callbacks: list = []

        self.monitor = LossMonitor()
        self.region_views: list[RegionView] = []
        self.painter: MaskPainter | None = None  # the segment fold's second tab: paint an image's regions
        self.segment_tabs: W.Tab | None = None
        self.match_matrix: MatchMatrix | None = None
        self.attention_view: AttentionView | None = None
        self.match_tabs: W.Tab | None = None  # the match fold's tabs: the matrix, the attention view, the strengths
        self.strength_sliders: list[W.FloatSlider] = []  # region_strength, one per content region
        self.strength_box = W.VBox()
        self.compare: Compare | None = None

        self.controls: dict[str, dict[str, W.Widget]] = {}
        self.headers: dict[str, W.HTML] = {}
        self.buttons: dict[str, W.Button] = {}
        self.progress: dict[str, W.IntProgress] = {}
        self.messages: dict[str, W.HTML] = {}
        self.pictures: dict[str, W.Box] = {}
        self.refine_button = W.Button(description="Refine last result", icon="repeat", layout=W.Layout(width="160px"))
        self.refine_button.on_click(lambda _b: self.run("stylize", refine=True))
        self.preset = W.Dropdown(options=preset_options(), value=current_preset(session),
                                 description="preset", style=STYLE, layout=W.Layout(width="250px"))
        self.preset.observe(lambda change: self._preset_chosen(change["new"]), names="value")
        panels = []
        for stage, controls in stage_controls(session).items():
            self.controls[stage] = dict(controls)
            for name, widget in controls:
                widget.observe(lambda change, name=name: self._setting_changed(name, change["new"]), names="value")
            self.headers[stage] = W.HTML()
            if stage == "stylize":
                button = W.Button(description="Start over", icon="play", layout=W.Layout(width="110px"),
                                  tooltip="run the stale stages up to stylize, stylize from the inverted content")
            else:
                button = W.Button(description="Run", icon="play", tooltip=f"run the stale stages up to {stage}",
                                  layout=W.Layout(width="80px"))
            button.on_click(lambda _b, stage=stage: self.run(stage))
            self.buttons[stage] = button
            self.progress[stage] = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="160px"))
            self.messages[stage] = W.HTML()
            self.pictures[stage] = W.HBox(layout=W.Layout(flex_flow="row wrap", align_items="flex-start"))
            if stage == "stylize":  # a refinement at the output size: its windows, one step's worth
                self.window_progress = W.IntProgress(value=0, min=0, max=1, description="windows", style=STYLE,
                                                     layout=W.Layout(width="180px", display="none"))
                self.window_progress.add_class("sg-windows-progress")
            buttons = [button, self.refine_button] if stage == "stylize" else [button]
            extra = [self.preset] if stage == "stylize" else []
            bars = [self.progress[stage], self.window_progress] if stage == "stylize" else [self.progress[stage]]
            head = W.HBox(buttons + bars + [self.headers[stage]] + extra + [w for _, w in controls],
                          layout=W.Layout(align_items="center", flex_flow="row wrap"))
            panels.append(W.VBox([head, self.messages[stage], self.pictures[stage]]))
        self.panels = dict(zip(STAGES, panels))
        self.folds = W.Accordion(children=panels)
        self.pictures["stylize"].children = [self.monitor]
        run_all = W.Button(description="Run all", icon="forward", button_style="primary",
                           tooltip="run every stale stage up to stylize")
        run_all.on_click(lambda _b: self.run("stylize"))
        self.run_all_button = run_all
        self.status = W.HTML()
        super().__init__([W.HBox([run_all, self.status], layout=W.Layout(align_items="center")), self.folds])
        self.add_class("sg-explorer")
        self._refresh()
        self.unfold(session.stale[0] if session.stale else STAGES[-1])

    def on_change(self, callback) -> None:
        """Call ``callback()`` whenever the explorer has shown a change of its session (a setting, an edit, a stage
        started or done) and when a run has ended; during a run it is called in the run's thread."""
        self._change_callbacks.append(callback)

    def _changed(self) -> None:
        for callback in list(self._change_callbacks):
            callback()

    @property
    def running(self) -> str | None:
        """The stage running now, or None."""
        return self._running

    def unfold(self, stage: str) -> None:
        """Unfold the panel of ``stage`` (and fold the open one)."""
        self.folds.selected_index = STAGES.index(stage)

    # ------------------------------------------------------------------ settings and staleness
    @property
    def stale(self) -> list[str]:
        return self.session.stale

    def _setting_changed(self, name: str, value) -> None:
        stage = self.session.stage_of(name)
        try:
            self.session.set(**{name: value})
            self._errors.pop(stage, None)
        except StyleGalleryError as exc:
            self._errors[stage] = str(exc)
        self._refresh()
        self._refresh_attention()  # stale matches, or the timesteps of other stylize settings

    def set(self, **settings) -> list[str]:
        """Change settings like the controls do (the controls follow); returns the stale stages."""
        check_idle(self.session)
        for name, value in settings.items():
            stage = self.session.stage_of(name)
            widget = self.controls.get(stage, {}).get(name)
            if widget is not None and widget.value != value:
                widget.value = value  # the observer sets it in the session
            else:
                self.session.set(**{name: value})
        if "region_strength" in settings and self.session.matching is not None:
            self._strength_controls(self.session.matching)  # the sliders follow
        self._refresh()
        self._refresh_attention()
        return self.stale

    def use_preset(self, name: str | None) -> list[str]:
        """Switch stylize to a fast preset (``"lcm"``, ``"hyper-sd"``) or back to the paper's settings (None), as
        the preset control does (see :meth:`Session.use_preset`); returns the stale stages."""
        check_idle(self.session)
        value = PAPER if name is None else get_preset(name).name
        if self.preset.value != value:
            self.preset.value = value  # the observer switches
        else:
            self._preset_chosen(value)
        if "stylize" in self._errors:
            raise StyleGalleryError(self._errors["stylize"])
        return self.stale

    def _preset_chosen(self, value: str) -> None:
        """Load or unload the preset's LoRA and set its settings; the stylize controls follow."""
        if self._quiet:  # the control follows the session
            return
        error = None
        lock = model_lock(self.session.pipe)  # the LoRA goes into the model, which no run may be using
        if not lock.acquire(blocking=False):
            error = "another run on this model is in progress: choose the preset when it has finished"
        else:
            try:
                self.session.use_preset(None if value == PAPER else value)
            except StyleGalleryError as exc:  # e.g. the preset's LoRA is not available offline
                error = str(exc)
            finally:
                lock.release()
        self._quiet = True
        try:
            self.preset.value = current_preset(self.session)
            for name, widget in self.controls["stylize"].items():
                widget.value = self.session.value(name)  # the session has it already: nothing changes there
        finally:
            self._quiet = False
        if error is None:
            self._errors.pop("stylize", None)
        else:
            self._errors["stylize"] = error
        self._refresh()
        self._refresh_attention()

    def _state(self, stage: str, stale: list[str]) -> tuple[str, str]:
        """A stage's badge kind and text (``stale``: the session's stale stages)."""
        result = self.session.results[stage]
        if self._running == stage:
            return "running", "running…"
        if stage in self._errors:
            return "error", "error"
        if stage in stale:
            return "stale", "stale"
        text = "done"
        if stage == "stylize" and result.stopped_early:
            text = f"stopped at step {result.last_step} of {result.total_steps}"
        seconds = self.session.timings.get(stage)
        return "done", text + (f" · {seconds:.1f} s" if seconds is not None else "")

    def _refresh(self) -> None:
        """Titles, badges, messages and the pictures of every finished stage whose result changed."""
        session = self.session
        stale = session.stale
        for i, stage in enumerate(STAGES):
            kind, text = self._state(stage, stale)
            self.headers[stage].value = badge(kind, text)
            if self.folds.get_title(i) != f"{TITLES[stage]} · {text}":
                self.folds.set_title(i, f"{TITLES[stage]} · {text}")
            error = self._errors.get(stage)
            if error:
                self.messages[stage].value = f'<span style="color:#b71c1c">⚠ {html.escape(error)}</span>'
            else:
                self.messages[stage].value = self._note(stage)
            result = session.results[stage]
            if result is not None and self._shown.get(stage) != id(result):
                self._show(stage, result)
                self._shown[stage] = id(result)
            if self._running != stage and stage not in self._errors:
                bar = self.progress[stage]
                stopped = stage == "stylize" and result is not None and result.stopped_early
                bar.value = (result.last_step if stopped else bar.max) if result is not None else 0
                bar.bar_style = ("warning" if stopped else "success") if result is not None else ""
        self.status.value = "&nbsp;" + _summary(session, stale)
        self._refine_state()
        self._changed()

    def _note(self, stage: str) -> str:
        """The stylize fold's line under its controls: how its current result was made."""
        session = self.session
        result = session.stylization
        if stage != "stylize" or result is None or result is not session.last_stylization or not session.last_run:
            return ""
        return f'<span style="font-size:12px">Last run: {html.escape(session.last_run)}.</span>'

    def _refine_state(self) -> None:
        """*Refine last result* works on a stale stylization with an earlier result to continue from."""
        button = self.refine_button
        if self.session in RUNNING:
            button.disabled = True
        elif self.session.last_stylization is None:
            button.disabled, button.tooltip = True, "no earlier result to refine: start over first"
        elif self.session.stylization is not None and not self.session.stylization.stopped_early:
            button.disabled, button.tooltip = True, "stylize is up to date: change a setting or a match to refine it"
        else:
            button.disabled = False
            button.tooltip = ("continue from the last result's latent over its last timesteps (faster than starting "
                              "over); runs the other stale stages first")

    # ------------------------------------------------------------------ running
    def run(self, until: str = "stylize", *, background: bool | None = None, refine: bool = False) -> list[str]:
        """Run the stale stages up to ``until`` (what a Run button does).

        ``refine=True``: a stale stylization continues from the last result (what *Refine last result* does;
        :attr:`Session.last_run` says whether it did, or started over for want of one).

        In the background (the default; ``background`` overrides the explorer's setting) the stages run in a
        worker thread and this returns an empty list at once: :meth:`wait` returns the stages that ran. On the
        kernel's thread it returns them when done.
        """
        if until not in STAGES:
            raise StyleGalleryError(f"unknown stage {until!r}; stages are {', '.join(STAGES)}")
        if self.busy:
            self.status.value = "&nbsp;⚠ a run is in progress"
            return []
        background = self.background if background is None else background
        self._lock(True)
        self.ran = []
        self._worker.start(lambda: self._run_stages(until, refine), self.session.pipe, session=self.session,
                           background=background, waiting=self._waiting, finished=self._finished)
        return [] if background else self.ran

    @property
    def busy(self) -> bool:
        """True while stages run in the background."""
        return self._worker.busy

    def wait(self, timeout: float | None = None) -> list[str]:
        """Wait for a background run to finish (at most ``timeout`` seconds); returns the stages it ran. In a
        notebook cell prefer ``await explorer.wait_async()``: Stop then works while the cell waits."""
        self._worker.wait(timeout)
        return self.ran

    async def wait_async(self, timeout: float | None = None) -> list[str]:
        """:meth:`wait` for a notebook cell (``ran = await explorer.wait_async()``): the kernel reads the widgets'
        messages meanwhile, so a click on Stop lands, under Run All too."""
        await self._worker.wait_async(timeout)
        return self.ran

    def _lock(self, locked: bool) -> None:
        """Disable the buttons and controls during a run (and give the controls back their own state after)."""
        for stage in STAGES:
            self.buttons[stage].disabled = locked
            for name, widget in self.controls[stage].items():
                if locked:
                    self._disabled_before[name] = widget.disabled
                    widget.disabled = True
                else:
                    widget.disabled = self._disabled_before.get(name, False)
        for slider in self.strength_sliders:
            slider.disabled = locked
        self.run_all_button.disabled = locked
        self.preset.disabled = locked
        if locked:
            self.refine_button.disabled = True
        else:
            self._refine_state()

    def _waiting(self) -> None:
        self.status.value = "&nbsp;waiting for another run on this model…"

    def _finished(self) -> None:
        """After a run, in its thread, the model released: the controls come back, the attention view follows, and a
        failure outside a stage (e.g. drawing its pictures) shows in the explorer, never only in a log."""
        try:
            self._refresh_attention()
        except Exception as exc:  # noqa: BLE001 - shown below like any other failure of the run
            self._worker.error = self._worker.error or exc
        error = self._worker.error
        if error is not None:
            self.last_error = error
            self._running = None
            self.status.value = f'&nbsp;<span style="color:#b71c1c">⚠ {html.escape(f"{type(error).__name__}: {error}")}</span>'
        self._lock(False)
        self._changed()

    def _run_stages(self, until: str, refine: bool) -> list[str]:
        session = self.session
        todo = session.pending(until, refine)
        for stage in todo:
            self._errors.pop(stage, None)
        for stage in todo:
            self._running = stage
            bar = self.progress[stage]
            bar.bar_style = "info"
            bar.max, bar.value = 1, 0
            self.unfold(stage)
            self._refresh()
            try:
                if stage == "stylize":
                    self._run_stylize(refine)
                else:
                    session.run(stage, progress=False)
            except Exception as exc:  # shown in the panel; the exception stays available as last_error
                self.last_error = exc
                self._errors[stage] = str(exc) if isinstance(exc, StyleGalleryError) else f"{type(exc).__name__}: {exc}"
                bar.bar_style = "danger"
                self._running = None
                self._refresh()
                return self.ran
            self.ran.append(stage)
            self._running = None
            self._refresh()
        return self.ran

    def _run_stylize(self, refine: bool) -> None:
        session = self.session
        iters = session.value("iters")
        steps = session.value("steps") * iters
        # with an output size, the last timesteps again at that size, window by window (the windows bar)
        refined = 0
        if session.value("output_size") is not None:
            refined = (session.value("refine_steps") or max(1, round(session.value("steps") * REFINE_FRACTION))) * iters
        bar, windows = self.progress["stylize"], self.window_progress
        bar.max = steps + refined
        windows.value, windows.layout.display = 0, None if refined else "none"
        monitor = self.monitor
        monitor.start(steps)
        self.pictures["stylize"].children = [monitor]  # the Compare of an earlier result comes back with the new one

        def callback(info):
            done = info.step if info.phase == "working size" else steps + info.step - (steps - refined)
            bar.value = min(done, bar.max)
            return monitor.callback(info)

        def window_done(index: int, count: int) -> None:
            windows.max, windows.value = count, index + 1

        session.run("stylize", progress=False, callback=callback, refine=refine, preview_every=self.preview_every,
                    preview=self.preview, window_callback=window_done)

    # ------------------------------------------------------------------ pictures
    def _on_edit(self, stage: str, _result) -> None:
        for view in self.region_views:
            if view.segmentation is not self.session.segmentation and self.session.segmentation is not None:
                view.refresh()
        if self.match_matrix is not None and self.session.matching is not None:
            if self.match_matrix.matching is not self.session.matching:
                self.match_matrix.refresh()
        self._refresh()
        self._refresh_attention()

    def _strength_controls(self, matching) -> None:
        """The match fold's style strength tab: a slider per content region, the weight of its style loss
        (``region_strength``, ours: 0 keeps the content, 1 the paper's); a change makes stylize stale."""
        strengths = self.session.value("region_strength") or {}
        if len(self.strength_sliders) != len(matching.matches):
            self.strength_sliders = []
            for region in range(len(matching.matches)):
                slider = W.FloatSlider(min=0.0, max=3.0, step=0.05, description=f"region {region}",
                                       continuous_update=False, style=STYLE, readout_format=".2f",
                                       layout=W.Layout(width="300px"))
                slider.add_class("sg-strength")
                slider.observe(lambda _change: self._strength_changed(), names="value")
                self.strength_sliders.append(slider)
            note = W.HTML('<span style="font-size:12px">The weight of each content region\'s style loss (ours): 0 '
                          'keeps the content there, 1 is the paper\'s, above 1 pulls harder toward its match. A '
                          'change makes stylize stale.</span>', layout=W.Layout(width="420px"))
            self.strength_box.children = [note, *self.strength_sliders]
        self._quiet = True
        try:
            for region, slider in enumerate(self.strength_sliders):
                slider.value = float(strengths.get(region, 1.0))
        finally:
            self._quiet = False

    def _strength_changed(self) -> None:
        if self._quiet:  # the sliders follow the session
            return
        chosen = {r: s.value for r, s in enumerate(self.strength_sliders) if s.value != 1.0}
        self._setting_changed("region_strength", chosen or None)

    def _painter_panel(self) -> W.VBox:
        """The segment fold's paint tab: which image to paint, and the :class:`MaskPainter` (its *apply* puts the
        painted regions into the session and matches again)."""
        names = plot.image_names(self.session.prepared.names)
        self.painter = MaskPainter(self.session, index=0, width=240)
        self.painter.on_edit(self._on_edit)
        chooser = W.Dropdown(options=[(name, i) for i, name in enumerate(names)], value=0, description="paint",
                             style=STYLE, layout=W.Layout(width="220px"))
        chooser.observe(lambda change: self.painter.show(change["new"]), names="value")
        hint = W.HTML('<span style="font-size:12px">Drag over the picture: the brush paints the cells it passes, the '
                      'lasso fills the loop, erase gives cells their regions back. <i>apply and match</i> puts the '
                      'regions into the session and runs the match stage again.</span>',
                      layout=W.Layout(width="220px"))
        return W.HBox([self.painter, W.VBox([chooser, hint])], layout=W.Layout(align_items="flex-start"))

    def _refresh_attention(self) -> None:
        """The attention view follows the session's regions, matches and stylize settings (it says when the
        matches are stale); a run holding the model defers its maps until this is called after the run."""
        if self.attention_view is not None:
            self.attention_view.refresh()

    def _show(self, stage: str, result) -> None:
        session = self.session
        box = self.pictures[stage]
        if stage == "prepare":
            names = plot.image_names(result.names)
            box.children = [_figure(result.image(i), names[i]) for i in range(len(result.names))]
        elif stage == "invert":
            names = plot.image_names(session.prepared.names)
            box.children = [_figure(_feature_picture(result.features[i]), names[i] + " features (PCA)")
                            for i in range(len(result.features))]
        elif stage == "segment":
            if len(self.region_views) == len(result.labels):
                for view in self.region_views:
                    view.refresh()
                self.painter.show(self.painter.index)
            else:
                self.region_views = [RegionView(session, index=i, width=176) for i in range(len(result.labels))]
                for view in self.region_views:
                    view.on_edit(self._on_edit)
                self.segment_tabs = W.Tab(children=[W.HBox(self.region_views, layout=W.Layout(flex_flow="row wrap")),
                                                    self._painter_panel()])
                for i, title in enumerate(SEGMENT_TABS):
                    self.segment_tabs.set_title(i, title)
                self.segment_tabs.add_class("sg-segment-tabs")  # less padding: the fold fits a laptop screen
                box.children = [self.segment_tabs]
        elif stage == "match":
            if self.match_matrix is None:
                self.match_matrix = MatchMatrix(session)
                self.match_matrix.on_edit(self._on_edit)
                # where a content point attends under the style loss (in a run's worker the model is busy: its
                # maps come when the run has released the model, see _run)
                self.attention_view = AttentionView(session, width=192, reference_width=144)
                # one at a time: fits a screen
                self.match_tabs = W.Tab(children=[self.match_matrix, self.attention_view, self.strength_box])
                for i, title in enumerate(MATCH_TABS):  # set_title: ipywidgets 7 (Colab) has no titles trait
                    self.match_tabs.set_title(i, title)
                box.children = [self.match_tabs]
            else:
                self.match_matrix.refresh()
                if session not in RUNNING:  # a run refreshes it when it has released the model
                    self._refresh_attention()
            self._strength_controls(result)
        elif stage == "stylize":
            # the monitor keeps the curves of the phase it saw last: the refinement at the output size, if any
            last_phase = result.history if result.output_history is None else result.output_history
            if len(self.monitor.steps) != len(last_phase):  # a result not made by this explorer's run
                self.monitor.show(result)
            self.monitor.preview_png, self.monitor.preview_caption = b"", ""  # the result is beside it, in the Compare
            if self.compare is None:
                self.compare = Compare.from_session(session, width=256)
            else:
                prepared = session.prepared
                self.compare.update(prepared.image(0), result.image, [prepared.image(i) for i in range(1, len(prepared.names))],
                                    style_names=plot.image_names(prepared.names)[1:])
            box.children = [self.monitor, self.compare]

    # ------------------------------------------------------------------ static picture
    def _repr_png_(self) -> bytes:
        session = self.session
        rows = []
        prepared = session.prepared
        if prepared is not None:
            images = [prepared.image(i) for i in range(len(prepared.names))]
            rows.append(montage(images, height=160))
            if session.segmentation is not None:
                rows.append(montage([overlay(im, session.segmentation.labels[i], 0.5) for i, im in enumerate(images)], height=160))
            if session.stylization is not None:
                rows.append(montage([images[0], session.stylization.image], height=200))
        if not rows:
            rows.append(_text_picture("StageExplorer: no stage has run yet (stale: " + ", ".join(session.stale) + ")"))
        width = max(r.width for r in rows)
        canvas = Image.new("RGB", (width, sum(r.height for r in rows) + 8 * (len(rows) - 1)), (255, 255, 255))
        y = 0
        for r in rows:
            canvas.paste(r, (0, y))
            y += r.height + 8
        return png_bytes(canvas, max_side=1200)


def _figure(image: Image.Image, caption: str, height: int = 160) -> W.VBox:
    width = max(1, round(image.width * height / image.height))
    picture = W.Image(value=png_bytes(image.resize((width, height), Image.Resampling.LANCZOS)), format="png",
                      layout=W.Layout(width=f"{width}px", height=f"{height}px"))
    return W.VBox([picture, W.HTML(f'<span style="font-size:11px">{html.escape(caption)}</span>')],
                  layout=W.Layout(margin="0 8px 0 0"))


def _feature_picture(features, side: int = 160) -> Image.Image:
    """The first three principal components of a (C, h, w) feature map as an RGB picture."""
    rgb = plot.pca_image(features)
    h, w = rgb.shape[:2]
    return Image.fromarray((rgb * 255).astype(np.uint8)).resize((side, round(side * h / w)), Image.Resampling.NEAREST)


def _text_picture(text: str) -> Image.Image:
    from PIL import ImageDraw

    image = Image.new("RGB", (max(200, 7 * len(text)), 28), (255, 255, 255))
    ImageDraw.Draw(image).text((6, 8), text, fill=(40, 40, 40))
    return image


def _summary(session: Session, stale: list[str]) -> str:
    """The explorer's status line: what is stale, or that everything is done (a stopped result says so)."""
    if stale:
        return f"stale: {', '.join(stale)}"
    result = session.stylization
    if result is not None and result.stopped_early:
        return f"the stylization is partial: stopped at step {result.last_step} of {result.total_steps}"
    return "all stages are up to date"
