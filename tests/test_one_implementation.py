"""One implementation of each helper: the PSNR, the version lookup, the bpp check, the filesystem
resolution (with the S3 endpoint from the environment) and the image listing each live in one place,
and everything else calls it (before, four PSNRs with different caps and channel rules disagreed)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import numpy as np

PACKAGE = Path(__file__).resolve().parents[1] / "coldpress"


@functools.lru_cache(maxsize=1)
def _sources() -> dict[str, ast.AST]:
    return {str(p.relative_to(PACKAGE.parent)): ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}


def _defining(name: str) -> list[str]:
    return sorted(path for path, tree in _sources().items() for node in ast.walk(tree)
                  if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name)


def _calling(attr: str, owner: str) -> list[str]:
    """Modules calling ``<owner>.<attr>(...)`` (e.g. metadata.version, core.url_to_fs)."""
    found = set()
    for path, tree in _sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
                value = node.func.value
                name = value.attr if isinstance(value, ast.Attribute) else getattr(value, "id", "")
                if name == owner:
                    found.add(path)
    return sorted(found)


def test_each_helper_is_defined_once():
    assert _defining("psnr") + _defining("_psnr") == ["coldpress/metrics.py"]
    assert _defining("check_bpp") == ["coldpress/codec/base.py"]
    assert _defining("list_images") == ["coldpress/transforms/sources.py"]  # bench.common._list_images only wraps it
    assert _defining("coldpress_version") == ["coldpress/versions.py"]
    assert _defining("_version") == [] and _defining("_coldpress_version") == []


def _called(name: str) -> list[str]:
    """Modules calling ``name(...)`` or ``<anything>.name(...)``."""
    return sorted({path for path, tree in _sources().items() for node in ast.walk(tree) if isinstance(node, ast.Call)
                   and (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) == name})


def test_raster_headers_are_checked_in_one_place():
    """Every reader of a raster package goes through ``unpack_package``, which checks its header
    (``bounds.read_header``); nothing else parses or checks one (records.py did, beside it)."""
    bounds = "coldpress/transforms/raster/bounds.py"
    assert _defining("read_header") == _defining("check_header") == [bounds]
    assert _called("read_header") == ["coldpress/transforms/raster/package.py"]
    assert _called("check_header") == [bounds] and _called("package_header") == []


def test_versions_and_filesystems_are_looked_up_in_one_place():
    assert _calling("version", "metadata") == ["coldpress/versions.py"]
    assert _calling("url_to_fs", "core") == ["coldpress/transforms/sources.py"]


def test_the_archive_rows_psnr_is_the_benchmarks_psnr():
    """Alpha is stored losslessly and left out of every PSNR; the cap is the same everywhere."""
    from coldpress.metrics import PSNR_CAP_DB, psnr
    from coldpress.transforms import records

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    other = rgba.copy()
    other[..., 3] = 0  # a different alpha only
    other[0, 0, 0] ^= 8
    assert records.psnr is psnr and records.PSNR_CAP == PSNR_CAP_DB == 99.0
    assert psnr(rgba, other) == psnr(rgba[..., :3], other[..., :3])
    assert psnr(rgba, rgba) == 99.0
