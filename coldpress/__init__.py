"""coldpress: batch archival compression of imagery at extreme bitrates."""

from pathlib import Path


def samples_path() -> Path:
    """The folder of small synthetic sample images shipped with coldpress (made by tools/make_samples.py)."""
    return Path(__file__).resolve().parent / "samples"
