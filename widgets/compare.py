"""Compare: a before/after slider between the content and the result, with the references beside it."""

from __future__ import annotations

import anywidget
import traitlets as t
from PIL import Image, ImageDraw

from stylegallery import plot
from stylegallery.errors import StyleGalleryError

from .shared.display import CSS, StaticReprMixin, SyncGuard, esm
from .shared.export import PictureExport, file_name
from .shared.pictures import montage, png_bytes, to_image


class Compare(StaticReprMixin, PictureExport, SyncGuard, anywidget.AnyWidget):
    """Content and result under one before/after slider (drag across the picture), references beside it.

    ``Compare(content, result, styles)`` takes PIL images, arrays or paths; ``Compare.from_session(session)``
    takes them from a finished session (``result`` may also be a Stylization or a StyleGalleryOutput).
    :meth:`to_png` (and the view's *save PNG*) writes the split picture at the slider's ``position``, at the
    result's full resolution, with the references beside it.
    """

    _esm = esm("compare.js")
    _css = CSS

    content_png = t.Bytes(b"").tag(sync=True)
    result_png = t.Bytes(b"").tag(sync=True)
    style_pngs = t.List(t.Bytes()).tag(sync=True)
    style_names = t.List(t.Unicode()).tag(sync=True)
    position = t.Float(0.5, min=0.0, max=1.0).tag(sync=True)
    width = t.Int(384).tag(sync=True)
    status = t.Unicode("").tag(sync=True)

    def __init__(self, content, result, styles=(), *, style_names=None, position: float = 0.5, width: int = 384, **kwargs):
        super().__init__(position=position, width=width, **kwargs)
        self.update(content, result, styles, style_names=style_names)

    @classmethod
    def from_session(cls, session, **kwargs) -> "Compare":
        """The content, the stylized result and the references of a session that ran to the end."""
        if session.stylization is None or session.prepared is None:
            raise StyleGalleryError("this session has no result yet: run it up to 'stylize' first")
        prepared = session.prepared
        styles = [prepared.image(i) for i in range(1, len(prepared.names))]
        kwargs.setdefault("style_names", plot.image_names(prepared.names)[1:])
        return cls(prepared.image(0), session.stylization.image, styles, **kwargs)

    def update(self, content, result, styles=(), *, style_names=None) -> None:
        """Show new pictures."""
        if hasattr(result, "image") and not isinstance(result, Image.Image):
            result = result.image  # Stylization or StyleGalleryOutput
        self._content = to_image(content)
        self._result = to_image(result)
        if self._result.size != self._content.size:
            self._content = self._content.resize(self._result.size, Image.Resampling.LANCZOS)
        self._styles = [to_image(s) for s in styles]
        with self.hold_sync():
            self.content_png = png_bytes(self._content, 768)
            self.result_png = png_bytes(self._result, 768)
            self.style_pngs = [png_bytes(s, 256) for s in self._styles]
            self.style_names = list(style_names or [f"style {i + 1}" for i in range(len(self._styles))])

    def _picture(self, height: int | None = None) -> Image.Image:
        """Content left of the slider's position, result right of it, tagged, with the references in a column
        beside them; ``height``: the picture's (default the result's own, no scaling)."""
        from PIL import ImageFont

        height = height or self._result.height
        width = max(1, round(self._result.width * height / self._result.height))
        content = self._content.resize((width, height), Image.Resampling.LANCZOS)
        both = self._result.resize((width, height), Image.Resampling.LANCZOS)
        split = round(self.position * width)
        both.paste(content.crop((0, 0, split, height)), (0, 0))
        draw = ImageDraw.Draw(both)
        draw.line([(split, 0), (split, height)], fill=(255, 255, 255), width=max(2, round(height / 128)))
        try:
            font = ImageFont.load_default(size=max(10, round(height / 20)))
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        for x, text, anchor in ((8, "content", "la"), (width - 8, "result", "ra")):
            box = draw.textbbox((x, 6), text, font=font, anchor=anchor)
            draw.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=(0, 0, 0))
            draw.text((x, 6), text, fill=(255, 255, 255), font=font, anchor=anchor)
        pictures = [both]
        if self._styles:  # the references stacked in a column beside the comparison
            side = max(1, height // len(self._styles))
            column = Image.new("RGB", (side, height), (255, 255, 255))
            for i, style in enumerate(self._styles):
                column.paste(style.resize((side - 4, side - 4), Image.Resampling.LANCZOS), (2, i * side + 2))
            pictures.append(column)
        return montage(pictures, height=height, gap=max(2, round(height / 64)))

    def _picture_name(self) -> str:
        return file_name("compare")

    def _repr_png_(self) -> bytes:
        return png_bytes(self._picture(min(max(self._result.height, 320), 512)), max_side=1200)
