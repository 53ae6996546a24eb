"""The one exception type that StyleGallery raises for bad input or impossible settings."""


class StyleGalleryError(ValueError):
    """Bad input or settings: the message says what was wrong and how to fix it."""
