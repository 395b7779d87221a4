"""Hostile archives and bitstreams: consistent checksums around absurd declarations (a bitstream of a
few bytes claiming a 1,048,576 x 1,048,576 image, a raster of 10 million bands or a million tiles,
JSON nested 100,000 levels, a Parquet footer that lies) are refused with a BitstreamError or
ArchiveError naming what is wrong, within bounded memory (tracemalloc sees numpy's allocations) and
time (a subprocess with a timeout); a job over such an archive restores every other row."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from coldpress.codec import container, get_codec
from coldpress.codec.limits import MAX_JSON_DEPTH, loads_bounded
from coldpress.codec.registry import decode_bitstream
from coldpress.errors import ArchiveError, BitstreamError
from coldpress.pipelines.local import encode_local, restore_local, verify_local
from coldpress.transforms.archive import open_archive, write_shard
from coldpress.transforms.raster.package import pack_package, unpack_package
from coldpress.transforms.records import decode_record, restore_record
from synthetic_images import natural_image

BOUND = 64 << 20  # bytes a refusal may allocate (tracemalloc peak)
ROOT = Path(__file__).resolve().parents[1]


def _bounded(fn, *args, exc=BitstreamError, match=None):
    tracemalloc.start()
    try:
        with pytest.raises(exc, match=match) as info:
            fn(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BOUND, f"refusing it allocated {peak:,} bytes"
    return str(info.value)


def _jpeg_bitstream() -> bytes:
    return get_codec("jpeg").encode(natural_image(48, 64, seed=1), bpp=2.0).bitstream


# -- bitstreams ------------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", ["jpeg", "learned", "webp"])
def test_huge_declared_image_is_refused_before_any_decoder_runs(codec):
    b = dataclasses.replace(container.unpack(_jpeg_bitstream()), codec=codec, width=1 << 20, height=1 << 20)
    evil = container.pack(b)  # a valid container: magic, lengths and CRC32 all consistent
    assert len(evil) < 2000
    text = _bounded(decode_bitstream, evil, match="1048576x1048576")
    assert "COLDPRESS_MAX_DECODE_PIXELS" in text  # says what to do for a trusted archive


def test_pixel_limit_is_configurable_for_trusted_archives(monkeypatch):
    b = dataclasses.replace(container.unpack(_jpeg_bitstream()), width=20_000, height=20_000)
    evil = container.pack(b)
    with pytest.raises(BitstreamError, match="more than the 178,956,970"):
        container.unpack(evil)
    monkeypatch.setenv("COLDPRESS_MAX_DECODE_PIXELS", str(20_000 * 20_000))
    assert container.unpack(evil).width == 20_000  # accepted; its (small) payload is then checked by the codec
    with pytest.raises(BitstreamError, match="payload holds a 64x48 image"):
        decode_bitstream(evil)


def test_learned_decoder_of_a_patched_real_bitstream_stays_bounded(tmp_path):
    """A real learned bitstream of 64x64 whose header claims 20,000 x 20,000: before the bound, the
    decoder built its latent grid for 400 million pixels (minutes and tens of GB)."""
    script = textwrap.dedent("""
        import dataclasses, resource, sys, time
        from coldpress.codec import container, get_codec
        from coldpress.codec.registry import decode_bitstream
        from coldpress.errors import BitstreamError
        from synthetic_images import natural_image
        codec = get_codec("learned")
        data = codec.encode(natural_image(64, 64, seed=2), bpp=0.3).bitstream
        evil = container.pack(dataclasses.replace(container.unpack(data), width=20000, height=20000))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.monotonic()
        try:
            decode_bitstream(evil)
            print("DECODED")
        except BitstreamError as exc:
            print("REFUSED", round(time.monotonic() - t, 3), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, exc)
    """)
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("decoding a bitstream that declares 20000x20000 ran past 240 s")
    line = next((x for x in out.stdout.splitlines() if x.startswith(("REFUSED", "DECODED"))), out.stderr[-2000:])
    assert line.startswith("REFUSED"), line
    _, seconds, grown_kib, *_ = line.split(" ", 3)
    assert float(seconds) < 5 and int(grown_kib) < 200_000, line  # refused at once, no allocation for it


def test_deep_params_json_is_refused_without_recursing():
    b = container.unpack(_jpeg_bitstream())
    raw = bytearray(container.pack(b))
    # Rebuild the container with params nested 100,000 levels: pack() refuses nothing of params' content.
    deep = "[" * 100_000 + "]" * 100_000
    evil = _repack_with_params(bytes(raw), deep.encode())
    _bounded(container.unpack, evil, match="nests deeper than")


def _repack_with_params(data: bytes, params: bytes) -> bytes:
    """``data`` with its params field replaced (lengths and CRC32 recomputed)."""
    b = container.unpack(data)
    head = data[:5] + bytes([data[5]]) + container.varint(b.width) + container.varint(b.height)
    pos = len(head)
    mode = data[pos:pos + 1]
    pos += 1
    fields = []
    for _ in range(3):  # codec name, model id, weights hash: one length byte each
        n = data[pos]
        fields.append(data[pos:pos + 1 + n])
        pos += 1 + n
    old_len, pos = container.read_varint(data, pos, "params")
    pos += old_len
    rest = data[pos:-4]
    body = head + mode + b"".join(fields) + container.varint(len(params)) + params + rest
    import zlib

    return body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def test_loads_bounded_accepts_what_coldpress_writes_and_refuses_deeper():
    ok = json.dumps({"a": [{"b": [1, 2, {"c": "d"}]}]})
    assert loads_bounded(ok, "x")["a"][0]["b"][2]["c"] == "d"
    nested = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(ValueError, match="nests deeper"):
        loads_bounded(nested, "the header")
    assert loads_bounded("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH, "x") == _nest(MAX_JSON_DEPTH)


def _nest(n: int):
    v: list = []
    for _ in range(n - 1):
        v = [v]
    return v


# -- raster packages -------------------------------------------------------------------------------
def _header(**over):
    h = {"width": 64, "height": 48, "bands": 1, "dtype": "uint8", "groups": [[0]], "map": [[0.0, 1.0]],
         "nodata": None, "fill": None, "tile_size": 1024, "codec": "jpeg",
         "tiles": [{"x": 0, "y": 0, "w": 64, "h": 48, "mask": 0, "parts": [0]}]}
    h.update(over)
    return h


def _row(package: bytes, metadata: str | None = None) -> dict:
    return {"id": "evil.tif", "mode": "RASTER", "bitstream": package, "width": 64, "height": 48,
            "bitstream_sha256": hashlib.sha256(package).hexdigest(),
            "metadata": metadata or json.dumps({"raster": {"width": 64, "height": 48}})}


ABSURD = [
    ({"width": 1 << 20, "height": 1 << 20, "tiles": []}, "1048576x1048576"),
    ({"bands": 10_000_000, "map": []}, "10,000,000 bands"),
    ({"dtype": "V1000000000"}, "sample type"),
    ({"tiles": [{"x": 0, "y": 0, "w": 64, "h": 48, "mask": 0, "parts": [0]}] * 200_000}, "a header of"),
    ({"tiles": [{"x": 0, "y": 0, "w": 1, "h": 1, "mask": 0, "parts": [0]}] * 70_000}, "70,000 tiles"),
    ({"tiles": [{"x": 0, "y": 0, "w": 64, "h": 48, "mask": 0, "parts": [0]}] * 50}, "tiles cover"),
    ({"tiles": [{"x": 60, "y": 0, "w": 64, "h": 48, "mask": 0, "parts": [0]}]}, "outside the raster"),
    ({"tiles": [{"x": 0, "y": 0, "w": 64, "h": 48, "mask": 0, "parts": [0, 0, 0]}]}, "one part length"),
    ({"tiles": "all of them"}, "tiles"),
    ({"groups": [[5]]}, "band groups"),
]


@pytest.mark.parametrize("over,match", ABSURD)
def test_absurd_raster_declarations_are_refused(over, match):
    package = pack_package(_header(**over), [])
    row = _row(package)
    text = _bounded(decode_record, row, match=match)
    assert "raster package" in text
    _bounded(restore_record, row, "/nonexistent/out.tif", "auto", match=match)


_TILE = {"x": 0, "y": 0, "w": 64, "h": 48, "mask": 0}


@pytest.mark.parametrize("over,match", [a for a in ABSURD if a[1] not in ("a header of", "70,000 tiles")] + [
    ({"tiles": [{**_TILE, "parts": [1 << 62]}]}, r"tile 0 of 1 in its tile index ends 4,611,686,018,427,387,904 "
                                                r"bytes into the tile data, past the 0 bytes"),
    ({"tiles": [{**_TILE, "parts": [0], "band_masks": {"0": 10**18}}]}, "past the 0 bytes"),
    ({"tiles": [{**_TILE, "parts": [-5]}]}, "one part length per band group"),
    ({"tiles": [{**_TILE, "parts": [0], "band_masks": {"7": 0}}]}, "band masks do not name bands"),
])
def test_unpack_package_itself_refuses_hostile_declarations(over, match):
    """``unpack_package`` (what every reader of a raster package calls, not only records.py) refuses
    absurd declarations and tile index entries pointing outside the payload, in bounded memory."""
    text = _bounded(unpack_package, pack_package(_header(**over), []), match=match)
    assert "raster package" in text  # what was wrong, and what to do:
    assert "restore it from a replica or re-encode the source" in text or "set COLDPRESS_MAX_DECODE_PIXELS" in text


def test_a_tile_index_short_of_the_payload_is_refused():
    package = pack_package(_header(tiles=[{**_TILE, "mask": 3, "parts": [2]}]), [b"\0" * 9])
    _bounded(unpack_package, package, match="accounts for 5 bytes of tile data, but the package holds 9")


def test_a_tile_index_past_the_payload_is_refused_at_its_first_bad_tile_in_bounded_time():
    """12,288 tiles of 1x1 (the most the 64x48 raster's area bound allows), the first pointing 2**62
    bytes on: refused at tile 0, before any span past it is walked or any slice taken."""
    tiles = [{"x": i % 64, "y": (i // 64) % 48, "w": 1, "h": 1, "mask": 0, "parts": [1 << 62]} for i in range(12_288)]
    package = pack_package(_header(tiles=tiles), [])
    t = time.monotonic()
    text = _bounded(unpack_package, package, match="tile 0 of 12,288")
    # A guard against a walk that grows with the tiles squared, not a speed figure: with tracemalloc on,
    # the parse takes about 2 s on a quiet 2-core machine and took 5.6 s on a loaded one.
    assert time.monotonic() - t < 60, text


def test_deep_raster_header_and_deep_row_metadata_are_refused():
    head = json.dumps(_header())[:-1] + ', "x": ' + "[" * 50_000 + "]" * 50_000 + "}"
    body = b"CPRT" + bytes([1]) + container.varint(len(head)) + head.encode()
    import zlib

    package = body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    _bounded(decode_record, _row(package), match="nests deeper")
    good = pack_package(_header(), [])
    deep_meta = '{"raster": ' + "[" * 50_000 + "]" * 50_000 + "}"
    _bounded(restore_record, _row(good, deep_meta), "/nonexistent/out.tif", "auto", match="metadata lacks")


def test_raster_decode_allocation_is_bounded(monkeypatch):
    monkeypatch.setenv("COLDPRESS_MAX_DECODE_BYTES", str(1000))
    package = pack_package(_header(), [])
    _bounded(decode_record, _row(package), match="COLDPRESS_MAX_DECODE_BYTES")


# -- archives --------------------------------------------------------------------------------------
@pytest.fixture
def archive(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        Image.fromarray(natural_image(48, 64, seed=70 + i)).save(src / f"{i}.png")
    dst = tmp_path / "archive"
    encode_local(src, dst, codec="jpeg", bpp=2.0, rows_per_shard=4, progress=False, workers=1)
    return dst


def test_a_hostile_row_in_an_archive_is_refused_and_every_other_row_restored(archive, tmp_path):
    row = open_archive(archive).read().to_pylist()[0]
    b = dataclasses.replace(container.unpack(bytes(row["bitstream"])), codec="learned", width=1 << 20, height=1 << 20)
    evil = container.pack(b)
    row.update(id="zz-evil.png", bitstream=evil, bitstream_sha256=hashlib.sha256(evil).hexdigest())
    write_shard(archive, 1, [row])  # a second shard holding the hostile row, checksums consistent
    report = verify_local(archive, progress=False)
    assert report["ok"] == 4 and [f["id"] for f in report["failures"]] == ["zz-evil.png"]
    assert "1048576x1048576" in report["failures"][0]["problem"]
    out = tmp_path / "out"
    with pytest.raises(ArchiveError, match="1 of 5 image.*4 written.*zz-evil.png.*1048576x1048576"):
        restore_local(archive, out, fmt="png", progress=False)
    assert len(list(out.glob("*.png"))) == 4


def _footer(path: Path) -> tuple[bytes, bytes]:
    data = path.read_bytes()
    n = struct.unpack("<I", data[-8:-4])[0]
    return data[:-8 - n], data[-8 - n:-8]


@pytest.mark.parametrize("attack", ["length past the file", "length zero", "garbage footer", "huge list"])
def test_malicious_parquet_footer_is_refused(archive, tmp_path, attack, capsys):
    shard = archive / "part-00000.parquet"
    body, footer = _footer(shard)
    if attack == "length past the file":
        data = body + footer + struct.pack("<I", 0x7FFFFFF0) + b"PAR1"
    elif attack == "length zero":
        data = body + footer + struct.pack("<I", 0) + b"PAR1"
    elif attack == "garbage footer":
        data = body + bytes(range(256)) * (len(footer) // 256 + 1) + struct.pack("<I", (len(footer) // 256 + 1) * 256) + b"PAR1"
    else:  # thrift compact: field 2 (schema), a list header declaring 2**31 - 1 structs, then nothing
        evil = b"\x15\x04\x19\xfc" + b"\xff\xff\xff\xff\x07" + b"\x00" * 16
        data = body + evil + struct.pack("<I", len(evil)) + b"PAR1"
    shard.write_bytes(data)
    tracemalloc.start()
    try:
        report = verify_local(archive, progress=False)  # never raises for damage
    finally:
        tracemalloc.stop()
    assert report["ok"] == 0 and "part-00000.parquet" in report["failures"][0]["problem"]
    from coldpress.jobs import cli

    assert cli.main(["inspect", str(archive)]) == 1
    assert "part-00000.parquet is damaged" in capsys.readouterr().out
    with pytest.raises(ArchiveError, match="part-00000.parquet"):
        open_archive(archive).read(columns=["id"])


def test_stac_parses_row_metadata_with_the_depth_bound_and_catalogs_the_other_rasters(tmp_path, capsys):
    """A raster row whose metadata nests 100,000 levels (checksums consistent: metadata is no part of
    the bitstream) gets no STAC Item and is listed with the reason; before, ``coldpress stac`` died
    of a RecursionError and wrote no catalog at all."""
    pystac = pytest.importorskip("pystac")
    from affine import Affine
    from rasterio.io import MemoryFile

    from coldpress.jobs.cli import main

    src = tmp_path / "src"
    src.mkdir()
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=64, height=48, count=1, dtype="uint8", crs="EPSG:32633",
                      transform=Affine(10, 0, 500000, 0, -10, 4200000)) as ds:
            ds.write(natural_image(48, 64, seed=5)[:, :, 0], 1)
        (src / "scene.tif").write_bytes(mem.read())
    archive, out = tmp_path / "archive", tmp_path / "stac"
    encode_local(src, archive, codec="webp", bpp=10.0, progress=False, workers=1)
    row = open_archive(archive).read().to_pylist()[0]
    row.update(id="zz-deep.tif", metadata='{"raster": ' + "[" * 100_000 + "]" * 100_000 + "}")
    write_shard(archive, 1, [row])
    t = time.monotonic()
    assert main(["stac", str(archive), "--out", str(out), "--quiet"]) == 1
    assert time.monotonic() - t < 30
    err = capsys.readouterr().err
    assert f"zz-deep.tif: its metadata nests deeper than {MAX_JSON_DEPTH} levels" in err
    assert "1 raster row(s) got no Item" in err and "restore the archive from a replica" in err
    collection = pystac.Collection.from_file(str(out / "collection.json"))
    assert [i.properties["coldpress:id"] for i in collection.get_items(recursive=True)] == ["scene.tif"]
