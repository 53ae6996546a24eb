"""Loading any model from a local folder or the Hugging Face Hub, with clear errors and no minute of retries offline."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

from ..errors import StyleGalleryError, first_line
from ..progress import quiet_loading


class ModelUnavailable(StyleGalleryError):
    """A model could not be found locally nor loaded from the Hub."""


def hub_is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers within ``timeout`` seconds (through the configured proxies)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
        return True
    except Exception:
        return False


def load_model(kind: str, name: str, loader):
    """``loader(path_or_id, local_files_only)`` with clear errors; a Hub id is looked up in the local cache
    first, and the Hub is asked only if it answers within a few seconds (no minute of retries offline)."""
    local = Path(name).expanduser()
    looks_local = local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not local.is_dir():
        raise ModelUnavailable(f"{kind} model folder not found: {name} (give an existing folder or a Hub id)")
    errors = (OSError, ValueError, KeyError, json.JSONDecodeError)
    where = "in the folder" if looks_local else "on the Hugging Face Hub or in the local cache"
    try:
        with warnings.catch_warnings(), quiet_loading():
            warnings.simplefilter("ignore")
            if looks_local:
                return loader(str(local), False)
            try:
                return loader(name, True)
            except errors:
                if hub_is_offline():
                    raise
            print(f"stylegallery: no local copy of the {kind} model {name}; asking the Hugging Face Hub...",
                  file=sys.stderr, flush=True)
            if not hub_reachable():
                raise ModelUnavailable(f"cannot load the {kind} model {name!r}: no local copy, and the Hugging Face "
                                       "Hub did not answer within 3 s (no network?)")
            return loader(name, False)
    except StyleGalleryError:
        raise
    except errors as exc:
        raise ModelUnavailable(f"cannot load the {kind} model {name!r} {where}: {first_line(exc)}") from None
