"""The contact sheet of a batch run: one self-contained HTML file (content | references | result per row).

Pictures are embedded as JPEG data (no file next to it is needed: the page can be mailed or opened anywhere);
hovering a picture shows its region map over it, with a legend of the region colours. :class:`Gallery` shows the same sheet in a notebook
(``display(Gallery(outdir))``) without importing Jupyter.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..results import write_atomic

__all__ = ["Gallery", "write_gallery"]

THUMB = 160  # longer side of a picture in the sheet, in pixels (small pictures are enlarged)

STYLE = """
.sg-gal { font: 13px/1.4 system-ui, sans-serif; color: #222; }
.sg-gal table { border-collapse: collapse; }
.sg-gal th { text-align: left; font-weight: 600; padding: 4px 8px; border-bottom: 2px solid #ccc; }
.sg-gal td { vertical-align: top; padding: 6px 8px; border-bottom: 1px solid #e4e4e4; }
.sg-gal .sg-gal-pic { display: inline-block; vertical-align: top; margin: 0 6px 4px 0; }
.sg-gal .sg-gal-frame { position: relative; line-height: 0; }
.sg-gal .sg-gal-frame img { display: block; max-width: %(t)dpx; max-height: %(t)dpx; }
.sg-gal .sg-gal-frame img.sg-gal-regions { position: absolute; left: 0; top: 0; width: 100%%; height: 100%%;
  max-width: none; max-height: none; opacity: 0; transition: opacity 0.15s; image-rendering: pixelated; }
.sg-gal .sg-gal-frame:hover img.sg-gal-regions { opacity: 0.6; }
.sg-gal .sg-gal-legend { position: absolute; left: 0; bottom: 0; line-height: 1.2; font-size: 10px; color: #fff;
  background: rgba(0, 0, 0, 0.55); padding: 1px 3px; opacity: 0; transition: opacity 0.15s; }
.sg-gal .sg-gal-frame:hover .sg-gal-legend { opacity: 1; }
.sg-gal .sg-gal-chip { display: inline-block; min-width: 10px; padding: 0 2px; margin-left: 2px; text-align: center;
  border-radius: 2px; text-shadow: 0 0 2px #000; }
.sg-gal .sg-gal-name { font-size: 11px; color: #666; max-width: %(t)dpx; overflow-wrap: anywhere; }
.sg-gal .sg-gal-failed { color: #b00020; }
.sg-gal .sg-gal-meta { font-size: 11px; color: #555; }
""" % {"t": THUMB}


def _data_url(image: Image.Image, kind: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=kind, **({"quality": 85} if kind == "JPEG" else {}))
    return f"data:image/{kind.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _jpeg(path: Path, size: int = THUMB) -> str | None:
    """A data URL of the picture at ``path`` with its longer side ``size`` pixels; None when it cannot be read."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = size / max(image.size)
            resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
    except (OSError, ValueError):
        return None
    return _data_url(image, "JPEG")


def _regions(path: Path) -> tuple[str, np.ndarray] | None:
    """A data URL of a region map (``region_png``'s grey levels) in the region colours of the other pictures, and
    those colours (one per region, in region order); None when it cannot be read."""
    from ..analysis.pictures import region_palette

    try:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"))
    except (OSError, ValueError):
        return None
    levels = np.unique(grey)
    palette = region_palette(len(levels))
    return _data_url(Image.fromarray(palette[np.searchsorted(levels, grey)]), "PNG"), palette


def _legend(palette: np.ndarray) -> str:
    """The region colours as numbered chips, shown with the regions (on hover)."""
    chips = "".join(f'<span class="sg-gal-chip" style="background:#%02x%02x%02x">{r}</span>' % tuple(int(v) for v in c)
                    for r, c in enumerate(palette))
    return f'<div class="sg-gal-legend">regions: {chips}</div>'



def _picture(image: Path, regions: Path | None, caption: str, alt: str) -> str:
    src = _jpeg(image)
    if src is None:
        return f'<div class="sg-gal-pic sg-gal-failed">{html.escape(caption)}: unreadable</div>'
    overlay = _regions(regions) if regions is not None and regions.is_file() else None
    hover = (f'<img class="sg-gal-regions" src="{overlay[0]}" alt="regions of {html.escape(alt)}" '
             f'title="regions (hover)">' if overlay else "")
    return (f'<div class="sg-gal-pic"><div class="sg-gal-frame"><img class="sg-gal-image" src="{src}" '
            f'alt="{html.escape(alt)}" title="{html.escape(caption)}">{hover}{_legend(overlay[1]) if overlay else ""}'
            f'</div><div class="sg-gal-name">{html.escape(caption)}</div></div>')


def _row(job, name: str, folder: Path, report: dict | None) -> str:
    error = None
    if report is None:
        try:
            error = json.loads((folder / "error.json").read_text()).get("error")
        except (OSError, ValueError):
            error = "not run"
    content = _picture(Path(job.content), folder / "regions_content.png", Path(job.content).name, "content")
    styles = "".join(_picture(Path(s), folder / f"regions_style{j + 1}.png", Path(s).name, f"reference {j + 1}")
                     for j, s in enumerate(job.styles))
    if report is not None:  # complete: every output is there
        result = _picture(folder / "result.png", folder / "regions_content.png", name, "result")
        batch = report.get("batch", {})
        meta = (f'{batch.get("seconds", 0):.1f} s · loss {report["loss_history"][-1]["total"]:.3f} · '
                f'SSIM {report.get("ssim", 0):.2f}' if report.get("loss_history") else "")
        result += f'<div class="sg-gal-meta">{html.escape(meta)}</div>'
    else:
        result = f'<div class="sg-gal-failed">failed: {html.escape(str(error))}</div>'
    return (f'<tr data-job="{html.escape(name)}"><td>{job.row}</td><td>{content}</td><td>{styles}</td>'
            f'<td class="sg-gal-result">{result}</td></tr>')


def gallery_html(jobs, names: list[str], outdir: Path, reports: dict) -> str:
    """The sheet as an HTML fragment (a ``<div class="sg-gal">`` with its own styles); ``reports``: each job
    folder's complete report, or None, by folder name."""
    rows = "\n".join(_row(job, name, Path(outdir) / "jobs" / name, reports[name]) for job, name in zip(jobs, names))
    return (f'<div class="sg-gal"><style>{STYLE}</style><table><thead><tr><th>row</th><th>content</th>'
            f'<th>references</th><th>result</th></tr></thead><tbody>\n{rows}\n</tbody></table>'
            f'<p class="sg-gal-meta">Hover a picture for its regions.</p></div>')


def write_gallery(jobs, names: list[str], outdir: str | Path, reports: dict) -> Path:
    """Write ``OUTDIR/gallery.html`` (atomically) for the jobs of a plan, their folder names and reports."""
    body = gallery_html(jobs, names, Path(outdir), reports)
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>StyleGallery batch</title></head>'
            f'<body>\n{body}\n</body></html>\n')
    return write_atomic(Path(outdir) / "gallery.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))


class Gallery:
    """A batch run's ``gallery.html`` for a notebook: ``display(Gallery("OUTDIR"))`` shows the sheet inline."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self.path = path / "gallery.html" if path.is_dir() else path

    def _repr_html_(self) -> str:
        page = self.path.read_text(encoding="utf-8")
        start, end = page.find("<body>"), page.rfind("</body>")
        return (page[start + len("<body>"):end] if start >= 0 and end > start else page).strip()
