"""The stages' progress bars: ``tqdm.auto``'s, except that a notebook bar closed with ``leave=False`` leaves no output;
and :func:`quiet_progress`, which silences other libraries' bars where ours say enough.

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
def quiet_progress():
    """No progress bars of transformers or diffusers (loading or writing weights) in the block: they take a
    fraction of a second, and a notebook shows one bar each. Downloads from the Hub keep theirs."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = [lib for lib in (transformers_logging, diffusers_logging) if lib.is_progress_bar_enabled()]
    for library in libraries:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library in libraries:
            library.enable_progress_bar()
