"""Where mtsearch keeps its per-user caches (decoded frames, the built-in synthetic dataset).

Order: an explicit folder (config `data.cache_dir`), `$MTSEARCH_CACHE`, `$XDG_CACHE_HOME/mtsearch`,
`~/.cache/mtsearch`. Clearing the cache is `rm -rf` of that folder; everything in it is rebuilt.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("MTSEARCH_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mtsearch"


def frames_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Decoded-frame cache shared by all trials (see mtsearch.data.cache)."""
    return cache_root(explicit) / "frames"


def synthetic_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Parent folder of built-in synthetic datasets (one subfolder per generator version and seed)."""
    return cache_root(explicit) / "synthetic"
