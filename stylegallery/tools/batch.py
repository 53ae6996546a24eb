"""Batch runs: a plan of content x reference jobs, run resumably on one process or many (Hugging Face accelerate).

A plan is a CSV or JSONL file (one job a row: a content image, one or more references, optional settings) or
every pairing of two folders (:func:`plan_from_folders`). Each job writes ``OUTDIR/jobs/NAME/``: ``result.png``,
``regions_content.png``, ``regions_style1.png``... and, last, ``report.json``, which lists the other files with
their SHA-256. NAME comes from the images' content hashes and the settings, so a job whose folder holds a
complete set is skipped: running the same command again after a crash finishes only what is missing. Every file
is written atomically, and temporary files a killed run left behind are removed, never trusted.

Under ``accelerate launch`` the jobs are split between processes with ``PartialState.split_between_processes``
(one model copy per process); inversions go to an on-disk cache shared by all processes (safetensors, written
atomically), so a reference used by many jobs is inverted once. A job that fails is recorded in its
``error.json`` and the summary, and the others go on. The main process then writes ``summary.csv`` and
``gallery.html`` (:mod:`stylegallery.gallery`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import StyleGalleryError
from ..images import check_size, load_masks
from ..progress import tqdm
from ..results import region_png, write_atomic
from ..settings import STAGE_SETTINGS, STAGES

__all__ = ["BatchRun", "Job", "failed_in_summary", "job_settings", "plan_from_folders", "read_plan", "run_batch",
           "write_summary"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
#: plan columns (CSV) or keys (JSONL) that name the images rather than settings
IMAGE_FIELDS = ("content", "styles", "style", "content_mask", "style_masks")
SUMMARY_NAME, GALLERY_NAME, JOBS_DIR = "summary.csv", "gallery.html", "jobs"


def job_settings() -> dict[str, object]:
    """The settings a plan row may set, with their defaults: every stage's settings (``size``, ``steps``,
    ``c_ratio``...; :data:`stylegallery.settings.STAGE_SETTINGS`, runtime options aside) and ``fast`` (a preset
    name)."""
    names = {s.name: s.default for declared in STAGE_SETTINGS.values() for s in declared.recorded.values()}
    names["fast"] = None
    return names


@dataclass
class Job:
    """One stylization of a plan: ``content`` with ``styles``, and the settings of its row (``settings``)."""

    row: int  # 1-based row of the plan (line of a JSONL file, data row of a CSV file)
    content: str
    styles: list[str]
    settings: dict = field(default_factory=dict)
    masks: dict[int, str] = field(default_factory=dict)  # image index (0 = content, 1.. references): mask file
    problem: str | None = None  # found while planning (e.g. an unknown setting): the job fails without running


# ---------------------------------------------------------------------------------------------- plans
def _coerce(name: str, value, default):
    """A plan value (text from CSV, JSON value from JSONL) as the type of the setting's default (or as the setting
    reads its text, e.g. ``2=0.3`` for per-region weights)."""
    parse = next((d[name].parse for d in STAGE_SETTINGS.values() if name in d), None)
    if isinstance(value, str) and parse is not None:
        try:
            return parse(value)
        except StyleGalleryError as exc:
            raise ValueError(str(exc)) from None
    if isinstance(value, dict) and parse is not None:  # JSONL: {"2": 0.3}
        return {int(k): v for k, v in value.items()}
    if isinstance(value, str):
        text = value.strip()
        if isinstance(default, bool):
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError(f"{name} must be true or false (got {value!r})")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if default is None:
            for kind in (int, float):
                try:
                    return kind(text)
                except ValueError:
                    pass
        return text
    return value


def _row_job(row: int, fields: dict, base: Path, known: dict) -> Job:
    content = fields.get("content")
    if content in (None, ""):
        raise StyleGalleryError(f"row {row} of the plan has no content image")
    styles = fields.get("styles", fields.get("style"))
    if isinstance(styles, str):
        styles = [s for s in re.split(r"[;|]", styles) if s.strip()]
    if not styles:
        raise StyleGalleryError(f"row {row} of the plan has no style reference (a 'styles' field, ';'-separated)")
    resolve = lambda p: str(p) if Path(p).is_absolute() else str(base / p)  # noqa: E731
    job = Job(row, resolve(str(content).strip()), [resolve(str(s).strip()) for s in styles])
    try:
        job.masks = {i: resolve(p) for i, p in _mask_fields(fields, len(styles)).items()}
    except ValueError as exc:
        job.problem = str(exc)
    for name, value in fields.items():
        if name in IMAGE_FIELDS or value in (None, ""):
            continue
        if name not in known:
            job.problem = f"unknown setting {name!r} (plan settings are: {', '.join(sorted(known))})"
            continue
        try:
            job.settings[name] = _coerce(name, value, known[name])
        except ValueError as exc:
            job.problem = f"bad value for {name}: {exc}"
    return job


def _mask_fields(fields: dict, n_styles: int) -> dict[int, str]:
    """A row's masks: ``content_mask`` (a file) and ``style_masks`` (``N=FILE`` items separated by ``;``, N the
    reference's number from 1; in JSONL also an object {"N": FILE})."""
    masks = {0: str(fields["content_mask"]).strip()} if fields.get("content_mask") not in (None, "") else {}
    items = fields.get("style_masks") or {}
    if isinstance(items, str):
        items = dict(item.split("=", 1) if "=" in item else ("", item) for item in items.split(";") if item.strip())
    for number, path in dict(items).items():
        number = str(number).strip()
        if not number.isdigit() or not 1 <= int(number) <= n_styles:
            raise ValueError(f"style_masks takes N=FILE items, N a reference's number from 1 to {n_styles} "
                             f"(got {number!r}={path!r})")
        masks[int(number)] = str(path).strip()
    return masks


def read_plan(path: str | os.PathLike) -> list[Job]:
    """The jobs of a CSV (header row; columns ``content``, ``styles`` separated by ``;``, then settings) or JSONL
    file (one object a line: ``content``, ``styles`` as a list, settings). Relative image paths are read from the
    plan's folder. A file that cannot be read as a plan is one :class:`StyleGalleryError`, before any work; a row
    with an unknown setting or a bad value becomes a job that fails with that message."""
    path = Path(path)
    if not path.is_file():
        raise StyleGalleryError(f"plan file not found: {path}")
    known = job_settings()
    rows: list[tuple[int, dict]] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise StyleGalleryError(f"cannot read the plan {path}: {exc}") from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StyleGalleryError(f"{path} line {number} is not JSON ({exc.msg}): fix the line") from None
            if not isinstance(fields, dict):
                raise StyleGalleryError(f"{path} line {number} must be a JSON object with content and styles")
            rows.append((number, fields))
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        header = reader.fieldnames or []
        if "content" not in header or not ({"styles", "style"} & set(header)):
            raise StyleGalleryError(f"{path} needs a header row with the columns content and styles (got {header})")
        for number, fields in enumerate(reader, 1):
            if None in fields:
                raise StyleGalleryError(f"{path} row {number} has more cells than the header has columns")
            rows.append((number, {k.strip(): v for k, v in fields.items()}))
    else:
        raise StyleGalleryError(f"a plan is a .csv or .jsonl file (got {path.name})")
    if not rows:
        raise StyleGalleryError(f"the plan {path} has no jobs")
    return [_row_job(number, fields, path.parent, known) for number, fields in rows]


def _images(folder: str | os.PathLike, what: str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise StyleGalleryError(f"{what} folder not found: {folder}")
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise StyleGalleryError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the {what} folder {folder}")
    return found


def plan_from_folders(contents: str | os.PathLike, styles: str | os.PathLike, pairs: str = "all",
                      references_per_job: int = 1) -> list[Job]:
    """Jobs from two folders of images (sorted by name). The references are taken ``references_per_job`` at a
    time (consecutive groups); ``pairs="all"``: every content with every group; ``"zip"``: the i-th content with
    the i-th group (as many jobs as the shorter list)."""
    if pairs not in ("all", "zip"):
        raise StyleGalleryError(f"pairs must be all or zip (got {pairs!r})")
    if references_per_job < 1:
        raise StyleGalleryError(f"references per job must be at least 1 (got {references_per_job})")
    content_images, style_images = _images(contents, "contents"), _images(styles, "styles")
    groups = [style_images[i:i + references_per_job] for i in range(0, len(style_images), references_per_job)]
    if pairs == "all":
        combos = [(c, g) for c in content_images for g in groups]
    else:
        combos = list(zip(content_images, groups))
    return [Job(i + 1, str(c), [str(s) for s in g]) for i, (c, g) in enumerate(combos)]


# ---------------------------------------------------------------------------------------------- names
def _file_hash(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "missing:" + hashlib.sha256(str(path).encode()).hexdigest()


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", Path(path).stem).strip("-")[:24] or "image"


def job_name(job: Job, settings: dict, model: dict) -> str:
    """The folder name of a job: its images' names for reading, and a hash of the images' bytes, the settings
    and the model, so that another image, setting or model gives another folder."""
    digest = hashlib.sha256(json.dumps({
        "content": _file_hash(job.content), "styles": [_file_hash(s) for s in job.styles],
        "settings": settings, "model": model,
        **({"masks": {str(i): _file_hash(p) for i, p in sorted(job.masks.items())}} if job.masks else {}),
    }, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{_slug(job.content)}--{'+'.join(_slug(s) for s in job.styles)[:48]}--{digest}"


# ---------------------------------------------------------------------------------------------- one job
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_report(folder: Path) -> dict | None:
    """A job folder's report if the job is complete: the report parses and every output it lists is there with
    its recorded hash; else None (the job runs again)."""
    try:
        report = json.loads((folder / "report.json").read_text())
        outputs = report["batch"]["outputs"]
        if all(_sha256(folder / name) == digest for name, digest in outputs.items()):
            return report
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _clean(folder: Path) -> None:
    """Remove the temporary files a killed run left (``.NAME.xxxx.tmp`` of write_atomic)."""
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str)))


def _run_job(pipe, job: Job, settings: dict, folder: Path, info: dict, progress: bool) -> None:
    """Run one job and write its outputs, then its report (last)."""
    from ..analysis.report import run_report

    if job.problem:
        raise StyleGalleryError(job.problem)
    for name in [job.content] + job.styles:
        if not Path(name).is_file():
            raise StyleGalleryError(f"image file not found: {name}")
    run = dict(settings)
    preset = run.pop("fast", None)
    if job.masks:
        run["user_masks"] = load_masks(job.masks, [job.content] + job.styles, check_size(run.get("size", 512)))
    if pipe.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(pipe.device)
    misses = pipe.inversion_cache.misses
    start = time.perf_counter()
    out = pipe(job.content, job.styles, preset=preset, progress=progress, **run)
    folder.mkdir(parents=True, exist_ok=True)
    outputs = {"result.png": out.image}
    names = ["content"] + [f"style{j + 1}" for j in range(len(job.styles))]
    outputs.update({f"regions_{n}.png": region_png(labels) for n, labels in zip(names, out.segmentation.labels)})
    digests = {}
    for name, image in outputs.items():
        write_atomic(folder / name, lambda tmp, image=image: image.save(tmp, format="PNG"))
        digests[name] = _sha256(folder / name)
    report = run_report(pipe, out, settings)
    seconds = time.perf_counter() - start  # the whole job, as its progress bar counts it: stages, scores and files
    report["batch"] = dict(info, row=job.row, content_path=job.content, style_paths=job.styles,
                           mask_paths={str(i): p for i, p in sorted(job.masks.items())}, seconds=round(seconds, 3),
                           inversions=pipe.inversion_cache.misses - misses, outputs=digests)
    _write_json(folder / "report.json", report)
    (folder / "error.json").unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class BatchRun:
    """What one invocation did: per job its folder name and status (``"done"``, ``"skipped"`` as complete
    before, ``"failed"``), and the summary and gallery files."""

    outdir: Path
    names: list[str]
    status: list[str]
    summary: Path | None
    gallery: Path | None

    @property
    def failed(self) -> int:
        return self.status.count("failed")


def _state(device: str):
    """accelerate's PartialState for this process (on the CPU unless CUDA is asked for or found)."""
    from accelerate import PartialState

    cpu = device == "cpu" or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") \
        or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _shared_run_id(state) -> str:
    """One id for this invocation, the same in every process (the main process draws it)."""
    from accelerate.utils import broadcast_object_list

    ids = [uuid.uuid4().hex[:12] if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(ids)
    return ids[0]


def run_batch(jobs: list[Job], outdir: str | os.PathLike, *, load_pipe, settings: dict | None = None,
              model: dict | None = None, cache_dir: str | os.PathLike | None = None, share_inversions: bool = True,
              device: str = "auto", progress: bool = True) -> BatchRun:
    """Run ``jobs`` into ``outdir``, skipping complete ones, split between the processes accelerate launched.

    ``load_pipe(device)`` builds this process's pipeline; ``settings`` are every job's defaults (a row's own
    settings win); ``model`` describes the model for the job names (another model: other folders).
    ``cache_dir`` (default ``OUTDIR/cache``) holds the inversions shared by all processes
    (``share_inversions=False``: every job inverts its images itself, to measure the saving). Returns what this
    invocation did; the main process also writes ``summary.csv`` and ``gallery.html``.
    """
    from ..cache import TensorCache
    from .gallery import write_gallery

    outdir = Path(outdir)
    state = _state(device)
    run_id = _shared_run_id(state)
    settings, model = dict(settings or {}), dict(model or {})
    resolved = [dict(settings, **job.settings) for job in jobs]
    names = [job_name(job, s, model) for job, s in zip(jobs, resolved)]
    folders = [outdir / JOBS_DIR / n for n in names]
    if state.is_main_process:
        (outdir / JOBS_DIR).mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()

    # each folder once (a plan may repeat a job), split between the processes
    unique = [i for i, name in enumerate(names) if names.index(name) == i]
    pipe = None
    with state.split_between_processes(unique) as mine:
        todo = [i for i in mine if read_report(folders[i]) is None]
        bar = tqdm(total=len(todo), desc=f"batch {state.process_index + 1}/{state.num_processes}" if state.num_processes > 1
                   else "batch", unit="job", disable=not progress, position=state.process_index)
        for i in todo:
            folder = folders[i]
            if folder.is_dir():
                _clean(folder)
            info = dict(run_id=run_id, process=state.process_index, processes=state.num_processes, name=names[i])
            if pipe is None:  # only when there is work; a model that cannot be loaded stops the command
                pipe = load_pipe("cpu" if state.device.type == "cpu" else str(state.device))
                pipe.inversion_cache = TensorCache(max_bytes=1 << 30, dtype=torch.float32, max_disk_bytes=1 << 40,
                                                   directory=Path(cache_dir or outdir / "cache") / "inversion",
                                                   enabled=share_inversions)
            try:
                _run_job(pipe, jobs[i], resolved[i], folder, info, progress and state.num_processes == 1)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # recorded per job; the others go on
                message = str(exc) if isinstance(exc, StyleGalleryError) else f"{type(exc).__name__}: {exc}"
                folder.mkdir(parents=True, exist_ok=True)
                _write_json(folder / "error.json", dict(info, row=jobs[i].row, error=message.splitlines()[0] if message else ""))
                if pipe is not None and pipe.device.type == "cuda":
                    torch.cuda.empty_cache()
            bar.update(1)
        bar.close()
    state.wait_for_everyone()
    reports = {name: read_report(outdir / JOBS_DIR / name) for name in dict.fromkeys(names)}  # each folder read once
    status = {name: _status(report, outdir / JOBS_DIR / name, run_id) for name, report in reports.items()}
    summary = gallery = None
    if state.is_main_process:
        summary = write_summary(jobs, names, resolved, outdir, reports, status)
        gallery = write_gallery(jobs, names, outdir, reports)
    return BatchRun(outdir, names, [status[n] for n in names], summary, gallery)


def _status(report: dict | None, folder: Path, run_id: str) -> str:
    """A job's status from its complete report (or None) and its folder."""
    if report is not None:
        return "done" if report["batch"].get("run_id") == run_id else "skipped"
    return "failed" if (folder / "error.json").is_file() else "missing"


# ---------------------------------------------------------------------------------------------- summary
SUMMARY_COLUMNS = [
    "row", "job", "status", "content", "styles", "settings", "seconds", *[f"seconds_{s}" for s in STAGES],
    "inversions", "peak_memory_mb", "loss", "ssim", "content_loss", "colour_distance_to_match",
    "moved_toward_match", "process", "error",
]


def _summary_row(job: Job, name: str, settings: dict, folder: Path, report: dict | None, status: str) -> dict:
    row = {"row": job.row, "job": name, "content": job.content, "styles": ";".join(job.styles),
           "settings": json.dumps(settings, sort_keys=True, default=str), "status": status}
    if report is not None:
        batch = report["batch"]
        memory = report.get("peak_memory", {})
        scores = [r for r in report.get("region_scores", []) if r.get("colour_distance") is not None]
        moved = [r["moved_toward_match"] for r in scores if r.get("moved_toward_match") is not None]
        row.update(
            seconds=batch.get("seconds"), inversions=batch.get("inversions"), process=batch.get("process"),
            peak_memory_mb=memory.get("cuda_max_allocated_mb", memory.get("cpu_max_rss_mb")),
            loss=round(report["loss_history"][-1]["total"], 6) if report.get("loss_history") else None,
            ssim=report.get("ssim"), content_loss=report.get("content_loss"),
            colour_distance_to_match=round(sum(r["colour_distance"] for r in scores) / len(scores), 4) if scores else None,
            moved_toward_match=round(sum(moved) / len(moved), 4) if moved else None,
            **{f"seconds_{s}": report.get("timings", {}).get(s) for s in STAGES},
        )
    elif (folder / "error.json").is_file():
        try:
            error = json.loads((folder / "error.json").read_text())
            row.update(error=error.get("error"), process=error.get("process"))
        except (OSError, ValueError):
            row.update(error="unreadable error.json")
    return row


def write_summary(jobs: list[Job], names: list[str], settings: list[dict], outdir: Path, reports: dict,
                  status: dict) -> Path:
    """``OUTDIR/summary.csv``: one row per job of the plan (inputs, settings, status, seconds per stage, peak
    memory, final loss, per-region scores averaged, error), written atomically. ``reports`` and ``status``: each
    job folder's complete report (or None) and status, by folder name."""
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, SUMMARY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for job, name, s in zip(jobs, names, settings):
        writer.writerow(_summary_row(job, name, s, outdir / JOBS_DIR / name, reports[name], status[name]))
    return write_atomic(outdir / SUMMARY_NAME, lambda tmp: Path(tmp).write_text(buffer.getvalue(), encoding="utf-8"))


def failed_in_summary(path: str | os.PathLike) -> int:
    """How many jobs of a ``summary.csv`` failed."""
    with open(path, newline="", encoding="utf-8") as handle:
        return sum(row["status"] == "failed" for row in csv.DictReader(handle))
