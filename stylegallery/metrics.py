"""``stylegallery.metrics``: per-region scores of a result; the public name of :mod:`stylegallery.analysis.metrics`."""

from .analysis.metrics import *  # noqa: F401,F403
from .analysis.metrics import __all__  # noqa: F401
