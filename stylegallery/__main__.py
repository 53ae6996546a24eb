"""``python -m stylegallery`` is the ``stylegallery`` command (and what ``accelerate launch -m stylegallery`` runs)."""

import sys

from .tools.cli import main

sys.exit(main())
