"""MatchMatrix: the clickable heatmap of content regions x all style regions; a click overrides a match."""

from __future__ import annotations

import weakref

import anywidget
import traitlets as t

from stylegallery import plot
from stylegallery.errors import StyleGalleryError
from stylegallery.results import Matching

from .shared.display import CSS, EditHooks, StaticReprMixin, SyncGuard, esm
from .shared.export import FigureExport, file_name
from .shared.pictures import figure_png, hex_colours
from .shared.runs import check_idle

PARTS = ("statistical", "semantic", "geometric")
WEIGHT_NAMES = {"statistical": "statistical_weight", "semantic": "semantic_weight", "geometric": "geometric_weight"}


def _rows(tensor) -> list[list[float]]:
    return [[round(float(v), 5) for v in row] for row in tensor.detach().cpu().float().tolist()]


class MatchMatrix(StaticReprMixin, EditHooks, FigureExport, SyncGuard, anywidget.AnyWidget):
    """The match matrix of a :class:`~stylegallery.Matching`: content regions (rows) x every region of every
    reference (columns, grouped by reference), coloured by score.

    The outlined cell of each row is its current match; the dot marks the best-scoring one. Clicking a cell
    overrides that content region's match at once (:meth:`Matching.override`); the *keep* box at the end of a
    row leaves that region unstylized (:meth:`Matching.keep_content`); unticking it restores the match it had.
    Hovering a cell shows its score and the three weighted parts; ``part`` (the view's *colour by*) colours the
    cells by the score or one of its parts. Built from a session (``MatchMatrix(session)``), edits also go into
    the session (:meth:`Session.replace`), making stylize stale. :meth:`to_png`, :meth:`to_svg` (and the view's
    *save PNG*) write the matrix of the part shown as a figure (:func:`stylegallery.plot.match_matrix`).
    """

    _esm = esm("match_matrix.js")
    _css = CSS
    _registry = weakref.WeakSet()

    score = t.List().tag(sync=True)
    parts = t.Dict().tag(sync=True)  # {"statistical": [[...]], "semantic": ..., "geometric": ...}
    weights = t.Dict().tag(sync=True)  # {"statistical": 0.25, ...}
    columns = t.List().tag(sync=True)  # [[reference, region], ...]
    matches = t.List().tag(sync=True)  # per content region: [reference, region] or None
    best = t.List().tag(sync=True)  # per content region: column of the highest score
    overridden = t.List().tag(sync=True)
    reference_names = t.List().tag(sync=True)
    row_colors = t.List().tag(sync=True)  # content region colours (as in the RegionView of the content)
    column_colors = t.List().tag(sync=True)  # each column's colour in its reference's RegionView
    part = t.Enum(("score",) + PARTS, "score").tag(sync=True)  # what colours the cells
    status = t.Unicode("").tag(sync=True)

    def __init__(self, matching, *, reference_names: list[str] | None = None, **kwargs):
        from stylegallery.session import Session

        self._session = None
        if isinstance(matching, Session):
            if matching.matching is None:
                raise StyleGalleryError("this session has no matches yet: run it up to 'match' first")
            self._session = matching
            matching = matching.matching
        if not isinstance(matching, Matching):
            raise StyleGalleryError("MatchMatrix needs a Matching (the result of the match stage) or a Session")
        self._matching = matching
        self._before_keep: dict[int, list[int]] = {}
        super().__init__(**kwargs)
        self._init_hooks()
        self._names = reference_names
        self.on_msg(self._on_message)
        self.refresh()

    # ------------------------------------------------------------------ state
    @property
    def matching(self) -> Matching:
        """The Matching shown and edited."""
        return self._matching

    def _check_current(self) -> None:
        """Edits go into the session only while it still holds the matches shown (and runs no stage)."""
        check_idle(self._session)
        if self._session is None or self._session.matching is self._matching:
            return
        if self._session.matching is not None:
            self.refresh()
            raise StyleGalleryError("the matches were recomputed meanwhile: now showing the new ones, click again")
        raise StyleGalleryError("these matches are stale (an earlier stage changed): run the match stage again")

    @property
    def session(self):
        return self._session

    def refresh(self) -> None:
        """Show the session's current matches (when it has them): matrix, parts and matches go to the view."""
        if self._session is not None and self._session.matching is not None and self._session.matching is not self._matching:
            self._matching = self._session.matching
            self._before_keep.clear()
        m = self._matching
        n_refs = max((c[0] for c in m.columns), default=-1) + 1
        per_ref = [sum(1 for c in m.columns if c[0] == j) for j in range(n_refs)]
        if self._names:
            names = self._names
        elif self._session is not None and self._session.prepared is not None:
            names = plot.image_names(self._session.prepared.names)[1:]
        else:
            names = [f"style {j + 1}" for j in range(n_refs)]
        ref_colours = [hex_colours(plot.region_palette(n)) for n in per_ref]
        settings = m.settings or {}
        defaults = {"statistical": 0.25, "semantic": 1.0, "geometric": 0.125}
        with self.hold_sync():
            self.score = _rows(m.score)
            self.parts = {part: _rows(getattr(m, part)) for part in PARTS}
            self.weights = {part: float(settings.get(WEIGHT_NAMES[part], defaults[part])) for part in PARTS}
            self.columns = [list(map(int, c)) for c in m.columns]
            self.reference_names = list(names)
            self.row_colors = hex_colours(plot.region_palette(len(m.matches)))
            self.column_colors = [ref_colours[j][s] for j, s in m.columns]
            self._sync_matches()

    def _sync_matches(self) -> None:
        m = self.matching
        with self.hold_sync():
            self.matches = [None if x is None else [int(x[0]), int(x[1])] for x in m.matches]
            self.best = [int(i) for i in m.score.argmax(1).tolist()] if m.score.numel() else []
            self.overridden = sorted(int(r) for r in m.overridden)

    # ------------------------------------------------------------------ edits
    def pick(self, row: int, column: int) -> None:
        """Match content region ``row`` to the style region of matrix column ``column`` (what a click does)."""
        self._check_current()
        m = self.matching
        if not 0 <= column < len(m.columns):
            raise StyleGalleryError(f"the matrix has no column {column} (columns 0..{len(m.columns) - 1})")
        reference, region = m.columns[column]
        m.override(int(row), int(reference), int(region))
        self._before_keep.pop(int(row), None)
        self._changed(f"content region {row} → {self.reference_names[reference]} region {region}")

    def keep(self, row: int, keep: bool = True) -> None:
        """Leave content region ``row`` unstylized (``keep=True``), or give it back the match it had."""
        self._check_current()
        m = self.matching
        row = int(row)
        if keep:
            if m.matches[row] is not None:
                self._before_keep[row] = list(m.matches[row])
            m.keep_content(row)
            message = f"content region {row} keeps its content"
        else:
            if m.matches[row] is not None:
                return
            previous = self._before_keep.pop(row, None)
            if previous is None:
                previous = m.columns[int(m.score[row].argmax())]
            m.override(row, int(previous[0]), int(previous[1]))
            message = f"content region {row} → {self.reference_names[previous[0]]} region {previous[1]}"
        self._changed(message)

    def _changed(self, message: str) -> None:
        m = self.matching
        if self._session is not None:
            self._session.replace("match", m)
        self._sync_matches()
        self.status = message
        for other in self._siblings():  # other views of the same Matching follow
            if other._matching is m:
                other._sync_matches()
        self._edited("match", m)

    def _on_message(self, _widget, content, _buffers) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        try:
            if kind == "pick":
                self.pick(int(content["row"]), int(content["col"]))
            elif kind == "keep":
                self.keep(int(content["row"]), bool(content.get("keep", True)))
        except (StyleGalleryError, KeyError, ValueError, TypeError) as exc:
            self.status = f"⚠ {exc}"

    def table(self) -> list[dict]:
        """The match table of the Matching shown (:meth:`Matching.table`)."""
        return self.matching.table()

    # ------------------------------------------------------------------ pictures
    def _picture(self):
        """The figure of the matrix of the part shown, its matches and overrides marked."""
        return plot.match_matrix(self.matching, part=self.part, names=self.reference_names)

    def _picture_name(self) -> str:
        return file_name("match matrix", "" if self.part == "score" else self.part)

    def _repr_png_(self) -> bytes:
        return figure_png(self._picture())
