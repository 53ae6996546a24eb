"""Jupyter widgets for StyleGallery (anywidget; JupyterLab 4, Notebook 7, VS Code, Colab with ipywidgets 7 or 8).

``RegionView`` (regions over an image: hover, pick, merge, re-segment with a chosen k), ``MaskPainter`` (paint,
lasso, erase, grow or shrink regions, undo, apply and match again), ``MatchMatrix``
(click a cell to override a match, keep content), ``AttentionView`` (click a content point: where the style
loss's target attention sends it in every reference, by timestep, layer, head and mode), ``LossMonitor`` (live
loss curves and previews with a Stop button), ``Compare`` (before/after slider) and ``StageExplorer`` (a fold
per stage with its settings, Run button and pictures; the stages run in a worker thread, so Stop takes effect) and
``Studio`` (the explorer as an app for people who do not code: uploads, samples, Run, downloads; ``stylegallery
studio`` serves it as a web page).
Each widget also carries a static PNG for notebooks viewed without a kernel.
"""

from .attention_view import AttentionView
from .compare import Compare
from .explorer import StageExplorer
from .loss_monitor import LossMonitor
from .mask_painter import MaskPainter
from .match_matrix import MatchMatrix
from .region_view import RegionView
from .studio import Studio

__all__ = ["AttentionView", "Compare", "LossMonitor", "MaskPainter", "MatchMatrix", "RegionView", "StageExplorer",
           "Studio"]
