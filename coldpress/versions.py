"""Installed versions of coldpress and the packages that define its output (one lookup for all)."""

from __future__ import annotations

from functools import lru_cache
from importlib import metadata


@lru_cache(maxsize=None)
def installed_version(dist: str) -> str:
    """The installed version of distribution ``dist``, or "" when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def coldpress_version() -> str:
    """The installed coldpress version ("0+unknown" when run from a tree that was never installed)."""
    return installed_version("coldpress") or "0+unknown"
