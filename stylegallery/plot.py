"""``stylegallery.plot``: static matplotlib figures of every stage's result; the public name of
:mod:`stylegallery.analysis.plot`."""

from .analysis.plot import *  # noqa: F401,F403
from .analysis.plot import __all__  # noqa: F401
