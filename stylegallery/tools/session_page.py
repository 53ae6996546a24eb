"""A finished run as one self-contained HTML page: every picture embedded, no network, no Jupyter.

The page shows what the widgets show: the content and each reference with their regions (hover a region for its
id, size and match), the match matrix with the score's parts, the loss curves, the attention maps at each content
region's centre in each mode, the per-region scores, the result under a before/after slider, and every setting,
model and timing. Its script and styles are ``session_page.js`` and ``session_page.css`` next to this module,
inlined into the page. :func:`export_html` writes the page of a run's results; :func:`export_session` (and
``Session.export_html``) that of a session.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from ..analysis.figures import label_spot, plural
from ..analysis.match_plots import PARTS
from ..analysis.metrics import region_scores
from ..analysis.pictures import OUTLINE_GREEN, border, heat_picture, image_names, region_palette, to_numpy
from ..errors import StyleGalleryError
from ..images import rgb_array
from ..results import Inversion, Matching, Prepared, Segmentation, Stylization, write_atomic
from ..settings import STAGE_SETTINGS, STAGES
from ..stages.attention_maps import MAP_MODES

__all__ = ["PAGE_SUFFIXES", "check_page_path", "export_html", "export_session", "session_page"]

PAGE_SUFFIXES = (".html", ".htm")
PICTURE_SIDE = 768  # longest side of the content, references and result on the page, in pixels
HEAT_SIDE = 160  # longest side of an attention heat map
JPEG_QUALITY = 90
DEFAULT_WEIGHTS = {"statistical": 0.25, "semantic": 1.0, "geometric": 0.125}  # the match stage's defaults
MODE_NOTES = {"zeroed": "the release's: the matched reference's keys outside the region get a logit of 0",
              "masked": "ours: attention only inside the matched region",
              "plain": "no region restriction: every key of every reference"}
LPIPS_NOTE = ("LPIPS is not computed: it needs a pretrained network (torchvision's weights; "
              "stylegallery.metrics.lpips computes it where they are available).")


# ------------------------------------------------------------------------------------------------ public
def check_page_path(path) -> Path:
    """``path`` as a Path if a page can be written there: an .html or .htm file name whose folder is a folder (or
    does not exist yet). Whether it exists already is :func:`export_html`'s check."""
    path = Path(path)
    if path.is_dir():
        raise StyleGalleryError(f"{path} is a folder: give the page's file name, e.g. {path / 'session.html'}")
    if path.suffix.lower() not in PAGE_SUFFIXES:
        raise StyleGalleryError(f"the page {path} must end in .html or .htm")
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise StyleGalleryError(f"cannot write the page {path}: {folder} is a file, not a folder")
            break
    return path


def export_html(path, prepared: Prepared, segmentation: Segmentation, matching: Matching, stylization: Stylization, *,
                pipe=None, inversion: Inversion | None = None, timings: dict | None = None,
                prepare_settings: dict | None = None, overwrite: bool = False) -> Path:
    """Write the page of a run's results (:func:`session_page`) to ``path`` (.html), atomically; an existing file
    is replaced only with ``overwrite=True``. Returns the path."""
    path = check_page_path(path)
    if path.exists() and not overwrite:
        raise StyleGalleryError(f"{path} already exists; pass overwrite=True to replace it")
    page = session_page(prepared, segmentation, matching, stylization, pipe=pipe, inversion=inversion, timings=timings,
                        prepare_settings=prepare_settings)
    try:
        return write_atomic(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    except OSError as exc:
        raise StyleGalleryError(f"could not write the page {path}: {exc.strerror or exc}") from None


def export_session(session, path, *, overwrite: bool = False) -> Path:
    """Write the page of a :class:`~stylegallery.Session` that has run to the end (its pipeline gives the
    attention maps, the content loss per region and the model names). See :func:`export_html`."""
    stale = session.stale
    if stale:
        raise StyleGalleryError(
            f"this session has not run to the end ({', '.join(stale)} {'has' if len(stale) == 1 else 'have'} no "
            "current result): run session.run() (up to 'stylize') before exporting it")
    prepare = {name: session.value(name) for name in session.parameters("prepare")}
    return export_html(path, session.prepared, session.segmentation, session.matching, session.stylization,
                       pipe=session.pipe, inversion=session.inversion, timings=session.timings,
                       prepare_settings=prepare, overwrite=overwrite)


def session_page(prepared: Prepared, segmentation: Segmentation, matching: Matching, stylization: Stylization, *,
                 pipe=None, inversion: Inversion | None = None, timings: dict | None = None,
                 prepare_settings: dict | None = None) -> str:
    """The page of a run as one HTML document (text).

    ``pipe``: the :class:`~stylegallery.StyleGallery` that made the results; it gives the attention maps, stage 4's
    content loss per region and the model names (without it the page says what is missing). ``inversion``: for
    its settings. ``timings``: seconds per stage. ``prepare_settings``: the prepare settings the run was given (the
    others are their defaults); without them the page shows the working size (a Prepared records no settings).
    """
    _check(prepared, segmentation, matching, stylization, inversion)
    names = image_names(prepared.names)
    palettes = [region_palette(segmentation.n_regions(i)) for i in range(len(prepared.names))]
    pictures = _pictures(prepared, stylization)
    regions = _region_data(prepared, segmentation, matching, names, palettes)
    losses: list[dict] = []
    sections = [
        ("result", "Result", _result_section(stylization, names)),
        ("regions", "Regions", _regions_section(prepared, segmentation, names, palettes, regions)),
        ("matches", "Matches", _matches_section(matching, names, palettes)),
        ("loss", "Loss", _loss_section(stylization, palettes[0], losses)),
        ("attention", "Attention", _attention_section(pipe, prepared, segmentation, matching, stylization, names,
                                                      palettes[0])),
        ("scores", "Scores", _scores_section(pipe, prepared, segmentation, matching, stylization, names, palettes[0])),
        ("settings", "Settings", _settings_section(pipe, prepared, segmentation, matching, stylization, inversion,
                                                   timings, prepare_settings, names)),
    ]
    data = {"images": regions, "losses": losses}
    folder = Path(__file__).parent
    title = f"StyleGallery: {names[0]} with {', '.join(names[1:])}"
    nav = "".join(f'<a href="#{anchor}">{heading}</a>' for anchor, heading, _ in sections)
    body = "\n".join(f'<section id="{anchor}"><h2>{heading}</h2>\n{content}\n</section>'
                     for anchor, heading, content in sections)
    test_models = getattr(pipe, "test_models", False)
    warning = ('<p class="sg-warning">Made with the tiny random-weight test models: the pictures show the mechanics, '
               'not real stylization.</p>' if test_models else "")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title>\n<style>\n{(folder / 'session_page.css').read_text(encoding='utf-8')}</style>\n"
        f'</head><body>\n<main>\n<h1>{_e(title)}</h1>\n<p class="sg-summary">{_e(_summary(prepared, stylization, names))}'
        f"</p>\n{warning}<nav>{nav}</nav>\n{body}\n</main>\n"
        '<div id="sg-tip" role="tooltip" hidden></div>\n'
        f'<script type="application/json" id="sg-data">{_json(data)}</script>\n'
        f'<script type="application/json" id="sg-pictures">{_json(pictures)}</script>\n'
        f"<script>\n{(folder / 'session_page.js').read_text(encoding='utf-8')}</script>\n</body></html>\n"
    )


# ------------------------------------------------------------------------------------------------ checks
def _check(prepared, segmentation, matching, stylization, inversion) -> None:
    for value, kind, stage in ((prepared, Prepared, "prepare"), (segmentation, Segmentation, "segment"),
                               (matching, Matching, "match"), (stylization, Stylization, "stylize")):
        if not isinstance(value, kind):
            raise StyleGalleryError(f"the page needs the {stage} stage's result (a {kind.__name__}), got "
                                    f"{type(value).__name__}: run the stages up to stylize first")
    if inversion is not None and not isinstance(inversion, Inversion):
        raise StyleGalleryError(f"inversion must be an Inversion or None, got {type(inversion).__name__}")
    if len(segmentation.labels) != len(prepared.names):
        raise StyleGalleryError("the segmentation belongs to other images: run segment again")
    if len(matching.matches) != segmentation.n_regions(0):
        raise StyleGalleryError("the matching does not belong to this segmentation: run match again")
    if tuple(stylization.pixels.shape[-2:]) != tuple(prepared.pixels.shape[-2:]):
        raise StyleGalleryError("the stylization does not belong to these prepared images (its size differs)")


# ------------------------------------------------------------------------------------------------ helpers
def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _json(value) -> str:
    """JSON for a ``<script>`` element: ``</`` cannot end it early."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _hex(colour) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in colour[:3])


def _jpeg(picture, side: int = PICTURE_SIDE) -> str:
    """A picture (anything ``rgb_array`` reads) as a JPEG data URL, its longest side at most ``side`` pixels."""
    image = Image.fromarray(rgb_array(picture))
    if max(image.size) > side:
        scale = side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _chip(text, colour, tip: str | None = None, image: int | None = None, region: int | None = None) -> str:
    link = "" if image is None else f' data-image="{image}" data-region="{region}"'
    hover = "" if tip is None else f' data-tip="{_e(tip)}"'
    return f'<span class="sg-chip" style="background:{_hex(colour)}"{hover}{link}>{_e(text)}</span>'


def _img(picture: str, alt: str, size: tuple[int, int]) -> str:
    """An ``<img>`` whose data the page's script takes from the pictures embedded once (``picture``: their key)."""
    return f'<img data-picture="{picture}" alt="{_e(alt)}" width="{size[1]}" height="{size[0]}" draggable="false">'


def _summary(prepared: Prepared, stylization: Stylization, names: list[str]) -> str:
    s = stylization.settings
    height, width = prepared.pixels.shape[-2:]
    run = f"{plural(len(stylization.history), 'step')} of {s['steps'] * s['iters']}"
    if stylization.stopped_early:
        run += ", stopped early"
    if s.get("warm"):
        run += f", refined from an earlier result (from timestep index {s.get('start_step')})"
    extra = ""
    if stylization.output_pixels is not None:
        out_h, out_w = stylization.output_pixels.shape[-2:]
        extra = f" · refined at {out_w}×{out_h} px"
    return (f"{names[0]} styled by {plural(prepared.n_styles, 'reference')} ({', '.join(names[1:])}) · "
            f"{width}×{height} px working size · {run}{extra}")


# ------------------------------------------------------------------------------------------------ pictures
def _pictures(prepared: Prepared, stylization: Stylization) -> dict[str, str]:
    """Every picture used more than once, by key: ``image0`` (content), ``image1``... (references), ``result`` and
    ``before`` (the content at the result's size)."""
    pictures = {f"image{i}": _jpeg(prepared.pixels[i]) for i in range(len(prepared.names))}
    result = rgb_array(stylization.image)
    original = None if prepared.original is None else rgb_array(prepared.original)
    if original is None or original.shape != result.shape:
        original = np.asarray(Image.fromarray(rgb_array(prepared.pixels[0])).resize(
            (result.shape[1], result.shape[0]), Image.Resampling.LANCZOS))
    pictures["result"] = _jpeg(result)
    pictures["before"] = _jpeg(original)
    return pictures


def _result_section(stylization: Stylization, names: list[str]) -> str:
    height, width = rgb_array(stylization.image).shape[:2]
    return (
        '<div class="sg-ba" data-testid="before-after">'
        f'{_img("result", "result", (height, width))}'
        f'<div class="sg-ba-before">{_img("before", names[0], (height, width))}</div>'
        '<div class="sg-ba-handle" role="slider" tabindex="0" aria-label="split between content and result" '
        'aria-valuemin="0" aria-valuemax="100" aria-valuenow="50"></div>'
        f'<span class="sg-ba-label sg-left">{_e(names[0])}</span><span class="sg-ba-label sg-right">result</span></div>'
        f'<p class="sg-note">Drag across the picture (or focus the handle and use the arrow keys) to move the split: '
        f'{_e(names[0])} on the left, the result on the right ({width}×{height} px).</p>'
    )


# ------------------------------------------------------------------------------------------------ regions
def _region_data(prepared: Prepared, segmentation: Segmentation, matching: Matching, names: list[str],
                 palettes: list[np.ndarray]) -> list[dict]:
    """Per image: its label grid, region colours, each region's tooltip and the regions it links to (a content
    region to its match, a style region to the content regions matched to it)."""
    out = []
    for i in range(len(prepared.names)):
        labels = to_numpy(segmentation.labels[i]).astype(np.int64)
        sizes = segmentation.region_sizes(i)
        tips, links = [], []
        for region, cells in enumerate(sizes):
            lines = [f"{names[i]} · region {region}",
                     f"{plural(cells, 'latent cell')} · {cells / labels.size:.1%} of the image"]
            if i == 0:
                lines.append(_content_match(matching, region, names))
                match = matching.matches[region]
                links.append([] if match is None else [[1 + int(match[0]), int(match[1])]])
            else:
                users = [r for r, m in enumerate(matching.matches) if m is not None and list(m) == [i - 1, region]]
                lines.append(f"used by content {'region' if len(users) == 1 else 'regions'} "
                             f"{', '.join(map(str, users))}" if users else "used by no content region")
                links.append([[0, r] for r in users])
            tips.append("\n".join(lines))
        out.append({"grid": list(labels.shape), "labels": labels.ravel().tolist(),
                    "colours": [_hex(c) for c in palettes[i]], "tips": tips, "links": links})
    return out


def _content_match(matching: Matching, region: int, names: list[str]) -> str:
    match = matching.matches[region]
    if match is None:
        return "keeps its content (no style loss)"
    column = matching.columns.index(list(match))
    override = ", set by hand" if region in matching.overridden else ""
    return (f"matched to {names[1 + match[0]]} region {match[1]} "
            f"(score {float(matching.score[region, column]):.3f}{override})")


def _regions_section(prepared: Prepared, segmentation: Segmentation, names: list[str], palettes: list[np.ndarray],
                     regions: list[dict]) -> str:
    figures = []
    height, width = prepared.pixels.shape[-2:]
    for i in range(len(prepared.names)):
        tips = regions[i]["tips"]
        chips = "".join(_chip(r, palettes[i][r], tips[r], i, r) for r in range(segmentation.n_regions(i)))
        silhouette = segmentation.silhouette[i] if i < len(segmentation.silhouette) else {}
        k = segmentation.chosen_k[i] if i < len(segmentation.chosen_k) else None
        chosen = f" · k = {k}" if k is not None else ""
        score = silhouette.get(str(k), silhouette.get(k)) if silhouette else None
        if score is not None:
            chosen += f" (silhouette {score:.2f})"
        role = "content" if i == 0 else f"reference {i}"
        figures.append(
            f'<figure><div class="sg-frame sg-region-pic" data-image="{i}">{_img(f"image{i}", names[i], (height, width))}'
            f'<canvas aria-label="regions of {_e(names[i])}"></canvas></div>'
            f'<figcaption><b>{_e(names[i])}</b> ({role}) · {plural(segmentation.n_regions(i), "region")}{chosen}'
            f'<div class="sg-legend">{chips}</div></figcaption></figure>')
    return ('<label class="sg-toggle"><input type="checkbox" id="sg-show-regions" checked> show the regions</label>'
            f'<div class="sg-row">{"".join(figures)}</div>'
            '<p class="sg-note">Hover a region (or its number) for its size and its match; the region it is matched '
            'to lights up in the other pictures. Regions live on the latent grid (one cell: 8×8 pixels).</p>')


# ------------------------------------------------------------------------------------------------ matches
def _matches_section(matching: Matching, names: list[str], palettes: list[np.ndarray]) -> str:
    weights = {part: float(matching.settings.get(f"{part}_weight", DEFAULT_WEIGHTS[part])) for part in PARTS[1:]}
    formula = " + ".join(f"{weights[p]:g} × {p}" for p in PARTS[1:])
    tabs = "".join(f'<button type="button" data-tab="{p}" aria-selected="{str(p == "score").lower()}">{p}</button>'
                   for p in PARTS)
    tables = "".join(_matrix(matching, part, weights, names, palettes) for part in PARTS)
    return (f'<p class="sg-note">Content regions (rows) against every region of every reference (columns). '
            f"score = {formula}; hover a cell for its parts.</p>"
            f'<div class="sg-tabs" data-group="parts" role="tablist">{tabs}</div>{tables}'
            '<div class="sg-key"><span class="sg-key-match">match</span><span class="sg-key-override">set by hand</span>'
            '<span class="sg-key-keep">keeps its content</span><span>• best score of the row</span></div>')


def _matrix(matching: Matching, part: str, weights: dict, names: list[str], palettes: list[np.ndarray]) -> str:
    values = to_numpy(getattr(matching, part)).astype(np.float64)
    parts = {p: to_numpy(getattr(matching, p)).astype(np.float64) for p in PARTS}
    low, high = float(np.nanmin(values)) if values.size else 0.0, float(np.nanmax(values)) if values.size else 1.0
    columns = [tuple(int(v) for v in c) for c in matching.columns]
    references = sorted({c[0] for c in columns})
    head = "".join(f'<th class="sg-ref" colspan="{sum(1 for c in columns if c[0] == j)}">{_e(names[1 + j])}</th>'
                   for j in references)
    chips = "".join(f"<th>{_chip(s, palettes[1 + j][s])}</th>" for j, s in columns)
    rows = []
    for r, match in enumerate(matching.matches):
        cells = []
        for c, (j, s) in enumerate(columns):
            share = 0.5 if high == low else (values[r, c] - low) / (high - low)
            colour = colormaps["viridis"](share)
            classes = []
            if match is not None and tuple(match) == (j, s):
                classes.append("sg-override" if r in matching.overridden else "sg-match")
            if c == int(matching.score[r].argmax()):
                classes.append("sg-best")
            tip = (f"content region {r} → {names[1 + j]} region {s}\n"
                   f"score {parts['score'][r, c]:.3f} = " + " + ".join(
                       f"{weights[p]:g} × {p} {parts[p][r, c]:.3f}" for p in PARTS[1:]))
            if classes:
                tip += "\n" + ", ".join({"sg-match": "matched", "sg-override": "matched (set by hand)",
                                         "sg-best": "best score of the row"}[k] for k in classes)
            cells.append(f'<td class="{" ".join(classes)}" style="background:{_hex(np.array(colour) * 255)};'
                         f'color:{"#fff" if share <= 0.6 else "#111"}" data-tip="{_e(tip)}">{values[r, c]:.2f}</td>')
        matched = "keeps its content" if match is None else f"→ {names[1 + match[0]]} region {match[1]}"
        rows.append(f'<tr class="{"sg-keep" if match is None else ""}"><th>{_chip(r, palettes[0][r])}</th>'
                    f'{"".join(cells)}<td class="sg-matched-to">{_e(matched)}</td></tr>')
    hidden = "" if part == "score" else " hidden"
    weight = "" if part == "score" else f" (weight {weights[part]:g})"
    return (f'<div data-tab-of="parts" data-tab="{part}"{hidden}><table class="sg-matrix" data-part="{part}">'
            f'<caption class="sg-small">{part}{weight}: colour from {low:.2f} to {high:.2f}</caption>'
            f'<thead><tr><th></th>{head}<th></th></tr><tr><th>content</th>{chips}<th></th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


# ------------------------------------------------------------------------------------------------ loss
def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round numbers from at most ``low`` to at least ``high``."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [i * step for i in range(first, last + 1)]


def _loss_chart(history: list[dict], palette: np.ndarray, index: int, losses: list[dict]) -> str:
    """An SVG of the total, content and per-region style losses against the step; its read-out data go to
    ``losses``."""
    width, height, left, right, top, bottom = 760, 300, 58, 600, 14, 262
    steps = [int(h["step"]) for h in history]
    regions = sorted({int(k) for h in history for k in h.get("style_per_region", {})})
    series = [("total", [h["total"] for h in history], "#111", 2.2, ""),
              ("content", [h["content"] for h in history], "#888", 1.6, "5 4")]
    series += [(f"style, region {r}", [h.get("style_per_region", {}).get(str(r)) for h in history],
                _hex(palette[r]) if r < len(palette) else "#555", 1.3, "") for r in regions]
    values = [v for _, vs, _, _, _ in series for v in vs if v is not None and math.isfinite(v)]
    y_ticks = _ticks(min(0.0, min(values, default=0.0)), max(values, default=1.0))
    x_ticks = _ticks(steps[0], steps[-1], 6) if steps[-1] > steps[0] else [steps[0]]
    x_ticks = [t for t in x_ticks if t == int(t) and steps[0] <= t <= steps[-1]]
    x_low, x_high = steps[0], max(steps[-1], steps[0] + 1)
    y_low, y_high = y_ticks[0], y_ticks[-1]

    def x(step):
        return left + (step - x_low) / (x_high - x_low) * (right - left)

    def y(value):
        return bottom - (value - y_low) / (y_high - y_low) * (bottom - top)

    parts = [f'<line class="sg-grid" x1="{left}" x2="{right}" y1="{y(t):.1f}" y2="{y(t):.1f}"/>'
             f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>' for t in y_ticks]
    parts += [f'<line class="sg-axis" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{bottom}" y2="{bottom + 4}"/>'
              f'<text x="{x(t):.1f}" y="{bottom + 17}" text-anchor="middle">{int(t)}</text>' for t in x_ticks]
    parts.append(f'<line class="sg-axis" x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}"/>'
                 f'<line class="sg-axis" x1="{left}" x2="{left}" y1="{top}" y2="{bottom}"/>'
                 f'<text x="{(left + right) / 2}" y="{height - 6}" text-anchor="middle">step</text>'
                 f'<text x="14" y="{(top + bottom) / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(top + bottom) / 2})">loss</text>')
    for n, (name, vs, colour, stroke, dash) in enumerate(series):
        points = [(x(s), y(v)) for s, v in zip(steps, vs) if v is not None and math.isfinite(v)]
        known = [v for v in vs if v is not None]
        summary = f"{name}: {known[0]:.4g} → {known[-1]:.4g}" if known else name
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        if len(points) == 1:
            parts.append(f'<circle cx="{points[0][0]:.1f}" cy="{points[0][1]:.1f}" r="3" fill="{colour}">'
                         f"<title>{_e(summary)}</title></circle>")
        elif points:
            coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{stroke}"{dashes} points="{coords}">'
                         f"<title>{_e(summary)}</title></polyline>")
        ly = top + 6 + 18 * n
        parts.append(f'<line x1="{right + 16}" x2="{right + 40}" y1="{ly}" y2="{ly}" stroke="{colour}" '
                     f'stroke-width="{stroke}"{dashes}/><text x="{right + 46}" y="{ly + 4}">{_e(name)}</text>')
    parts.append(f'<line class="sg-cursor" x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" visibility="hidden"/>')
    losses.append({
        "x": [round(x(s), 2) for s in steps], "left": left, "right": right,
        "labels": [f"step {h['step']}" + (f" · timestep {h['timestep']}" if "timestep" in h else "") for h in history],
        "series": [{"name": name, "values": [None if v is None or not math.isfinite(v) else float(v) for v in vs]}
                   for name, vs, _, _, _ in series],
    })
    return (f'<svg class="sg-loss" data-loss="{index}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="loss curves">{"".join(parts)}</svg>')


def _loss_section(stylization: Stylization, palette: np.ndarray, losses: list[dict]) -> str:
    if not stylization.history:
        return '<p class="sg-note">The run recorded no step.</p>'
    first, last = stylization.history[0], stylization.history[-1]
    text = [f'<p class="sg-note">{plural(len(stylization.history), "step")}, timestep {first.get("timestep")} → '
            f'{last.get("timestep")}; total = style + c_ratio × content (c_ratio {stylization.settings.get("c_ratio")}). '
            "Hover the chart for the values at a step.</p>", _loss_chart(stylization.history, palette, 0, losses)]
    if stylization.output_history:
        text += [f'<h3>Refinement at the output size ({plural(len(stylization.output_history), "step")})</h3>',
                 _loss_chart(stylization.output_history, palette, 1, losses)]
    return "".join(text)


# ------------------------------------------------------------------------------------------------ attention
def _centres(labels: np.ndarray, size: tuple[int, int]) -> list[tuple[int, int]]:
    """The pixel (y, x) deepest inside each content region of the latent-grid label map."""
    h, w = labels.shape
    points = []
    for region in range(int(labels.max()) + 1):
        row, col = label_spot(labels == region)
        points.append((min(size[0] - 1, int((row + 0.5) * size[0] / h)), min(size[1] - 1, int((col + 0.5) * size[1] / w))))
    return points


def _heat(reference: np.ndarray, weights: np.ndarray, inside: np.ndarray, top: float) -> str:
    """A reference (already small) in grey under its heat map, the matched style region outlined in green."""
    mixed = heat_picture(reference, weights, top)
    h, w = mixed.shape[:2]
    grid_h, grid_w = weights.shape
    mask = np.asarray(inside, dtype=bool)[(np.arange(h) * grid_h // h)[:, None], (np.arange(w) * grid_w // w)[None, :]]
    mixed[border(mask, width=2)] = OUTLINE_GREEN
    return _jpeg(mixed, HEAT_SIDE)


def _attention_section(pipe, prepared: Prepared, segmentation: Segmentation, matching: Matching,
                       stylization: Stylization, names: list[str], palette: np.ndarray) -> str:
    if pipe is None:
        return ('<p class="sg-note">Not shown: the attention maps need the pipeline that made these results (export '
                "with <code>pipe=</code>, as <code>Session.export_html</code> and <code>stylegallery run --html</code> "
                "do).</p>")
    settings = stylization.settings
    size = tuple(int(v) for v in prepared.pixels.shape[-2:])
    labels = to_numpy(segmentation.labels[0]).astype(np.int64)
    points = _centres(labels, size)
    try:
        timestep = pipe.timesteps(settings.get("steps", 150), settings.get("scheduler", "ddim"))[0]
        precision = getattr(torch, str(settings.get("feature_precision", "float16")))
        maps = {mode: pipe.attention_maps(prepared, segmentation, matching, points, timestep=timestep, mode=mode,
                                          query_scale=settings.get("query_scale", 1.5), feature_precision=precision)
                for mode in MAP_MODES}
    except StyleGalleryError as exc:
        return f'<p class="sg-note">Not shown: the attention maps could not be computed ({_e(exc)}).</p>'
    references = []
    for i in range(1, len(prepared.names)):
        picture = Image.fromarray(rgb_array(prepared.pixels[i]))
        scale = HEAT_SIDE / max(picture.size)
        references.append(rgb_array(picture.resize((max(1, round(picture.width * scale)),
                                                     max(1, round(picture.height * scale))), Image.Resampling.LANCZOS)))
    first = maps[MAP_MODES[0]]
    tabs = "".join(f'<button type="button" data-tab="{r}" aria-selected="{str(r == 0).lower()}" '
                   f'style="border-left:6px solid {_hex(palette[r])}">region {r}</button>' for r in range(len(points)))
    panels = []
    for p, (y, x) in enumerate(points):
        found = first.regions[p]
        match = first.matches[p]
        where = (f"content region {p}'s centre, pixel ({y}, {x})" +
                 ("" if found == p else f" (at this layer's resolution the token there is region {found}'s)"))
        goes = ("keeps its content: no style attention" if match is None
                else f"matched to {names[1 + match[0]]} region {match[1]}")
        head = "".join(f"<th>{_e(names[i])}</th>" for i in range(1, len(prepared.names)))
        rows = []
        for mode in MAP_MODES:
            m = maps[mode]
            top = max(float(w.max()) for w in m.maps[p]) or 1.0
            share = m.share_inside[p]
            inside = "" if math.isnan(share) else f"<br><span class='sg-small'>{share:.0%} inside the matched region</span>"
            cells = "".join(
                f'<td><img src="{_heat(references[j], m.maps[p][j], m.inside[p][j], top)}" '
                f'alt="{_e(mode)} attention of region {p} on {_e(names[1 + j])}">'
                f'<span class="sg-small">{float(m.maps[p][j].sum()):.0%} of the weight</span></td>'
                for j in range(len(references)))
            rows.append(f'<tr><th title="{_e(MODE_NOTES[mode])}">{mode}{inside}</th>{cells}</tr>')
        hidden = "" if p == 0 else " hidden"
        panels.append(
            f'<div data-tab-of="attention" data-tab="{p}"{hidden}><div class="sg-row">'
            f'<figure class="sg-att-point"><div class="sg-frame">{_img("image0", names[0], size)}'
            f'<span class="sg-marker" style="left:{100 * (x + 0.5) / size[1]:.2f}%;top:{100 * (y + 0.5) / size[0]:.2f}%">'
            f'</span></div><figcaption>{_e(where)}; {_e(goes)}</figcaption></figure>'
            f'<table class="sg-att"><thead><tr><th>mode</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            "</div></div>")
    return (f'<p class="sg-note">Where the centre of each content region attends in the references under the style '
            f"loss's target attention: timestep {first.timestep} (the run's first), loss layer {first.layer}, mean "
            "over heads, queries of the clean content. Brighter is more weight (scaled per region); the matched "
            "style region is outlined in green. zeroed: " + _e(MODE_NOTES["zeroed"]) + "; masked: "
            + _e(MODE_NOTES["masked"]) + "; plain: " + _e(MODE_NOTES["plain"]) + ".</p>"
            f'<div class="sg-tabs" data-group="attention" role="tablist">{tabs}</div>{"".join(panels)}')


# ------------------------------------------------------------------------------------------------ scores
def _scores_section(pipe, prepared: Prepared, segmentation: Segmentation, matching: Matching,
                    stylization: Stylization, names: list[str], palette: np.ndarray) -> str:
    notes = [LPIPS_NOTE]
    scores = None
    if pipe is not None:
        try:
            scores = pipe.region_scores(prepared, segmentation, matching, stylization)
        except StyleGalleryError as exc:
            notes.append(f"The content loss per region could not be computed ({exc}).")
    else:
        notes.append("The content loss per region needs the UNet: not computed (no pipeline given).")
    if scores is None:
        scores = region_scores(prepared, segmentation, matching, stylization)

    def where(pair):
        return "–" if pair is None else f"{names[1 + pair[0]]} region {pair[1]}"

    rows = []
    for row in scores.table():
        r = row["content_region"]
        match = ("keeps its content" if row["style_image"] is None
                 else f"{names[1 + row['style_image']]} region {row['style_region']}")
        moved = {True: "yes", False: "no", None: "–"}[row["moved_toward_match"]]
        rows.append(
            f"<tr><td>{_chip(r, palette[r])}</td><td>{_e(match)}</td>"
            f'<td class="sg-num">{_number(row["share"] * 100, 1)}%</td>'
            f'<td class="sg-num">{_number(row["colour_distance"], 2)}</td>'
            f'<td class="sg-num">{_number(row["colour_distance_before"], 2)}</td>'
            f'<td class="sg-num">{_number(row["colour_change"], 2)}</td>'
            f'<td class="sg-num">{_number(row["latent_stat_distance"])}</td>'
            f"<td>{_e(where(row['nearest_colour']))}</td><td>{moved}</td>"
            f'<td class="sg-num">{_number(row["ssim"])}</td><td class="sg-num">{_number(row["content_loss"], 4)}</td></tr>')
    whole = f"SSIM of the whole image {scores.ssim_whole:.3f}"
    if scores.content_loss_whole is not None:
        whole += f" · content loss of the whole image {scores.content_loss_whole:.4f}"
    return (
        '<table class="sg-table"><thead><tr><th>region</th><th>matched to</th><th>share</th>'
        '<th title="sliced Wasserstein distance in CIE Lab, result region vs matched style region">colour → match</th>'
        '<th title="the same for the content, before stylization">before</th>'
        '<th title="colour distance between the result and the content in the same region">colour change</th>'
        '<th title="distance of SD latent mean and std to the matched style region">latent stats → match</th>'
        '<th>nearest by colour</th><th>moved toward its match</th><th>SSIM</th><th>content loss</th></tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table><p class="sg-note">{_e(whole)}. Colour distances are in Lab '
        f'units (lower is closer); "moved toward its match": the matched style region is the nearest by colour.</p>'
        + "".join(f'<p class="sg-note">{_e(note)}</p>' for note in notes))


# ------------------------------------------------------------------------------------------------ settings
def _value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _settings_table(stage: str, settings: dict) -> str:
    declared = STAGE_SETTINGS[stage]
    defaults = declared.record({s.name: s.default for s in declared})  # as plain as the recorded values
    rows = []
    for name, value in settings.items():
        changed = name in defaults and _value(value) != _value(defaults[name])
        default_text = _value(defaults[name]) if name in defaults else "–"
        rows.append(f'<tr class="{"sg-changed" if changed else ""}"><td><code>{_e(name)}</code></td>'
                    f"<td><code>{_e(_value(value))}</code></td><td><code>{_e(default_text)}</code></td></tr>")
    return ('<table class="sg-table"><thead><tr><th>setting</th><th>value</th><th>default</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _settings_section(pipe, prepared: Prepared, segmentation: Segmentation, matching: Matching,
                      stylization: Stylization, inversion: Inversion | None, timings: dict | None,
                      prepare_settings: dict | None, names: list[str]) -> str:
    height, width = (int(v) for v in prepared.pixels.shape[-2:])
    if prepare_settings is None:
        prepare = {"size": [height, width]}
    else:
        declared = STAGE_SETTINGS["prepare"]
        prepare = declared.record({**{s.name: s.default for s in declared}, **prepare_settings})
    recorded = {"prepare": prepare, "invert": None if inversion is None else inversion.settings,
                "segment": segmentation.settings, "match": matching.settings, "stylize": stylization.settings}
    stages = []
    for stage in STAGES:
        if recorded[stage] is None:
            body = '<p class="sg-note">Not given (export with <code>inversion=</code>).</p>'
        else:
            body = _settings_table(stage, recorded[stage])
            if stage == "prepare" and prepare_settings is None:
                body += '<p class="sg-note">The working size of the images; the other prepare settings were not given.</p>'
        stages.append(f"<div><h3>{stage}</h3>{body}</div>")
    images = "".join(f"<tr><td>{'content' if i == 0 else f'reference {i}'}</td><td>{_e(names[i])}</td>"
                     f"<td><code>{_e(prepared.names[i] or '(in memory)')}</code></td><td><code>{_e(prepared.hashes[i][:16])}</code></td></tr>"
                     for i in range(len(prepared.names)))
    models = [("backbone fingerprint", prepared.model), ("stylize model", stylization.settings.get("model", "–")),
              ("LoRA", _value(stylization.settings.get("lora")) if stylization.settings.get("lora") else "none")]
    if pipe is not None:
        models = [("backbone", pipe.backbone.name)] + models + [
            ("semantic model (DINOv2)", getattr(pipe.semantic_model, "name_or_path", None) or "none"),
            ("depth model", getattr(pipe.depth_model, "name_or_path", None) or "none"),
            ("SAM", pipe.sam_name or "none"),
            ("device, dtype", f"{pipe.device}, {str(pipe.dtype).replace('torch.', '')}"),
            ("test models", "yes: tiny random weights" if pipe.test_models else "no")]
    model_rows = "".join(f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>" for k, v in models)
    if timings:
        timing_rows = "".join(f'<tr><td>{_e(stage)}</td><td class="sg-num">{seconds:.2f} s</td></tr>'
                              for stage, seconds in timings.items())
        timing_rows += f'<tr><td><b>total</b></td><td class="sg-num"><b>{sum(timings.values()):.2f} s</b></td></tr>'
        timing = f'<table class="sg-table"><tbody>{timing_rows}</tbody></table>'
    else:
        timing = '<p class="sg-note">Not recorded.</p>'
    return (
        '<div class="sg-settings">'
        f'<div><h3>images</h3><table class="sg-table"><thead><tr><th>role</th><th>name</th><th>given as</th>'
        f'<th>content hash</th></tr></thead><tbody>{images}</tbody></table></div>'
        f'<div><h3>models</h3><table class="sg-table"><tbody>{model_rows}</tbody></table></div>'
        f"<div><h3>timings</h3>{timing}</div>{''.join(stages)}</div>"
        '<p class="sg-note">* differs from the default. The settings are those each result recorded.</p>')
