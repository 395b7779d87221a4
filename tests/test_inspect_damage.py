"""``coldpress inspect`` on a damaged archive: it reads every part on its own, summarizes the intact
ones and lists each damaged part with the ids it held (exit status 1), instead of stopping at the
first unreadable file; random damage anywhere never makes it crash."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

from coldpress.jobs import cli
from coldpress.pipelines.local import encode_local
from synthetic_images import natural_image


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """9 images in 3 shards of 3, one rejected input."""
    root = tmp_path_factory.mktemp("inspect")
    src = root / "src"
    src.mkdir()
    for i in range(9):
        Image.fromarray(natural_image(48, 64, seed=500 + i)).save(src / f"{i}.png")
    (src / "notes.txt").write_text("not an image")
    dst = root / "archive"
    encode_local(src, dst, codec="jpeg", bpp=2.0, rows_per_shard=3, progress=False, workers=1)
    return dst


def _work(archive: Path, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(archive, work)
    return work


def _inspect(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["inspect", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_intact_archive_still_inspects_with_status_0(archive, capsys):
    code, out, _ = _inspect(capsys, str(archive))
    assert code == 0 and "images       9 in 3 shard(s)" in out and "DAMAGED" not in out


def test_truncated_shard_is_listed_with_its_ids_and_the_rest_summarized(archive, tmp_path, capsys):
    work = _work(archive, tmp_path)
    shard = work / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-30])  # its footer gone
    code, out, err = _inspect(capsys, str(work))
    assert code == 1, err
    assert "DAMAGED: 1 part(s) cannot be read" in out
    assert "images       6 readable in the intact parts" in out
    assert "part-00001.parquet is damaged" in out and "3 row(s) with ids '3.png' to '5.png'" in out
    code, out, _ = _inspect(capsys, str(work), "--json", "--ids")
    stats = json.loads(out)
    assert code == 1 and stats["readable_rows"] == 6 and len(stats["damaged"]) == 1
    assert stats["ids"] == ["0.png", "1.png", "2.png", "6.png", "7.png", "8.png"]


def test_damaged_side_files_are_each_reported(archive, tmp_path, capsys):
    work = _work(archive, tmp_path)
    manifest = work / "_manifest.json"
    manifest.write_text(manifest.read_text().replace('"archived": 9', '"archived": 19', 1))
    rejected = work / "_rejected" / "rejected.parquet"
    rejected.write_bytes(rejected.read_bytes()[:50])
    code, out, _ = _inspect(capsys, str(work))
    assert code == 1
    assert "DAMAGED: 2 part(s)" in out and "images       9 readable" in out
    assert "_manifest.json is damaged" in out and "checksum does not match" in out
    assert "_rejected/rejected.parquet is damaged" in out and "no archived image is lost" in out


def test_no_archive_there_is_still_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out, err = _inspect(capsys, str(tmp_path / "empty"))
    assert code == 1 and out == "" and "coldpress inspect: error:" in err and "archive" in err


def test_random_damage_never_crashes_inspect(archive, tmp_path, capsys):
    files = sorted(p.relative_to(archive) for p in archive.rglob("*") if p.is_file())
    rng = random.Random(13)
    damaged = 0
    for case in range(60):
        work = _work(archive, tmp_path)
        target = work / rng.choice(files)
        data = bytearray(target.read_bytes())
        if rng.random() < 0.5:
            data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        else:
            data = data[:rng.randrange(len(data))]
        target.write_bytes(bytes(data))
        code = cli.main(["inspect", str(work), "--json"])  # a crash raises here; errors return 1
        out = capsys.readouterr().out
        assert code in (0, 1), f"case {case}: {target.name}"
        if code == 1 and out:
            stats = json.loads(out)
            damaged += 1
            assert stats["damaged"] and stats["readable_rows"] <= 9, f"case {case}"
    assert damaged >= 20  # most damage is seen (the rest lands in bitstream pages, which inspect does not read)
