"""The stages' progress bars: ``tqdm.auto``'s, except that a notebook bar closed with ``leave=False`` leaves no output;
and :func:`quiet_loading`, which silences other libraries' bars and notices while models load.

tqdm closes such a bar's widget, but the cell keeps the output that displayed it: once the notebook is saved and
reopened, that output reads "Error displaying widget: model not found". Here the bar is displayed under a
display id and its output is emptied when the bar closes. Outside a notebook this is ``tqdm.auto.tqdm`` itself
(nothing of Jupyter is imported then).
"""

from __future__ import annotations

import contextlib
import sys

from tqdm.auto import tqdm as _auto_tqdm

_notebook = sys.modules.get("tqdm.notebook")  # imported by tqdm.auto only inside a Jupyter kernel

if _notebook is not None and issubclass(_auto_tqdm, _notebook.tqdm):

    class tqdm(_auto_tqdm):  # noqa: N801 - a drop-in for tqdm.auto.tqdm
        """A notebook progress bar whose output is emptied when it closes with ``leave=False``."""

        def __init__(self, *args, **kwargs):
            self._output = None
            super().__init__(*args, display=False, **kwargs)
            if not self.disable:
                from IPython.display import display

                self._output = display(self.container, display_id=True)
                self.displayed = True

        def close(self):
            super().close()
            if self._output is not None and not self.leave:
                self.container.close()  # tqdm keeps a bar that stopped short of its total (red) open
                self._output.update({}, raw=True)
                self._output = None

else:
    tqdm = _auto_tqdm


@contextlib.contextmanager
def quiet_loading():
    """No progress bars and no notices of transformers or diffusers in the block (loading or writing weights): a
    notebook would show a bar for each model and a red box for each notice. Downloads from the Hub keep their bars;
    errors still show."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (transformers_logging, diffusers_logging)
    bars = [lib for lib in libraries if lib.is_progress_bar_enabled()]
    verbosity = [lib.get_verbosity() for lib in libraries]
    for library in libraries:
        library.set_verbosity_error()
    for library in bars:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library in bars:
            library.enable_progress_bar()
        for library, level in zip(libraries, verbosity):
            library.set_verbosity(level)
