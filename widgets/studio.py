"""Studio: the StageExplorer as an app for people who do not code (``stylegallery studio`` serves it with Voila).

Pictures come from uploads or the sample folder, two settings (size and steps) and one Run button start a session;
the explorer of that session then lets the user step through the stages, override matches and run again, and the
result and an HTML page of the session download from the browser.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import os
import re
import shutil
import tempfile
import warnings
import weakref
from pathlib import Path

import anywidget
import ipywidgets as W
import traitlets as t
from PIL import Image, ImageDraw, UnidentifiedImageError

import stylegallery
from stylegallery import Session, StyleGallery
from stylegallery.errors import StyleGalleryError
from stylegallery.images import load_image
from stylegallery.settings import STAGES
from stylegallery.tools.cli import STUDIO_ENVIRONMENT

from .explorer import StageExplorer
from .shared.display import CSS, IPYWIDGETS_MAJOR, StaticReprMixin, SyncGuard, esm
from .shared.pictures import montage, png_bytes, to_image
from .shared.runs import RUNNING, check_idle
from .stage_controls import STYLE

SIZES = (128, 256, 384, 512, 768)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
COLOURS = {"ready": "#333", "running": "#0d47a1", "done": "#1d6b2c", "error": "#b71c1c"}


def sample_pictures() -> list[Path]:
    """The pictures of the repository's ``data/`` folder beside the package (an editable install; an installed wheel
    has none), its label maps aside (they are region maps, not pictures)."""
    folder = Path(stylegallery.__file__).resolve().parent.parent / "data"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_labels"))


def read_picture(name: str, data: bytes) -> Image.Image:
    """The picture in an uploaded file's bytes, checked as the pipeline will read it; a clear error otherwise."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if not data:
            reason = "the file is empty"
        elif isinstance(exc, UnidentifiedImageError):
            reason = "it is not a picture, or not in a format this app reads"
        else:
            reason = f"it is damaged: {exc}"
        raise StyleGalleryError(f"{name} cannot be read as a picture ({reason}). Choose a PNG or JPEG file, or "
                                "re-export the picture as one.") from None
    return load_image(image, name)[0]  # too small a picture is refused here, with its name


def _uploads(value) -> list[tuple[str, bytes]]:
    """(file name, bytes) of each file of a FileUpload's value (ipywidgets 8: a tuple of dicts; 7: a dict by name)."""
    if isinstance(value, dict):
        return [(name, bytes(item["content"])) for name, item in value.items()]
    return [(item["name"], bytes(item["content"])) for item in value]


def _thumbnail(path: Path, caption: str, height: int = 96) -> W.VBox:
    image = load_image(path)[0]  # as the pipeline sees it: turned by its EXIF orientation, in RGB
    width = max(1, round(image.width * height / image.height))
    picture = W.Image(value=png_bytes(image.resize((width, height), Image.Resampling.LANCZOS)), format="png",
                      layout=W.Layout(width=f"{width}px", height=f"{height}px"))
    label = W.HTML(f'<span style="font-size:11px">{html.escape(caption)}</span>')
    return W.VBox([picture, label], layout=W.Layout(margin="0 10px 0 0"))


def _heading(text: str) -> W.HTML:
    return W.HTML(f'<h3 style="margin:14px 0 4px 0">{html.escape(text)}</h3>')


class Downloads(SyncGuard, anywidget.AnyWidget):
    """Two buttons: the result as a PNG and the session as one HTML page (:meth:`Session.export_html`, written by the
    kernel when clicked), both saved through the browser's download. Offered only while the session's
    stylization is current."""

    _esm = esm("studio.js")
    _css = CSS

    result_png = t.Bytes(b"").tag(sync=True)
    result_name = t.Unicode("result.png").tag(sync=True)
    ready = t.Bool(False).tag(sync=True)
    busy = t.Bool(False).tag(sync=True)
    status = t.Unicode("").tag(sync=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.session: Session | None = None
        self._result = None
        self.on_msg(self._on_message)

    def show(self, session: Session | None, running: bool = False) -> None:
        """Offer the current result of ``session`` (nothing while it runs or has none)."""
        self.session = session
        result = None if session is None or running else session.stylization
        if result is self._result:
            return
        self._result = result
        with self.hold_sync():
            self.result_png = b"" if result is None else png_bytes(result.image)
            self.result_name = f"{self._stem()}-stylized.png"
            self.ready = result is not None
            self.status = ""

    def _stem(self) -> str:
        names = self.session.prepared.names if self.session is not None and self.session.prepared is not None else []
        stem = Path(names[0]).stem if names else "stylegallery"
        return re.sub(r"[^\w.-]+", "_", stem) or "stylegallery"

    def page(self) -> tuple[str, bytes]:
        """The file name and bytes of the session's HTML page (:meth:`Session.export_html`, through a temporary file)."""
        if self.session is None or self.session.stylization is None:
            raise StyleGalleryError("there is no current result to export: run the stylization first")
        check_idle(self.session)
        name = f"{self._stem()}-stylegallery.html"
        with tempfile.TemporaryDirectory(prefix="stylegallery-page-") as folder:
            written = self.session.export_html(Path(folder) / name)
            return name, Path(written).read_bytes()

    def _on_message(self, _widget, content, _buffers) -> None:
        if not isinstance(content, dict) or content.get("type") != "page":
            return
        self.busy, self.status = True, "writing the page…"
        try:
            name, data = self.page()
        except Exception as exc:  # noqa: BLE001 - shown beside the button: a click must never fail silently
            self.status = f"⚠ the page could not be written: {exc}"
        else:
            self.send({"type": "page", "name": name}, [data])
            self.status = f"downloaded {name} ({len(data) / 2**20:.1f} MB)"
        finally:
            self.busy = False


class Studio(StaticReprMixin, W.VBox):
    """The app: choose a content picture and one or more style references (upload them, or pick samples), the size
    and the number of steps, press *Run*. The stages then run in the :class:`StageExplorer` shown below (progress
    here and in its folds); in it the user steps through the stages, overrides matches (a click in the match
    matrix) or changes settings, and runs again (*Run* here re-runs what changed, keeping the overrides, unless
    the pictures changed). *Download* buttons save the result (PNG) and an HTML page of the session.

    ``Studio(pipe, settings={"size": 256, "steps": 50})``: ``settings`` are the controls' starting values
    (``size``, ``steps``); ``samples``: the sample pictures offered (default: :func:`sample_pictures`).
    :meth:`from_environment` is what ``stylegallery studio``'s page runs. A model that failed to load is shown as
    ``error``: the app then explains it instead of running.
    """

    def __init__(self, pipe: StyleGallery | None, *, settings: dict | None = None, samples: list | None = None,
                 error: str = ""):
        self.pipe = pipe
        self.load_error = error
        self.content: Path | None = None
        self.references: list[Path] = []
        self.explorer: StageExplorer | None = None
        self._running = False
        self._error_before: BaseException | None = None
        self._folder = Path(tempfile.mkdtemp(prefix="stylegallery-studio-"))  # the uploaded files
        self._uploaded = 0
        weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)
        settings = settings or {}
        samples = sample_pictures() if samples is None else [Path(p) for p in samples]

        self.content_upload = W.FileUpload(accept="image/*", multiple=False, description="Upload content",
                                           layout=W.Layout(width="200px"))
        self.content_upload.observe(lambda change: self._uploaded_content(change["new"]), names="value")
        self.reference_upload = W.FileUpload(accept="image/*", multiple=True, description="Upload references",
                                             layout=W.Layout(width="200px"))
        self.reference_upload.observe(lambda change: self._uploaded_references(change["new"]), names="value")
        names = [(p.stem, p) for p in samples]
        if samples:
            self.content_samples = W.Dropdown(options=[("—", "")] + names, value="", description="or a sample",
                                              style=STYLE, layout=W.Layout(width="260px"))
            self.content_samples.observe(lambda change: self._picked_content(change["new"]), names="value")
            self.reference_samples = W.SelectMultiple(options=names, rows=min(6, len(names)), description="or samples",
                                                      style=STYLE, layout=W.Layout(width="260px"))
            self.reference_samples.observe(lambda change: self._picked_references(change["new"]), names="value")
            content_column = [self.content_upload, self.content_samples]
            reference_column = [self.reference_upload, self.reference_samples]
        else:
            self.content_samples = self.reference_samples = None
            none = W.HTML('<span style="font-size:12px">No sample pictures are available in this installation: '
                          'upload your own.</span>')
            content_column, reference_column = [self.content_upload, none], [self.reference_upload]
        hint = ('<span style="font-size:12px">The <b>content</b> is the photo to restyle; the <b>references</b> '
                'give the style (each region of the content takes the style of the most similar region among '
                'them). PNG or JPEG.</span>')
        self.thumbnails = W.HBox(layout=W.Layout(flex_flow="row wrap", align_items="flex-start", min_height="20px"))
        self.message = W.HTML()
        pictures = W.HBox([
            W.VBox([W.HTML("<b>Content picture</b>"), *content_column], layout=W.Layout(margin="0 24px 0 0")),
            W.VBox([W.HTML("<b>Style references</b>"), *reference_column]),
        ], layout=W.Layout(flex_flow="row wrap", align_items="flex-start"))

        size = settings.get("size", Session.parameters("prepare")["size"].default)
        steps = settings.get("steps", Session.parameters("stylize")["steps"].default)
        self.size = W.Dropdown(description="size", style=STYLE, layout=W.Layout(width="160px"))
        self.steps = W.IntSlider(min=1, max=300, description="steps", continuous_update=False, style=STYLE,
                                 layout=W.Layout(width="320px"))
        self._show_settings(size, steps)
        speed = W.HTML('<span style="font-size:12px">Larger pictures and more steps: a better result, and slower.'
                       '</span>')

        self.run_button = W.Button(description="Run", icon="play", button_style="primary",
                                   tooltip="run the stages up to the stylized result")
        self.run_button.add_class("sg-studio-run")
        self.run_button.on_click(lambda _b: self.run())
        self.progress = W.IntProgress(value=0, min=0, max=100, layout=W.Layout(width="240px"))
        self.status = W.HTML()
        self.status.add_class("sg-studio-status")
        self.downloads = Downloads()
        self.explorer_box = W.VBox()

        intro = ("<h2 style='margin:4px 0'>StyleGallery studio</h2><span style='font-size:13px'>Restyle a photo after "
                 "one or more pictures: choose them, press <b>Run</b>, then look inside each stage below, change a "
                 "match with a click in the match matrix, and run again.</span>")
        if pipe is not None:
            intro += f"<br><span style='font-size:11px;color:#666'>{html.escape(str(pipe.device_choice))}</span>"
            if pipe.test_models:
                intro += ("<br><span style='font-size:12px;color:#7a5600'>Tiny test models: the pictures show how "
                          "the method works, not a real stylization.</span>")
        super().__init__([
            W.HTML(intro),
            _heading("1 · Pictures"), W.HTML(hint), pictures, self.thumbnails, self.message,
            _heading("2 · Settings"), W.HBox([self.size, self.steps, speed], layout=W.Layout(align_items="center",
                                                                                          flex_flow="row wrap")),
            _heading("3 · Run"), W.HBox([self.run_button, self.progress, self.status],
                                        layout=W.Layout(align_items="center", flex_flow="row wrap")),
            self.downloads,
            self.explorer_box,
        ], layout=W.Layout(padding="0 8px"))
        self.add_class("sg-studio")
        if error:
            self._say("error", error)
            self.run_button.disabled = True
        else:
            self._say("ready", "Choose a content picture and at least one style reference.")

    @classmethod
    def from_environment(cls) -> "Studio":
        """The app of ``stylegallery studio``'s page: the model options and starting settings from the JSON in the
        environment variable ``STYLEGALLERY_STUDIO`` (without it: the default model and settings). The page shows no
        library output (the device chosen is in the app's header); a model that cannot be loaded is explained in
        the app."""
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        for library in (diffusers_logging, transformers_logging):  # no library chatter on the page
            library.set_verbosity_error()
            library.disable_progress_bar()
        try:
            config = json.loads(os.environ.get(STUDIO_ENVIRONMENT) or "{}")
        except json.JSONDecodeError as exc:
            return cls(None, error=f"{STUDIO_ENVIRONMENT} is not valid JSON ({exc}): start the app with "
                                   "stylegallery studio")
        settings = config.get("settings", {})
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                pipe = StyleGallery.from_pretrained(**config.get("model", {}))
        except Exception as exc:  # noqa: BLE001 - any failure (missing model, memory) is explained in the page
            return cls(None, settings=settings, error=f"The model could not be loaded: {exc}. Check the model "
                                                      "options given to stylegallery studio.")
        return cls(pipe, settings=settings)

    # ------------------------------------------------------------------ pictures
    def _save_upload(self, name: str, data: bytes) -> Path:
        """Check an uploaded file and keep it (a folder per upload: two files may share a name)."""
        read_picture(name, data)
        self._uploaded += 1
        folder = self._folder / str(self._uploaded)
        folder.mkdir()
        path = folder / (re.sub(r"[^\w.-]+", "_", Path(name).name) or "picture.png")
        path.write_bytes(data)
        return path

    def _uploaded_content(self, value) -> None:
        files = _uploads(value)
        if not files:
            return
        self._clear(self.content_upload)
        name, data = files[0]
        try:
            self.content = self._save_upload(name, data)
        except StyleGalleryError as exc:
            self._show_pictures(str(exc))
            return
        if self.content_samples is not None:
            self.content_samples.value = ""  # the sample is no longer the content
        self._show_pictures()

    def _uploaded_references(self, value) -> None:
        files = _uploads(value)
        if not files:
            return
        self._clear(self.reference_upload)
        saved, problems = [], []
        for name, data in files:
            try:
                saved.append(self._save_upload(name, data))
            except StyleGalleryError as exc:
                problems.append(str(exc))
        if saved:
            self.references = saved
            if self.reference_samples is not None:
                self.reference_samples.value = ()  # the samples are no longer the references
        self._show_pictures(" ".join(problems) + (" The other files were added." if problems and saved else ""))

    def _picked_content(self, path) -> None:
        if path:
            self.content = path
            self._show_pictures()

    def _picked_references(self, paths) -> None:
        if paths:
            self.references = list(paths)
            self._show_pictures()

    @staticmethod
    def _clear(upload: W.FileUpload) -> None:
        """Empty the upload control (ipywidgets 8), so that the same file can be chosen again."""
        if IPYWIDGETS_MAJOR >= 8:
            upload.value = ()

    def _show_pictures(self, problem: str = "") -> None:
        shown = ([(self.content, "content")] if self.content else []) + [
            (p, f"reference {i + 1}") for i, p in enumerate(self.references)]
        self.thumbnails.children = [_thumbnail(path, f"{caption}: {path.name}") for path, caption in shown]
        self.message.value = f'<span style="color:{COLOURS["error"]}">⚠ {html.escape(problem)}</span>' if problem else ""
        if not self._running and not self.load_error:
            self._say("ready", self._missing() or "Ready: press Run.")

    def _missing(self) -> str:
        if self.content is None:
            return "Choose a content picture (upload one or pick a sample)."
        if not self.references:
            return "Choose at least one style reference (upload or pick samples)."
        return ""

    # ------------------------------------------------------------------ running
    @property
    def session(self) -> Session | None:
        """The session of the explorer shown (None before the first Run)."""
        return None if self.explorer is None else self.explorer.session

    def run(self) -> None:
        """What *Run* does: a new session for new pictures (the settings chosen), else the current session with the
        size and steps chosen; its stale stages then run in the explorer's worker thread (:meth:`wait`)."""
        if self.load_error:
            self._say("error", self.load_error)
            return
        missing = self._missing()
        if missing:
            self._say("error", missing)
            return
        if self.explorer is not None and self.explorer.busy:
            self._say("running", "A run is in progress: wait for it, or press Stop in step 5 below.")
            return
        pictures = (str(self.content), [str(p) for p in self.references])
        settings = {"size": self.size.value, "steps": self.steps.value}
        session = self.session
        try:
            if session is None or (session.content, session.styles) != pictures:
                self._show_explorer(StageExplorer(Session(self.pipe, *pictures, **settings)))
            else:
                self.explorer.set(**settings)
        except StyleGalleryError as exc:
            self._say("error", str(exc))
            return
        self.explorer.run("stylize")

    def wait(self, timeout: float | None = None) -> list[str]:
        """Wait for the explorer's run (at most ``timeout`` seconds); returns the stages it ran."""
        return [] if self.explorer is None else self.explorer.wait(timeout)

    def _show_explorer(self, explorer: StageExplorer) -> None:
        if self.explorer is not None:
            self.explorer.close()
        self.explorer = explorer
        explorer.on_change(self._follow)
        for bar in explorer.progress.values():  # the stage's steps, for the progress here
            bar.observe(lambda _change: self._follow(), names="value")
        self.explorer_box.children = [W.HTML("<h3 style='margin:14px 0 4px 0'>4 · Inside the stages</h3><span "
                                             "style='font-size:12px'>Open a stage to see its pictures. In "
                                             "<i>4 · match</i>, click a cell of the match matrix to give a content "
                                             "region another style region; then press Run again.</span>"), explorer]

    def _show_settings(self, size, steps: int) -> None:
        """Show ``size`` and ``steps`` in their controls (a size not offered yet joins the choices)."""
        if size not in [value for _, value in self.size.options]:
            sides = sorted({*SIZES, *(v for _, v in self.size.options if isinstance(v, int))} | (
                {size} if isinstance(size, int) else set()))
            self.size.options = [(f"{s} px", s) for s in sides] + (
                [] if isinstance(size, int) else [(f"{size[0]}×{size[1]} px", size)])
        self.size.value = size
        self.steps.max = max(self.steps.max, steps)
        self.steps.value = steps

    def _follow(self) -> None:
        """Status, progress, controls and downloads after a change shown by the explorer (in the run's thread
        during a run)."""
        explorer, session = self.explorer, self.session
        running = session in RUNNING
        if running and not self._running:
            self._error_before = explorer.last_error  # errors of earlier runs are not this run's
        self._running = running
        for control in (self.content_upload, self.reference_upload, self.content_samples, self.reference_samples,
                        self.size, self.steps, self.run_button):
            if control is not None:
                control.disabled = running
        self.downloads.show(session, running)
        if not running:  # the explorer's own controls may have changed them
            self._show_settings(session.value("size"), session.value("steps"))
        stage = explorer.running
        if running:
            self.progress.bar_style = "info"
            if stage is None:
                self._say("running", "Waiting for the model (another run is using it)…")
                return
            bar = explorer.progress[stage]
            index = STAGES.index(stage)
            self.progress.value = round(100 * (index + (bar.value / bar.max if bar.max else 0)) / len(STAGES))
            steps = f" · step {bar.value} of {bar.max}" if stage == "stylize" and bar.max > 1 else ""
            self._say("running", f"Running stage {index + 1} of {len(STAGES)}: {stage}{steps}…")
        elif explorer.last_error is not None and explorer.last_error is not self._error_before:
            self.progress.bar_style = "danger"
            error = explorer.last_error
            text = str(error) if isinstance(error, StyleGalleryError) else f"{type(error).__name__}: {error}"
            self._say("error", f"The run stopped: {text}")
        elif session.stylization is not None:
            self.progress.value, self.progress.bar_style = 100, "success"
            partial = " (stopped early: a partial result)" if session.stylization.stopped_early else ""
            self._say("done", f"Done{partial}: download the result, or look inside the stages below.")
        else:
            self.progress.bar_style = ""
            self._say("ready", "Your changes made the result out of date: press Run to make it again.")

    def _repr_png_(self) -> bytes:
        """The static picture: the explorer's, or the pictures chosen so far."""
        if self.explorer is not None:
            return self.explorer._repr_png_()
        chosen = ([self.content] if self.content else []) + self.references
        if chosen:
            return png_bytes(montage([to_image(p) for p in chosen], height=160), max_side=1200)
        picture = Image.new("RGB", (360, 28), (255, 255, 255))
        ImageDraw.Draw(picture).text((6, 8), "StyleGallery studio: no picture chosen yet", fill=(40, 40, 40))
        return png_bytes(picture)

    def _say(self, kind: str, text: str) -> None:
        self.status.value = (f'<span class="sg-studio-{kind}" style="color:{COLOURS[kind]};font-size:13px">'
                             f'{html.escape(text)}</span>')
