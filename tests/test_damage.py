"""Random damage (flipped bytes, truncations) anywhere in an archive: data pages, footers, the
manifest, the rejected table. verify reports every damaged row by id and never passes a row whose
pixels differ from the ones archived; every row of an undamaged part is still read and checked."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coldpress.jobs import cli
from coldpress.errors import ArchiveError
from coldpress.pipelines.local import encode_local, restore_local, verify_local
from coldpress.transforms.archive import open_archive
from coldpress.transforms.archive.salvage import salvage
from coldpress.transforms.records import decode_record, restored_names
from synthetic_images import natural_image

CASES = 300


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """12 images in 3 shards (4 rows each), a rejected input, a manifest; and the pixels of each id."""
    root = tmp_path_factory.mktemp("damage")
    src = root / "src"
    src.mkdir()
    for i in range(12):
        Image.fromarray(natural_image(48, 64, seed=200 + i)).save(src / f"{i:02d}.png")
    (src / "notes.txt").write_text("not an image")
    dst = root / "archive"
    encode_local(src, dst, codec="jpeg", bpp=2.0, rows_per_shard=4, progress=False, workers=1)
    pixels = {r["id"]: decode_record(r) for r in open_archive(dst).read().to_pylist()}
    assert len(pixels) == 12 and len(open_archive(dst).shards) == 3
    return dst, pixels


def _damage(path: Path, rng: random.Random) -> str:
    data = bytearray(path.read_bytes())
    if rng.random() < 0.5:
        i = rng.randrange(len(data))
        data[i] ^= rng.randrange(1, 256)
        how = f"byte {i} flipped"
    else:
        n = rng.randrange(len(data))
        data = data[:n]
        how = f"cut to {n} bytes"
    path.write_bytes(bytes(data))
    return how


def _reported(rid: str, failed: set[str]) -> bool:
    return rid in failed or any(".." in f and f.split("..")[0] <= rid <= f.split("..")[1] for f in failed)


def test_random_damage_is_reported_by_id_and_never_decodes_to_wrong_pixels(archive, tmp_path):
    dst, pixels = archive
    files = sorted(p.relative_to(dst) for p in dst.rglob("*") if p.is_file())
    assert {str(f) for f in files} >= {"_manifest.json", "_rejected/rejected.parquet", "part-00000.parquet"}
    rng = random.Random(20261201)
    detected = 0
    for case in range(CASES):
        work = tmp_path / "case"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(dst, work)
        target = rng.choice(files)
        how = _damage(work / target, rng)
        where = f"case {case}: {target} {how}"

        report = verify_local(work, progress=False)  # never raises for damage
        failed = {f["id"] for f in report["failures"]}
        detected += bool(report["failures"])
        passed = 0
        for kind, item in salvage(work):
            if kind != "rows":
                continue
            for row in item.to_pylist():
                try:
                    decoded = decode_record(row)
                except Exception:  # noqa: BLE001 - refused: verify must have named it
                    assert _reported(row["id"], failed), where
                    continue
                if row["id"] in pixels and np.array_equal(decoded, pixels[row["id"]]):
                    passed += 1
                else:  # wrong pixels or a changed id: verify must fail it
                    assert _reported(row["id"], failed), f"{where}: {row['id']!r} decoded wrongly, not reported"
        # Every id is intact (read and decoded to its pixels) or reported by id (or its shard's id range).
        unreported = [rid for rid in pixels if not _reported(rid, failed)]
        assert len(unreported) <= passed, f"{where}: ids neither intact nor reported"
        assert report["ok"] <= passed, where
        if str(target).startswith("part-"):
            # The other shards' rows are all still read and pass.
            assert passed >= 8, f"{where}: undamaged shards were not read"
        if case % 3 == 0:  # restore --all: every intact row written with its pixels, the damaged ones listed
            out = tmp_path / "restored"
            shutil.rmtree(out, ignore_errors=True)
            try:
                restore_local(work, out, fmt="png", progress=False)
                listed = ""
            except ArchiveError as exc:
                listed = str(exc)
            names = restored_names(sorted(pixels), "png")
            written = {rid for rid, name in names.items() if (out / name).exists()}
            for rid in written:
                assert np.array_equal(np.asarray(Image.open(out / names[rid])), pixels[rid]), f"{where}: {rid}"
            missing = set(pixels) - written
            assert all(_reported(rid, failed) for rid in missing), f"{where}: {missing} neither restored nor reported"
            assert bool(missing) == bool(listed), f"{where}: {listed}"
            assert len(written) >= (8 if str(target).startswith("part-") else 12), where
    assert detected >= CASES * 0.8  # most random damage lands on checked bytes (the rest: padding, unused)


def test_cli_verify_exits_1_and_names_the_damaged_shard(archive, tmp_path, capsys):
    dst, _ = archive
    work = tmp_path / "cut"
    shutil.copytree(dst, work)
    shard = work / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-20])  # footer gone
    assert cli.main(["verify", str(work)]) == 1
    err = capsys.readouterr().err
    assert "part-00001.parquet is damaged" in err and "04.png" in err  # the shard's id range
    report = verify_local(work, progress=False)
    assert report["ok"] == 8 and report["rows"] == 12
    # restore --all writes the 8 intact images, then says which could not be restored.
    assert cli.main(["restore", str(work), str(tmp_path / "out"), "--all", "--format", "png"]) == 1
    err = capsys.readouterr().err
    assert "of 12 image(s) could not be restored" in err and "(8 written to" in err, err
    assert "part-00001.parquet is damaged" in err and "4 row(s) with ids '04.png' to '07.png'" in err, err
    assert len(list((tmp_path / "out").glob("*.png"))) == 8
