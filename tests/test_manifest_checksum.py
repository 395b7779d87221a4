"""The manifest's checksum: a ``_manifest.json`` damaged in a way that still parses as JSON (a changed
count, shard size or id range, a damaged key) is detected and reported, never trusted; a manifest
written before checksums (none recorded) is still read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from coldpress.errors import ArchiveError
from coldpress.jobs import cli
from coldpress.pipelines.local import encode_local, restore_local, verify_local
from coldpress.transforms.archive import open_archive, read_manifest
from coldpress.transforms.archive.manifest import CHECKSUM_KEY, manifest_checksum
from synthetic_images import natural_image


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("checksum")
    src = root / "src"
    src.mkdir()
    for i in range(6):
        Image.fromarray(natural_image(48, 64, seed=200 + i)).save(src / f"{i}.png")
    dst = root / "archive"
    encode_local(src, dst, codec="jpeg", bpp=2.0, rows_per_shard=3, progress=False, workers=1)
    return dst


def _copy(archive: Path, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(archive, work)
    return work


def test_written_manifest_carries_a_matching_checksum(archive):
    raw = json.loads((archive / "_manifest.json").read_text())
    assert raw[CHECKSUM_KEY] == manifest_checksum(raw)
    manifest = read_manifest(archive)
    assert CHECKSUM_KEY not in manifest and manifest["archived"] == 6  # what the caller reads is the content


@pytest.mark.parametrize("edit", [
    ('"archived": 6', '"archived": 7'),  # a count
    ('"rows": 3', '"rows": 2'),  # a shard's row count (a size the reader would trust)
    ('"max_id": "2.png"', '"max_id": "9.png"'),  # a shard's id range (reads skip shards on it)
    ('"checksum"', '"checksuM"'),  # the key itself
])
def test_damage_that_still_parses_is_detected_and_reported(archive, tmp_path, capsys, edit):
    work = _copy(archive, tmp_path)
    path = work / "_manifest.json"
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1))
    json.loads(path.read_text())  # still valid JSON: only the checksum tells
    with pytest.raises(ArchiveError, match="_manifest.json is not a valid coldpress manifest .*damaged.*delete it"
                       "|_manifest.json is not a valid coldpress manifest .*damaged.*delete the manifest"):
        open_archive(work)
    report = verify_local(work, progress=False)
    assert report["ok"] == 6 and report["rows"] == 6  # every row still checked and passed
    assert [f["id"] for f in report["failures"]] == ["_manifest.json"]
    assert "no image is lost: every shard is read without it" in report["failures"][0]["problem"]
    assert cli.main(["verify", str(work)]) == 1
    assert "_manifest.json is damaged" in capsys.readouterr().err
    paths = _restore_all(work, tmp_path)
    assert len(paths) == 6  # the damaged manifest costs no image


def _restore_all(work: Path, tmp_path: Path) -> list[Path]:
    out = tmp_path / "out"
    try:
        restore_local(work, out, fmt="png", progress=False)
    except ArchiveError:
        pass
    return sorted(out.glob("*.png"))


def test_manifest_without_checksum_is_read_as_before(archive, tmp_path):
    work = _copy(archive, tmp_path)
    path = work / "_manifest.json"
    raw = json.loads(path.read_text())
    del raw[CHECKSUM_KEY]
    path.write_text(json.dumps(raw, indent=2))
    assert open_archive(work).manifest["archived"] == 6
    assert verify_local(work, progress=False)["failures"] == []
