"""StyleGallery: training-free, semantic-aware style transfer on Stable Diffusion, stage by stage."""

from . import threads  # first: OpenMP's wait policy must be set before torch loads (see stylegallery.threads)
from .cache import TensorCache
from .errors import StyleGalleryError
from .pipeline import STAGES, StepInfo, StyleGallery, StyleGalleryOutput
from .session import Session
from .results import Inversion, Matching, Prepared, Segmentation, Stylization

__all__ = [
    "STAGES", "Inversion", "Matching", "Prepared", "Segmentation", "Session", "StepInfo", "StyleGallery",
    "StyleGalleryError", "StyleGalleryOutput", "Stylization", "TensorCache",
]
__version__ = "0.1.0"
