"""Defaults for running the tutorial notebooks as tests (``pytest --nbval-lax notebooks/``).

nbval starts each notebook's kernel with this process's environment, so the values set here reach the
notebooks' parameters cells: tiny random-weight models at 256 px (where the teaching scenes show every effect the
notebooks state, and their checks hold), 30 steps instead of 50, offline. They are only defaults:
a variable already set wins, e.g. ``STYLEGALLERY_MODEL= STYLEGALLERY_SIZE=512 STYLEGALLERY_STEPS=150`` (an
empty model name means the real Stable Diffusion 1.5) runs the notebooks as a user would, on a GPU.
"""

import os

NOTEBOOK_DEFAULTS = {
    "STYLEGALLERY_MODEL": "tiny",
    "STYLEGALLERY_SIZE": "256",
    "STYLEGALLERY_STEPS": "30",
    "HF_HUB_OFFLINE": "1",
}
for _name, _value in NOTEBOOK_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
