"""Random-weight test models of every architecture StyleGallery loads, built offline and loaded back through the
normal loading code; and a writer of the original single-file layout, to test that loading path.

Production code reaches this package in one place only: :mod:`stylegallery.models.sources`, which resolves the
test models' names (``from_pretrained("tiny")``, and the offline fallback of the default model).
"""

from .build import ARCHITECTURES, TEST_MODEL_MARKER, TEST_MODEL_VERSION, cached_test_models, make_test_models
from .single_file import save_single_file

__all__ = ["ARCHITECTURES", "TEST_MODEL_MARKER", "TEST_MODEL_VERSION", "cached_test_models", "make_test_models",
           "save_single_file"]
