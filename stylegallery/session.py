"""A stylization session: every stage's settings and result for one content image, re-running only what changed."""

from __future__ import annotations

import time
from pathlib import Path

from .errors import StyleGalleryError
from .pipeline import StyleGallery
from .results import Inversion, Matching, Prepared, Segmentation, Stylization
from .settings import STAGE_SETTINGS, STAGES, Setting

RESULT_TYPES = dict(zip(STAGES, (Prepared, Inversion, Segmentation, Matching, Stylization)))


class Session:
    """Settings and results of the five stages for one content image and its references.

    Changing a stage's settings (:meth:`set`) or editing its result (:meth:`replace`) marks that stage and every
    later one stale; :meth:`run` re-runs only the stale stages up to the one asked for. A stale stylization
    can be refined from the last result instead of started over (``run(refine=True)``).
    """

    def __init__(self, pipe: StyleGallery, content, styles, **settings):
        self.pipe = pipe
        self.content, self.styles = content, list(styles)
        self.settings: dict[str, dict] = {stage: {} for stage in STAGES}
        self.results: dict[str, object] = {stage: None for stage in STAGES}
        self.timings: dict[str, float] = {}
        self.last_stylization: Stylization | None = None  # the latest stylize result, kept when it goes stale
        self.last_run: str = ""  # how the latest stylize ran: "started over" or "refined from the last result (...)"
        self.set(**settings)

    @staticmethod
    def parameters(stage: str) -> dict[str, Setting]:
        """The settings a stage takes (its runtime options, such as ``progress``, aside), with their defaults."""
        return STAGE_SETTINGS[stage].recorded

    def stage_of(self, name: str) -> str:
        """Which stage a setting belongs to."""
        for stage in STAGES:
            if name in self.parameters(stage):
                return stage
        raise StyleGalleryError(f"unknown setting {name!r}")

    def value(self, name: str):
        """Current value of a setting (its default unless set)."""
        stage = self.stage_of(name)
        return self.settings[stage].get(name, self.parameters(stage)[name].default)

    def set(self, **settings) -> list[str]:
        """Change settings; returns the stages now stale. Setting a value to what it already is changes nothing."""
        first = None
        for name, value in settings.items():
            stage = self.stage_of(name)
            if _same(self.value(name), value):
                continue
            self.settings[stage][name] = value
            first = stage if first is None or STAGES.index(stage) < STAGES.index(first) else first
        if first is not None:
            self._invalidate(first)
        return self.stale

    def use_preset(self, name: str | None) -> list[str]:
        """Switch to a fast preset (``fast``, ``lcm``, ``hyper-sd``: its LoRA, scheduler, steps, iters, lr and
        c_ratio; see :meth:`StyleGallery.use_preset`) or, with ``None``, back to the paper's settings without
        a LoRA. Returns the stages now stale."""
        names = ("steps", "iters", "lr", "c_ratio", "scheduler")
        if name is None:
            self.pipe.unload_lora_weights()
            before = {n: self.value(n) for n in names}
            for n in names:
                self.settings["stylize"].pop(n, None)
            if any(not _same(before[n], self.value(n)) for n in names):
                self._invalidate("stylize")
            return self.stale
        return self.set(**self.pipe.use_preset(name))

    def replace(self, stage: str, result) -> list[str]:
        """Put an edited result in place (e.g. merged regions, overridden matches); later stages become stale."""
        if not isinstance(result, RESULT_TYPES[stage]):
            raise StyleGalleryError(f"a {stage} result must be a {RESULT_TYPES[stage].__name__}")
        segmentation = self.results["segment"]
        if stage == "match" and segmentation is not None and result.score.shape != (
            segmentation.n_regions(0), sum(segmentation.n_regions(i) for i in range(1, len(segmentation.labels)))
        ):
            raise StyleGalleryError("this matching belongs to another segmentation: run match again")
        self.results[stage] = result
        later = STAGES.index(stage) + 1
        if later < len(STAGES):
            self._invalidate(STAGES[later])
        return self.stale

    def _invalidate(self, stage: str) -> None:
        for later in STAGES[STAGES.index(stage):]:
            self.results[later] = None

    def _current(self, stage: str) -> bool:
        """Whether ``stage`` has a result that still holds: a stylization made with another LoRA (the pipe's
        changed, e.g. by another session's preset) does not."""
        result = self.results[stage]
        if stage == "stylize" and result is not None:
            return result.settings.get("model", self.pipe.stylize_model) == self.pipe.stylize_model
        return result is not None

    @property
    def stale(self) -> list[str]:
        """Stages without a current result, in order."""
        return [stage for stage in STAGES if not self._current(stage)]

    def _inputs(self, stage: str) -> tuple:
        if stage == "prepare":
            return (self.content, self.styles)
        return tuple(self.results[s] for s in STAGES[: STAGES.index(stage)])

    def pending(self, until: str = "stylize", refine: bool = False) -> list[str]:
        """The stages :meth:`run` would run: the stale ones up to ``until`` and, with ``refine``, a stylization that
        stopped early (it resumes where it stopped)."""
        if until not in STAGES:
            raise StyleGalleryError(f"unknown stage {until!r}; stages are {', '.join(STAGES)}")
        todo = [stage for stage in self.stale if STAGES.index(stage) <= STAGES.index(until)]
        stopped = self.results["stylize"] is not None and self.results["stylize"].stopped_early
        if refine and until == "stylize" and stopped and "stylize" not in todo:
            todo.append("stylize")
        return todo

    def run(self, until: str = "stylize", *, progress: bool = True, callback=None, on_stage=None,
            refine: bool = False, start_step: int | None = None, preview_every: int = 0, preview: str = "linear",
            window_callback=None):
        """Run the stale stages up to ``until`` and return its result.

        ``refine=True``: a stale stylization continues from :attr:`last_stylization` (warm re-run, see
        :meth:`StyleGallery.stylize`'s ``init`` and ``start_step``) instead of starting over, and one stopped
        early resumes where it stopped; :attr:`last_run` says which happened. ``callback``, ``preview_every``,
        ``preview`` and ``window_callback`` (each window of a refinement at ``output_size``) go to stylize;
        ``on_stage(stage, result, seconds)`` is called after each stage that ran.
        """
        for stage in self.pending(until, refine):
            kwargs = dict(self.settings[stage])
            if "progress" in STAGE_SETTINGS[stage]:
                kwargs["progress"] = progress
            if stage == "stylize":
                kwargs.update(callback=callback, preview_every=preview_every, preview=preview,
                              window_callback=window_callback)
                warm = refine and self.last_stylization is not None
                if warm:
                    kwargs.update(init=self.last_stylization, start_step=start_step)
            start = time.perf_counter()
            self.results[stage] = getattr(self.pipe, stage)(*self._inputs(stage), **kwargs)
            self.timings[stage] = time.perf_counter() - start
            if stage == "stylize":
                self.last_stylization = self.results[stage]
                self.last_run = _describe(self.results[stage]) if warm else (
                    "started over" + (" (no earlier result to refine)" if refine else ""))
            if on_stage is not None:
                on_stage(stage, self.results[stage], self.timings[stage])
        return self.results[until]

    def save(self, folder) -> Path:
        """Write every finished stage's result as ``folder/<stage>.safetensors``."""
        folder = Path(folder)
        for stage, result in self.results.items():
            if result is not None:
                result.save(folder / f"{stage}.safetensors")
        return folder

    def load(self, folder) -> list[str]:
        """Read the results saved by :meth:`save` (stopping at the first missing stage); returns what is stale."""
        for stage in STAGES:
            path = Path(folder) / f"{stage}.safetensors"
            if not path.is_file():
                self._invalidate(stage)
                break
            self.results[stage] = RESULT_TYPES[stage].load(path)
        if self.results["stylize"] is not None:
            self.last_stylization = self.results["stylize"]
        return self.stale

    def export_html(self, path, *, overwrite: bool = False) -> Path:
        """Write the whole run as one self-contained HTML page (pictures embedded, no network): regions, matches,
        losses, attention maps, per-region scores, a before/after slider and every setting
        (:func:`stylegallery.tools.session_page.export_session`). The session must have run to the end; an existing
        file is replaced only with ``overwrite=True``. Returns the path."""
        from .tools.session_page import export_session

        return export_session(self, path, overwrite=overwrite)

    prepared = property(lambda self: self.results["prepare"])
    inversion = property(lambda self: self.results["invert"])
    segmentation = property(lambda self: self.results["segment"])
    matching = property(lambda self: self.results["match"])
    stylization = property(lambda self: self.results["stylize"])


def _describe(stylization: Stylization) -> str:
    first, steps = stylization.settings["start_step"], stylization.settings["steps"]
    return f"refined from the last result (timesteps {first + 1} to {steps} of {steps})"


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except (ValueError, TypeError, RuntimeError):  # arrays and tensors: compare by identity
        return a is b
