"""The ``coldpress`` command end to end: local paths, a real S3 server on loopback, the console script.

Commands run in-process through ``coldpress.jobs.cli.main`` (fast), except one test that runs the
installed ``coldpress`` console script in a subprocess. Every archive is real Parquet on disk or on
moto's S3 server; every image is generated here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from coldpress.jobs.cli import SUBCOMMANDS, main
from coldpress.transforms.archive import open_archive, write_shard
from synthetic_images import natural_image

CODEC = "webp"  # fast, and reaches BPP on the 96x128 test images
BPP = "0.5"
GOOD = {  # key -> (height, width, mode, format)
    "a.png": (96, 128, "RGB", "PNG"),
    "b.jpg": (128, 96, "RGB", "JPEG"),
    "sub/c.png": (96, 128, "L", "PNG"),
    "sub/deeper/d.tif": (100, 120, "RGB", "TIFF"),
}
BAD = ("empty.png", "notes.txt", "truncated.png", "tiny.png")


def _image_bytes(key: str, seed: int) -> bytes:
    h, w, mode, fmt = GOOD[key]
    buf = io.BytesIO()
    Image.fromarray(natural_image(h, w, mode, seed=seed)).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _bad_files() -> dict[str, bytes]:
    png = io.BytesIO()
    Image.fromarray(natural_image(96, 128, "RGB", seed=9)).save(png, format="PNG")
    tiny = io.BytesIO()
    Image.fromarray(natural_image(8, 8, "RGB", seed=10)).save(tiny, format="PNG")  # the header alone exceeds the budget
    return {
        "empty.png": b"",
        "notes.txt": b"shopping list: milk, eggs\n",
        "truncated.png": png.getvalue()[: len(png.getvalue()) // 2],
        "tiny.png": tiny.getvalue(),
    }


def make_tree(root: Path, keys=tuple(GOOD), bad: bool = True) -> Path:
    """A source folder with the GOOD images (``keys`` of them) and, with ``bad``, the BAD inputs."""
    for i, key in enumerate(keys):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_image_bytes(key, seed=i))
    if bad:
        for name, data in _bad_files().items():
            (root / name).write_bytes(data)
    (root / ".hidden.png").write_bytes(_image_bytes("a.png", seed=99))  # hidden files are not sources
    return root


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def encode(capsys, src, dst, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "encode", src, dst, "--bpp", BPP, "--codec", CODEC, *extra)


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """(src, archive) encoded once for the read-only tests of this module."""
    root = tmp_path_factory.mktemp("encoded")
    src = make_tree(root / "src")
    dst = root / "archive"
    assert main(["encode", str(src), str(dst), "--bpp", BPP, "--codec", CODEC, "--quiet"]) == 0
    return src, dst


# -- encode ---------------------------------------------------------------------------------------
def test_subcommands_are_registered(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in ("encode", "restore", "inspect", "verify", "upgrade"):
        assert name in SUBCOMMANDS and name in out


def test_encode_archives_good_inputs_and_rejects_bad_ones(tmp_path, capsys):
    src = make_tree(tmp_path / "src")
    rc, out, err = encode(capsys, src, tmp_path / "archive")
    assert rc == 0, err
    archive = open_archive(tmp_path / "archive")
    table = archive.read()
    assert sorted(table.column("id").to_pylist()) == sorted(GOOD)
    for row in table.to_pylist():
        h, w, mode, fmt = GOOD[row["id"]]
        assert (row["height"], row["width"], row["mode"], row["source_format"]) == (h, w, mode, fmt)
        assert row["codec"] == CODEC and row["target_bpp"] == float(BPP)
        assert 0 < row["achieved_bpp"] <= float(BPP)
        assert row["achieved_bpp"] == pytest.approx(8 * len(row["bitstream"]) / (w * h))
        assert row["bitstream_sha256"] == hashlib.sha256(row["bitstream"]).hexdigest()
        assert row["source_sha256"] == hashlib.sha256((src / row["id"]).read_bytes()).hexdigest()
        assert row["psnr"] > 20
    reasons = {r["id"]: r["reason"] for r in archive.rejected().to_pylist()}
    assert sorted(reasons) == sorted(BAD)
    assert "empty" in reasons["empty.png"]
    assert "not an image" in reasons["notes.txt"]
    assert "truncated" in reasons["truncated.png"]
    assert reasons["tiny.png"].startswith("RateUnreachableError") and "--bpp" in reasons["tiny.png"]
    manifest = archive.manifest
    assert manifest["engine"] == "local" and manifest["complete"] is True
    assert (manifest["archived"], manifest["rejected"], manifest["skipped"]) == (4, 4, 0)
    assert manifest["codec"] == CODEC and manifest["target_bpp"] == float(BPP)
    # The summary names the counts and every rejected input with its reason.
    assert "archived 4, rejected 4, skipped 0" in out
    for name in BAD:
        assert f"  {name}: " in out


def test_encode_report_prints_one_line_per_image(tmp_path, capsys):
    src = make_tree(tmp_path / "src", bad=False)
    rc, out, _ = encode(capsys, src, tmp_path / "archive", "--report")
    assert rc == 0
    rows = {r["id"]: r for r in open_archive(tmp_path / "archive").read().to_pylist()}
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["id", "size"] and "PSNR" in lines[0]
    for rid, row in rows.items():
        line = next(line for line in lines if line.startswith(rid + " "))
        fields = line.split()
        assert fields[1] == f"{row['width']}x{row['height']}"
        assert int(fields[4]) == len(row["bitstream"])
        assert float(fields[5]) == pytest.approx(row["achieved_bpp"], abs=1e-4)
        assert float(fields[6]) == pytest.approx(row["psnr"], abs=0.01)
    total = next(line for line in lines if line.startswith("total "))
    assert int(total.split()[2]) == sum(len(r["bitstream"]) for r in rows.values())


def test_encode_report_compares_with_avif_half_at_the_same_bytes(tmp_path, capsys):
    from coldpress.codec import get_codec
    from coldpress.metrics import psnr
    from coldpress.transforms.read import decode_input

    src = make_tree(tmp_path / "src", bad=False)
    rc, out, _ = encode(capsys, src, tmp_path / "archive", "--report", "--compare", "avif-half")
    assert rc == 0
    lines = out.splitlines()
    assert "avif-half PSNR at same B" in lines[0]
    avif = get_codec("avif-half")
    for row in open_archive(tmp_path / "archive").read().to_pylist():
        fields = next(line for line in lines if line.startswith(row["id"] + " ")).split()
        image = decode_input((src / row["id"]).read_bytes(), row["id"]).pixels
        budget = len(row["bitstream"])
        try:
            ref = avif.encode(image, bpp=(budget + 0.5) * 8 / (row["width"] * row["height"])).bitstream
        except Exception:  # noqa: BLE001 - avif-half cannot go that low
            assert fields[7] == "-"
            continue
        assert len(ref) <= budget and fields[8] == f"({len(ref)}"
        assert float(fields[7]) == pytest.approx(psnr(image, avif.decode(ref)), abs=0.01)


def test_linked_files_are_archived_and_links_to_nothing_or_to_folders_rejected_with_what_to_do(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "real.png").write_bytes(_image_bytes("a.png", 3))
    src = tmp_path / "src"
    src.mkdir()
    (src / "linked.png").symlink_to(elsewhere / "real.png")
    (src / "dangling.png").symlink_to(elsewhere / "gone.png")
    (src / "folder").symlink_to(elsewhere)
    os.mkfifo(elsewhere / "pipe")
    (src / "pipe.png").symlink_to(elsewhere / "pipe")  # reading it would block: skipped, as a FIFO itself is
    rc, _, err = encode(capsys, src, tmp_path / "archive")
    assert rc == 0, err
    archive = open_archive(tmp_path / "archive")
    assert archive.read(columns=["id"]).column("id").to_pylist() == ["linked.png"]
    reasons = dict(zip(*archive.rejected().select(["id", "reason"]).to_pydict().values()))
    assert sorted(reasons) == ["dangling.png", "folder"]
    assert "a link's target too" in reasons["dangling.png"]
    assert "pass that folder as a source" in reasons["folder"]


def test_strict_exits_2_when_anything_is_rejected(tmp_path, capsys):
    rc, out, err = encode(capsys, make_tree(tmp_path / "src"), tmp_path / "archive", "--strict")
    assert rc == 2
    assert "4 of 8 input(s) were rejected (strict mode)" in err
    # Everything that could be archived still was, and the rejections are recorded.
    archive = open_archive(tmp_path / "archive")
    assert archive.num_rows == 4 and archive.rejected().num_rows == 4
    rc, _, _ = encode(capsys, make_tree(tmp_path / "good", bad=False), tmp_path / "archive2", "--strict")
    assert rc == 0


def test_default_codec_is_recorded(tmp_path, capsys):
    from coldpress.defaults import DEFAULT_CODEC

    src = tmp_path / "src"
    src.mkdir()
    (src / "big.png").write_bytes(_image_bytes("a.png", 0))
    rc, _, err = run_cli(capsys, "encode", src, tmp_path / "archive", "--bpp", "2")
    assert rc == 0, err
    archive = open_archive(tmp_path / "archive")
    assert archive.manifest["codec"] == DEFAULT_CODEC
    assert archive.read(columns=["codec"]).column("codec").to_pylist() == [DEFAULT_CODEC]


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["encode", "{tmp}/nowhere", "{tmp}/a", "--bpp", "0.1"], ["coldpress encode: error:", "does not exist"]),
        (["encode", "{tmp}", "{tmp}/a", "--bpp", "0.1", "--codec", "nosuchcodec"], ["unknown codec 'nosuchcodec'"]),
        (["inspect", "{tmp}"], ["coldpress inspect: error:", "not a coldpress archive"]),
        (["verify", "{tmp}/nowhere"], ["no archive at"]),
        (["restore", "{tmp}/nowhere", "{tmp}/out", "--all"], ["no archive at"]),
        (["encode", "{tmp}", "{tmp}/a", "--bpp", "0.1", "--actors", "2"],
         ["--actors only works with --engine ray", "this run uses --engine local"]),
        (["restore", "{tmp}/nowhere", "{tmp}/out", "--all", "--engine", "beam", "--address", "auto", "--batch-size", "2"],
         ["--address --batch-size only work with --engine ray", "drop them"]),
    ],
)
def test_errors_print_one_line_and_exit_1(tmp_path, capsys, argv, fragments):
    rc, _, err = run_cli(capsys, *(a.format(tmp=tmp_path) for a in argv))
    assert rc == 1
    assert_one_line_error(err, *fragments)
    assert not (tmp_path / "a").exists() and not (tmp_path / "out").exists()  # nothing written


def test_bad_arguments_are_refused_by_the_parser(tmp_path, capsys):
    for argv in (["encode", str(tmp_path), str(tmp_path / "a"), "--bpp", "-1"],
                 ["encode", str(tmp_path), str(tmp_path / "a")],
                 ["restore", str(tmp_path), str(tmp_path / "out")]):  # neither --id nor --all
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "--bpp" in capsys.readouterr().err


# -- resume ---------------------------------------------------------------------------------------
def test_resume_skips_archived_ids_and_leaves_no_duplicates(tmp_path, capsys):
    src = make_tree(tmp_path / "src", keys=("a.png", "sub/c.png"), bad=False)
    (src / "truncated.png").write_bytes(_bad_files()["truncated.png"])
    dst = tmp_path / "archive"
    rc, out, _ = encode(capsys, src, dst)
    assert rc == 0 and "archived 2, rejected 1, skipped 0" in out
    first_shard = (dst / "part-00000.parquet").read_bytes()

    make_tree(src, keys=tuple(GOOD), bad=False)  # rewrites a.png and sub/c.png identically, adds two
    good = io.BytesIO()
    Image.fromarray(natural_image(96, 128, "RGB", seed=5)).save(good, format="PNG")
    (src / "truncated.png").write_bytes(good.getvalue())  # fixed: archived on the next run
    rc, out, _ = encode(capsys, src, dst)
    assert rc == 0 and "archived 3, rejected 0, skipped 2 already archived" in out

    archive = open_archive(dst)
    ids = archive.read(columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted([*GOOD, "truncated.png"])  # each id exactly once
    assert [s.name for s in archive.shards] == ["part-00000.parquet", "part-00001.parquet"]
    assert (dst / "part-00000.parquet").read_bytes() == first_shard  # earlier shards are not rewritten
    assert archive.rejected().num_rows == 0  # the fixed input left the rejected table
    assert len(archive.manifest["runs"]) == 2

    rc, out, _ = encode(capsys, src, dst)
    assert rc == 0 and "archived 0, rejected 0, skipped 5" in out
    assert open_archive(dst).num_rows == 5

    rc, _, err = encode(capsys, src, dst, "--no-resume")
    assert rc == 1
    assert_one_line_error(err, "already holds an archive of 5 image(s)")
    assert open_archive(dst).num_rows == 5


def test_an_archive_inside_its_source_does_not_archive_itself(tmp_path, capsys):
    src = make_tree(tmp_path / "src", keys=("a.png",), bad=False)
    for _ in range(2):
        rc, out, _ = encode(capsys, src, src / "archive")
        assert rc == 0
    assert "rejected 0" in out
    assert open_archive(src / "archive").read(columns=["id"]).column("id").to_pylist() == ["a.png"]


# -- inspect --------------------------------------------------------------------------------------
def test_inspect_text_and_json(encoded, capsys):
    _, dst = encoded
    rc, out, _ = run_cli(capsys, "inspect", dst)
    assert rc == 0
    assert "images       4 in 1 shard(s)" in out
    assert "rejected     4" in out
    assert f"codecs       {CODEC}: 4" in out
    assert "InputRejected: 3, RateUnreachableError: 1" in out
    assert "  notes.txt: InputRejected:" in out

    rc, out, _ = run_cli(capsys, "inspect", dst, "--json", "--ids")
    assert rc == 0
    stats = json.loads(out)
    rows = open_archive(dst).read().to_pylist()
    assert stats["num_rows"] == 4 and stats["num_rejected"] == 4
    assert stats["codecs"] == {CODEC: 4}
    assert stats["rejected_kinds"] == {"InputRejected": 3, "RateUnreachableError": 1}
    assert sorted(r["id"] for r in stats["rejected"]) == sorted(BAD)
    assert stats["bitstream_bytes"] == sum(len(r["bitstream"]) for r in rows)
    bpps = sorted(r["achieved_bpp"] for r in rows)
    assert stats["bpp"]["min"] == pytest.approx(bpps[0]) and stats["bpp"]["max"] == pytest.approx(bpps[-1])
    assert stats["ids"] == sorted(GOOD)
    assert stats["complete"] is True and stats["engine"] == "local"


# -- verify and restore ---------------------------------------------------------------------------
def test_verify_passes_on_a_fresh_archive(encoded, capsys):
    rc, out, err = run_cli(capsys, "verify", encoded[1])
    assert rc == 0, err
    assert "verified 4 image(s)" in out


def test_restore_all_and_by_id(encoded, tmp_path, capsys):
    src, dst = encoded
    rc, out, _ = run_cli(capsys, "restore", dst, tmp_path / "all", "--all")
    assert rc == 0 and "restored 4 image(s)" in out
    written = sorted(p.relative_to(tmp_path / "all").as_posix() for p in (tmp_path / "all").rglob("*") if p.is_file())
    assert written == ["a.png", "b.png", "sub/c.png", "sub/deeper/d.png"]
    rows = {r["id"]: r for r in open_archive(dst).read().to_pylist()}
    for key, (h, w, mode, _) in GOOD.items():
        restored = Image.open(tmp_path / "all" / (key.rsplit(".", 1)[0] + ".png"))
        assert restored.size == (w, h) and restored.mode == mode
        pixels = np.asarray(restored)
        # The restored file holds exactly the pixels verified when the row was written.
        assert hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest() == rows[key]["recon_sha256"]
        original = np.asarray(Image.open(src / key))
        mse = np.mean((original.astype(float) - pixels.astype(float)) ** 2)
        assert 10 * np.log10(255**2 / mse) == pytest.approx(rows[key]["psnr"], abs=0.01)

    rc, out, _ = run_cli(capsys, "restore", dst, tmp_path / "one", "--id", "sub/c.png", "--id", "b.jpg", "--format", "webp")
    assert rc == 0 and "restored 2 image(s)" in out
    written = sorted(p.relative_to(tmp_path / "one").as_posix() for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert written == ["b.webp", "sub/c.webp"]
    with Image.open(tmp_path / "one" / "b.webp") as im:
        assert im.format == "WEBP" and im.size == (96, 128)

    rc, _, err = run_cli(capsys, "restore", dst, tmp_path / "none", "--id", "nope.png")
    assert rc == 1
    assert_one_line_error(err, "'nope.png'", "not in the archive")
    assert not (tmp_path / "none").exists()


def _corrupt_row(archive: Path, rid: str, how: str) -> None:
    """Rewrite the shard holding ``rid`` with that row damaged in one way."""
    shard = archive / "part-00000.parquet"
    rows = pq.ParquetFile(shard).read().to_pylist()
    row = next(r for r in rows if r["id"] == rid)
    data = bytearray(row["bitstream"])
    if how == "flipped-byte":  # the bytes changed after writing: the recorded sha256 catches it
        data[len(data) // 2] ^= 0x01
        row["bitstream"] = bytes(data)
    elif how == "flipped-byte-rehashed":  # the row's hash was updated too: the container CRC catches it
        data[len(data) // 2] ^= 0x01
        row["bitstream"] = bytes(data)
        row["bitstream_sha256"] = hashlib.sha256(row["bitstream"]).hexdigest()
    elif how == "other-pixels":  # an intact bitstream whose decoded pixels are not those recorded
        row["recon_sha256"] = hashlib.sha256(b"other pixels").hexdigest()
    write_shard(archive, 0, pa.Table.from_pylist(rows, schema=pq.read_schema(shard)), overwrite=True)


def _fake_recon(archive: Path, rid: str, written_on: str | None = None) -> dict:
    """Give row ``rid`` a recon_sha256 its pixels do not have (as another kind of device records), and,
    with ``written_on``, that kind of device in its metadata; return the row's metadata as it was."""
    shard = next(archive.glob("part-*.parquet"))
    rows = pq.ParquetFile(shard).read().to_pylist()
    row = next(r for r in rows if r["id"] == rid)
    metadata = json.loads(row["metadata"])
    row["recon_sha256"] = hashlib.sha256(b"another device's pixels").hexdigest()
    if written_on is not None:
        row["metadata"] = json.dumps({**metadata, "decode_device_kind": written_on})
    write_shard(archive, 0, pa.Table.from_pylist(rows, schema=pq.read_schema(shard)), overwrite=True)
    return metadata


def test_verify_accepts_a_float32_models_rows_from_another_kind_of_device_and_catches_a_changed_decoder(
        tmp_path, capsys):
    """A v3 row records the kind of device it was written on. Where its pixels differ from those its
    writer recorded (another kind of CPU, or a GPU, rounds a few samples of a float32 decode the other
    way), it is checked against the float64 reference decode: within one level, on another kind of
    device, it is intact (listed in within_one_level); on the writer's own kind, or from a decoder that
    moved its pixels by more, it fails. A float64 model's row (v2) records no kind and has no leeway."""
    from coldpress.codec.precision_check import device_kind
    from coldpress.codec.registry import get_codec

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(natural_image(96, 128, "RGB", seed=21)).save(src / "a.png")
    for model in ("cp-extreme-s16-v4", "cp-extreme-s16-v3", "cp-extreme-s16-v2"):
        dst = tmp_path / model
        assert main(["encode", str(src), str(dst), "--bpp", "0.1", "--model", model, "--quiet"]) == 0
        metadata = _fake_recon(dst, "a.png")
        rc, out, _ = run_cli(capsys, "verify", dst, "--json")
        report = json.loads(out)
        if model == "cp-extreme-s16-v2":
            assert "decode_device_kind" not in metadata
            assert rc == 1 and [f["id"] for f in report["failures"]] == ["a.png"]
            assert report["within_one_level"] == []
            continue
        assert metadata["decode_device_kind"] == device_kind("cpu")
        assert rc == 1 and [f["id"] for f in report["failures"]] == ["a.png"]  # the writer's own kind
        assert report["within_one_level"] == []
        _fake_recon(dst, "a.png", written_on="cpu:AuthenticAMD:25:1:another kind of CPU:AVX2")
        rc, out, _ = run_cli(capsys, "verify", dst, "--json")
        report = json.loads(out)
        assert rc == 0 and report["failures"] == [] and report["within_one_level"] == ["a.png"]
        rc, out, _ = run_cli(capsys, "verify", dst)
        assert rc == 0 and "1 of them within one level" in out
        tail = get_codec("learned", model=model, device="cpu").loaded.synthesis32.tail  # the model verify loads
        with torch.no_grad():
            tail.bias += 0.02  # the decoder changed: about 5 levels brighter
        try:
            rc, _, err = run_cli(capsys, "verify", dst)
        finally:
            with torch.no_grad():
                tail.bias -= 0.02
        assert rc == 1 and "a.png: " in err and "decodes to different pixels" in err


@pytest.mark.parametrize(
    "how, verify_says",
    [
        ("flipped-byte", "its bitstream's sha256 is"),
        ("flipped-byte-rehashed", "CRC32"),
        ("other-pixels", "decodes to different pixels"),
    ],
)
def test_verify_detects_a_corrupted_row(encoded, tmp_path, capsys, how, verify_says):
    dst = tmp_path / "archive"
    shutil.copytree(encoded[1], dst)
    _corrupt_row(dst, "b.jpg", how)
    rc, out, err = run_cli(capsys, "verify", dst)
    assert rc == 1
    assert "Traceback" not in err
    assert "1 of 4 image(s)" in err and "failed verification" in err
    failure_lines = [line for line in err.splitlines() if line.startswith("  ")]
    assert len(failure_lines) == 1 and failure_lines[0].startswith("  b.jpg: ")
    assert verify_says in failure_lines[0]
    rc, out, _ = run_cli(capsys, "verify", dst, "--json")
    report = json.loads(out)
    assert rc == 1 and report["ok"] == 3 and [f["id"] for f in report["failures"]] == ["b.jpg"]

    if how != "other-pixels":  # a damaged bitstream cannot be restored; the others can
        rc, _, err = run_cli(capsys, "restore", dst, tmp_path / "one", "--id", "b.jpg")
        assert rc == 1
        assert_one_line_error(err, "1 of 1 image(s) could not be restored", "b.jpg", "corrupt")
        assert not (tmp_path / "one" / "b.png").exists()
        rc, _, err = run_cli(capsys, "restore", dst, tmp_path / "all", "--all")
        assert rc == 1
        assert_one_line_error(err, "1 of 4 image(s) could not be restored", "3 written")
        assert sorted(p.name for p in (tmp_path / "all").rglob("*.png")) == ["a.png", "c.png", "d.png"]


# -- S3 -------------------------------------------------------------------------------------------
def test_encode_restore_inspect_on_s3(tmp_path, capsys, s3_server, s3_bucket, s3_options):
    import s3fs

    local_src = make_tree(tmp_path / "src")
    fs = s3fs.S3FileSystem(**s3_options)
    fs.put(str(local_src) + "/", f"{s3_bucket}/src/", recursive=True)
    src, dst = f"s3://{s3_bucket}/src", f"s3://{s3_bucket}/archive"

    rc, out, err = encode(capsys, src, dst, "--endpoint-url", s3_server)
    assert rc == 0, err
    assert "archived 4, rejected 4" in out
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{s3_bucket}/archive"))
    assert names == ["_manifest.json", "_rejected", "part-00000.parquet"]
    archive = open_archive(dst, s3_options)
    assert sorted(archive.read(columns=["id"]).column("id").to_pylist()) == sorted(GOOD)
    assert archive.read(ids=["a.png"], columns=["source_uri"]).column("source_uri")[0].as_py() == f"{src}/a.png"

    # Without --endpoint-url the endpoint comes from the environment (AWS_ENDPOINT_URL, set by the fixture).
    rc, out, _ = run_cli(capsys, "inspect", dst, "--json")
    assert rc == 0
    stats = json.loads(out)
    assert (stats["num_rows"], stats["num_rejected"]) == (4, 4)
    assert stats["path"] == dst

    rc, out, _ = run_cli(capsys, "restore", dst, tmp_path / "restored", "--all", "--endpoint-url", s3_server)
    assert rc == 0 and "restored 4 image(s)" in out
    for key, (h, w, _, _) in GOOD.items():
        with Image.open(tmp_path / "restored" / (key.rsplit(".", 1)[0] + ".png")) as im:
            assert im.size == (w, h)

    rc, _, _ = run_cli(capsys, "restore", dst, f"s3://{s3_bucket}/restored", "--id", "sub/c.png")
    assert rc == 0
    with fs.open(f"{s3_bucket}/restored/sub/c.png", "rb") as f:
        assert Image.open(f).size == (128, 96)

    rc, out, _ = run_cli(capsys, "verify", dst)
    assert rc == 0 and "verified 4 image(s)" in out

    # Resume on S3: the archived inputs are skipped, the rejected ones are tried again.
    rc, out, _ = encode(capsys, src, dst)
    assert rc == 0 and "archived 0, rejected 4, skipped 4" in out
    assert open_archive(dst, s3_options).num_rows == 4


# -- the installed console script -----------------------------------------------------------------
def test_console_script_end_to_end(tmp_path):
    script = shutil.which("coldpress", path=os.path.dirname(sys.executable)) or shutil.which("coldpress")
    if script is None:
        pytest.fail("the `coldpress` console script is not installed; run `pip install -e .` (scripts/test.sh does)")
    src = make_tree(tmp_path / "src", keys=("a.png", "sub/c.png"))
    proc = subprocess.run(
        [script, "encode", str(src), str(tmp_path / "archive"), "--bpp", BPP, "--codec", CODEC, "--report", "--strict"],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 2, proc.stderr
    assert "rejected (strict mode)" in proc.stderr and "Traceback" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["id", "size"]
    assert [line.split()[0] for line in lines[1:3]] == ["a.png", "sub/c.png"]
    assert "archived 2, rejected 4" in proc.stdout
    assert open_archive(tmp_path / "archive").num_rows == 2


# -- sample images --------------------------------------------------------------------------------
def test_samples_are_small_real_photos_with_their_licences():
    import coldpress

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    try:
        import make_samples
    finally:
        sys.path.pop(0)
    folder = coldpress.samples_path()
    shipped = sorted(p.name for p in folder.iterdir())
    assert shipped == sorted(make_samples.SAMPLES)  # only images: encoding the folder rejects nothing
    assert 100_000 < sum(p.stat().st_size for p in folder.iterdir()) < 400_000
    sources = (folder.parent / make_samples.SOURCES_NAME).read_text()
    for name, (function, _what, source, licence) in make_samples.SAMPLES.items():
        line = next(row for row in sources.splitlines() if row.startswith(f"| `{name}` |"))
        assert f"skimage.data.{function}" in line and source in line and licence in line
        assert licence.startswith(("Public domain", "CC0"))
        with Image.open(folder / name) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert 256 <= min(im.size) <= max(im.size) <= make_samples.LONG_SIDE
            pixels = np.asarray(im, dtype=np.float64)
        # A photograph, not a drawing: many distinct colours and no flat regions dominating.
        assert len(np.unique(pixels.reshape(-1, 3).astype(np.uint8), axis=0)) > 20_000, name


def test_verify_and_inspect_report_an_unreadable_shard(encoded, tmp_path, capsys):
    dst = tmp_path / "archive"
    shutil.copytree(encoded[1], dst)
    shard = dst / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    rc, out, _ = run_cli(capsys, "inspect", dst)
    assert rc == 1  # the damage listed, the intact parts summarized (tests/test_inspect_damage.py)
    assert "DAMAGED: 1 part(s)" in out and "part-00000.parquet is damaged" in out and "ids 'a.png' to" in out
    # verify reads the rest and names the damaged shard with the ids it held (tests/test_damage.py)
    rc, _, err = run_cli(capsys, "verify", dst)
    assert rc == 1 and "part-00000.parquet is damaged" in err and "4 row(s) with ids 'a.png' to" in err, err


def test_inspect_an_archive_where_everything_was_rejected(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for name, data in _bad_files().items():
        (src / name).write_bytes(data)
    rc, out, _ = encode(capsys, src, tmp_path / "archive")
    assert rc == 0 and "archived 0, rejected 4" in out
    rc, out, _ = run_cli(capsys, "inspect", tmp_path / "archive")
    assert rc == 0
    assert "images       0 in 0 shard(s)" in out and "rejected     4" in out
    rc, out, _ = run_cli(capsys, "verify", tmp_path / "archive")
    assert rc == 0 and "verified 0 image(s)" in out


def test_encode_takes_a_model_file_and_refuses_learned_options_for_other_codecs(tmp_path, capsys):
    from coldpress.codec.models import default_model_available
    from synthetic_images import model_file

    if not default_model_available():
        pytest.skip("no learned model bundled")
    path = model_file(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(natural_image(64, 96, "RGB", seed=32)).save(src / "im.png")
    assert main(["encode", str(src), str(tmp_path / "a"), "--bpp", "0.3", "--model", str(path),
                 "--no-scale-search", "--quiet"]) == 0
    assert open_archive(str(tmp_path / "a")).read().to_pylist()[0]["model_id"] == "test-model-file"
    assert main(["encode", str(src), str(tmp_path / "b"), "--bpp", "0.3", "--codec", "jpeg", "--tile", "512"]) == 1
    assert "--tile only apply to --codec learned" in capsys.readouterr().err


def test_an_archive_made_with_a_model_file_restores_and_verifies_with_its_folder(tmp_path, capsys, monkeypatch):
    from coldpress.codec.models import MODELS_PATH_ENV, default_model_available
    from synthetic_images import model_file

    if not default_model_available():
        pytest.skip("no learned model bundled")
    monkeypatch.delenv(MODELS_PATH_ENV, raising=False)
    models = tmp_path / "models"
    models.mkdir()
    path = model_file(models, "my-own-model")
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(natural_image(64, 96, "RGB", seed=33)).save(src / "im.png")
    assert main(["encode", str(src), str(tmp_path / "a"), "--bpp", "0.3", "--model", str(path), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["restore", str(tmp_path / "a"), str(tmp_path / "r1"), "--all", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "my-own-model" in err and "COLDPRESS_MODELS" in err
    assert main(["restore", str(tmp_path / "a"), str(tmp_path / "r2"), "--all", "--quiet", "--models", str(models)]) == 0
    assert (tmp_path / "r2" / "im.png").exists()
    assert main(["verify", str(tmp_path / "a"), "--models", str(models)]) == 0
