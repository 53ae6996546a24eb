"""The one exception type that StyleGallery raises for bad input or impossible settings."""


class StyleGalleryError(ValueError):
    """Bad input or settings: the message says what was wrong and how to fix it."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
