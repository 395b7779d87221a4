"""coldpress: batch archival compression of imagery at extreme bitrates."""

from pathlib import Path


def samples_path() -> Path:
    """The folder of small sample photographs shipped with coldpress (public domain and CC0; their
    sources and licences are in samples/SOURCES.md, beside the folder; made by tools/make_samples.py)."""
    return Path(__file__).resolve().parent / "samples" / "photos"
