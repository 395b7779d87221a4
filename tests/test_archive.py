"""The Parquet archive: schema, atomic writes, reads by id with few bytes, errors, resume, S3."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from coldpress.codec.container import Bitstream, pack
from coldpress.errors import ArchiveError
from coldpress.transforms import archive as A
from coldpress.transforms.schema import (
    ARCHIVE_FORMAT,
    ARCHIVE_SCHEMA,
    REJECTED_SCHEMA,
    ROW_GROUP_BYTES,
    ROW_GROUP_ROWS,
    rejected_to_table,
    rows_to_table,
)

T0 = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.timezone.utc)
WIDTH, HEIGHT = 768, 512


def make_rows(n: int, seed: int = 0, bitstream_bytes: int = 1500, prefix: str = "sub/") -> list[dict]:
    """Archive rows as encode_record makes them: containers with random payloads (the archive never
    decodes them), ~1500 bytes = 0.03 bpp at 768x512, and realistic metadata."""
    rng = random.Random(seed)
    weights_hash = hashlib.sha256(b"weights").hexdigest()[:16]
    rows = []
    for i in range(n):
        size = max(100, int(rng.gauss(bitstream_bytes, bitstream_bytes / 40)))
        bitstream = pack(
            Bitstream(
                codec="learned", width=WIDTH, height=HEIGHT, mode="RGB", payload=rng.randbytes(size - 75),
                params={"q": rng.randrange(1, 8), "shape": [32, 48]}, model_id="cp-lic-lowrate-v1",
                weights_hash=bytes.fromhex(weights_hash),
            )
        )
        key = f"{prefix}flight-{i // 250:02d}/IMG_{rng.randrange(10**6):06d}_{seed}_{i:05d}.png"
        metadata = {
            "exif": {
                "Make": "DJI",
                "Model": "FC6310",
                "DateTimeOriginal": f"2024:05:{1 + i % 28:02d} {rng.randrange(24):02d}:{rng.randrange(60):02d}:00",
                "GPSLatitude": round(rng.uniform(40, 41), 6),
                "GPSLongitude": round(rng.uniform(-3, -2), 6),
            },
            "orientation": 1,
            "codec_params": {"q": rng.randrange(1, 64)},
        }
        rows.append(
            {
                "id": key,
                "source_uri": f"s3://imagery-raw/{key}",
                "source_bytes": rng.randrange(300_000, 900_000),
                "source_sha256": rng.randbytes(32).hex(),
                "width": WIDTH,
                "height": HEIGHT,
                "mode": "RGB",
                "source_format": "PNG",
                "source_mode": "RGB",
                "codec": "learned",
                "model_id": "cp-lic-lowrate-v1",
                "weights_hash": weights_hash,
                "target_bpp": 0.03,
                "achieved_bpp": 8 * len(bitstream) / (WIDTH * HEIGHT),
                "bitstream": bitstream,
                "bitstream_sha256": hashlib.sha256(bitstream).hexdigest(),
                "recon_sha256": rng.randbytes(32).hex(),
                "psnr": rng.uniform(24, 31),
                "metadata": json.dumps(metadata, sort_keys=True),
                "coldpress_version": "0.1.0",
                "codec_version": "cp-lic-lowrate-v1",
                "torch_version": "2.14.1",
                "device_class": "cpu",
                "created_at": T0 + dt.timedelta(milliseconds=830 * i + rng.randrange(400)),
            }
        )
    return rows


def rejected(rid: str, reason: str = "not an image: cannot identify image file") -> dict:
    return {"id": rid, "source_uri": f"s3://imagery-raw/{rid}", "reason": reason, "created_at": T0}


class _CountingReader:
    """A file opened for reading that adds every byte it returns to its filesystem's counter."""

    def __init__(self, f, fs):
        self._f, self._fs = f, fs

    def read(self, n=-1):
        data = self._f.read(n)
        self._fs.bytes_read += len(data)
        return data

    def readinto(self, buffer):
        n = self._f.readinto(buffer)
        self._fs.bytes_read += n
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class CountingLocalFileSystem(LocalFileSystem):
    """The local filesystem, counting the bytes read from files opened through it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bytes_read = 0

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        return _CountingReader(f, self) if "r" in mode else f


def _upper_bound_one_id(path: str) -> int:
    """Bytes a by-id read of one id may need: one shard's footer (pyarrow reads the last 64 KiB of a
    file to find it) plus the largest row group, plus a little slack."""
    footer, largest_group = 0, 0
    for name in sorted(os.listdir(path)):
        if name.startswith("part-"):
            footer = max(footer, min(os.path.getsize(os.path.join(path, name)), 64 << 10))
            md = pq.read_metadata(os.path.join(path, name))
            for rg in range(md.num_row_groups):
                group = md.row_group(rg)
                largest_group = max(largest_group, sum(group.column(c).total_compressed_size for c in range(group.num_columns)))
    return footer + largest_group + (8 << 10)


# ------------------------------------------------------------------------------------------------
# schema


def test_rows_round_trip_through_a_shard(tmp_path):
    rows = make_rows(300, seed=1)
    info = A.write_shard(tmp_path, 0, rows)
    assert info["name"] == "part-00000.parquet" and info["rows"] == 300
    assert info["bitstream_bytes"] == sum(len(r["bitstream"]) for r in rows)
    assert info["bytes"] == os.path.getsize(tmp_path / "part-00000.parquet")

    archive = A.open_archive(tmp_path)
    table = archive.read()
    assert table.schema.names == ARCHIVE_SCHEMA.names
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    expected = sorted(rows, key=lambda r: r["id"])
    assert table.to_pylist() == expected  # every field, bitstream bytes and tz-aware timestamps included
    assert [b.num_rows for b in archive.iter_batches(columns=["id", "psnr"], batch_size=64)] == [64] * 4 + [44]


def test_rows_to_table_accepts_iso_timestamps_and_dict_metadata_and_sorts():
    rows = make_rows(3, seed=2)
    rows[0]["created_at"] = "2025-01-31T12:00:00+01:00"
    rows[1]["metadata"] = {"b": 1, "a": [1, 2]}
    table = rows_to_table(rows)
    assert table.column("id").to_pylist() == sorted(r["id"] for r in rows)
    by_id = {r["id"]: r for r in table.to_pylist()}
    assert by_id[rows[0]["id"]]["created_at"] == dt.datetime(2025, 1, 31, 11, 0, tzinfo=dt.timezone.utc)
    assert json.loads(by_id[rows[1]["id"]]["metadata"]) == {"a": [1, 2], "b": 1}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("bitstream_sha256"), r"lacks field\(s\) bitstream_sha256"),
        (lambda r: r.update(extra_field=1), r"unknown field\(s\) extra_field"),
        (lambda r: r.update(codec=None), "field 'codec' is None"),
        (lambda r: r.update(width="wide"), "column 'width'"),
        (lambda r: r.update(created_at="yesterday"), "not an ISO 8601 timestamp"),
    ],
)
def test_rows_to_table_rejects_malformed_rows(change, message):
    rows = make_rows(2, seed=3)
    change(rows[1])
    with pytest.raises(ValueError, match=message):
        rows_to_table(rows)


def test_rows_to_table_rejects_duplicate_ids():
    rows = make_rows(2, seed=4)
    rows[1]["id"] = rows[0]["id"]
    with pytest.raises(ValueError, match="repeat id"):
        rows_to_table(rows)


def test_files_carry_the_format_and_the_writer_options(tmp_path):
    A.write_shard(tmp_path, 0, make_rows(600, seed=5))
    md = pq.read_metadata(tmp_path / "part-00000.parquet")
    assert md.metadata[b"coldpress.format"] == ARCHIVE_FORMAT.encode()
    assert md.num_row_groups == 3  # 600 rows of ~1.5 kB: bounded by ROW_GROUP_ROWS
    names = md.schema.names
    for rg in range(md.num_row_groups):
        group = md.row_group(rg)
        assert group.num_rows <= ROW_GROUP_ROWS
        col = {name: group.column(i) for i, name in enumerate(names)}
        assert col["bitstream"].compression == "ZSTD"
        assert not col["bitstream"].is_stats_set and not col["bitstream"].has_dictionary_page
        assert not col["source_sha256"].is_stats_set and not col["recon_sha256"].is_stats_set
        assert col["id"].is_stats_set and col["id"].statistics.has_min_max
        assert col["id"].compression == "ZSTD" and col["metadata"].compression == "ZSTD"
        assert col["codec"].has_dictionary_page and col["model_id"].has_dictionary_page
        assert not col["id"].has_dictionary_page
        # rows sorted by id: row groups cover disjoint, increasing id ranges
        if rg:
            assert md.row_group(rg - 1).column(0).statistics.max < col["id"].statistics.min
    assert A.write_rejected(tmp_path, [rejected("x.png")])["rows"] == 1
    rejected_md = pq.read_metadata(tmp_path / "_rejected" / "rejected.parquet")
    assert rejected_md.metadata[b"coldpress.format"] == b"rejected/1"


def test_row_groups_are_bounded_by_bitstream_bytes(tmp_path):
    big = ROW_GROUP_BYTES * 2 // 5  # two fit under ROW_GROUP_BYTES, three do not
    A.write_shard(tmp_path, 0, make_rows(7, seed=6, bitstream_bytes=big))
    md = pq.read_metadata(tmp_path / "part-00000.parquet")
    sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    assert sum(sizes) == 7 and max(sizes) <= 2


def _stored_bytes(path, column: str) -> int:
    md = pq.read_metadata(path)
    index = md.schema.names.index(column)
    return sum(md.row_group(rg).column(index).total_compressed_size for rg in range(md.num_row_groups))


def test_per_row_overhead_is_small(tmp_path):
    """(file bytes - stored bitstream column bytes) / rows for realistic rows: what docs/FORMAT.md
    and `coldpress inspect` report."""
    A.write_shard(tmp_path, 0, make_rows(1000, seed=7))
    stats = A.archive_stats(tmp_path)
    shard = tmp_path / "part-00000.parquet"
    assert stats["num_rows"] == 1000
    assert stats["stored_bitstream_bytes"] == _stored_bytes(shard, "bitstream")
    assert stats["overhead_bytes_per_row"] == (shard.stat().st_size - _stored_bytes(shard, "bitstream")) / 1000
    assert 120 < stats["overhead_bytes_per_row"] < 190, stats  # measured: ~159 (docs/FORMAT.md)


def test_overhead_is_never_negative_when_bitstreams_compress(tmp_path):
    """Small images whose containers are mostly repeated header bytes: zstd stores the bitstream
    column in far fewer bytes than the bitstreams' lengths, which made the old figure negative."""
    rows = make_rows(300, seed=3, bitstream_bytes=400)
    for row in rows:  # a compressible payload (like the boxes every small AVIF repeats)
        b = Bitstream(codec="learned", width=WIDTH, height=HEIGHT, mode="RGB", payload=bytes(300) + row["id"].encode(),
                      params={"q": 1, "shape": [32, 48]}, model_id="cp-lic-lowrate-v1",
                      weights_hash=bytes.fromhex(row["weights_hash"]))
        row["bitstream"] = pack(b)
        row["bitstream_sha256"] = hashlib.sha256(row["bitstream"]).hexdigest()
    A.write_shard(tmp_path, 0, rows)
    stats = A.archive_stats(tmp_path)
    shard_bytes = (tmp_path / "part-00000.parquet").stat().st_size
    assert stats["shard_bytes"] == shard_bytes
    assert shard_bytes < stats["bitstream_bytes"]  # (file - lengths) / rows would be negative here
    assert stats["stored_bitstream_bytes"] < stats["bitstream_bytes"] / 4
    assert 0 < stats["overhead_bytes_per_row"] == (shard_bytes - stats["stored_bitstream_bytes"]) / 300


# ------------------------------------------------------------------------------------------------
# atomic writes


CRASHING_WRITER = textwrap.dedent(
    """
    import resource, signal, sys
    import pyarrow.parquet as pq
    from coldpress.transforms.archive import write_shard

    table = pq.ParquetFile(sys.argv[2]).read()
    limit = int(sys.argv[3])
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; a real crash does not
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    write_shard(sys.argv[1], 1, table)
    print("write_shard returned")
    """
)


def test_a_writer_killed_mid_shard_leaves_only_a_temp_file(tmp_path):
    archive = tmp_path / "archive"
    first = make_rows(100, seed=8)
    A.write_shard(archive, 0, first)
    second = tmp_path / "second-input.parquet"
    pq.write_table(rows_to_table(make_rows(2000, seed=9)), second)  # ~3 MB of bitstreams to write
    # The kernel kills the writer (SIGXFSZ) as soon as the shard file passes 1 MB: a crash mid-write.
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(archive), str(second), str(1 << 20)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == -signal.SIGXFSZ, (proc.returncode, proc.stdout, proc.stderr)
    names = sorted(os.listdir(archive))
    temps = [n for n in names if n.startswith(".part-00001.parquet.tmp-")]
    assert len(temps) == 1 and os.path.getsize(archive / temps[0]) > 0
    assert "part-00001.parquet" not in names  # nothing under the final name

    opened = A.open_archive(archive)  # the partial temp file is ignored
    assert [s.name for s in opened.shards] == ["part-00000.parquet"]
    assert opened.read().num_rows == 100
    assert A.existing_ids(archive) == {r["id"] for r in first}
    assert A.next_shard_index(archive) == 1
    # a resumed run writes the shard again under its final name
    A.write_shard(archive, 1, make_rows(10, seed=9))
    assert A.open_archive(archive).num_rows == 110


def test_readers_ignore_dot_and_underscore_files(tmp_path):
    A.write_shard(tmp_path, 0, make_rows(20, seed=10))
    (tmp_path / ".part-00001.parquet.tmp-0123abcd").write_bytes(b"PAR1 half a shard")
    (tmp_path / "_SUCCESS").write_bytes(b"")
    (tmp_path / "_common_metadata.parquet").write_bytes(b"not parquet at all")
    archive = A.open_archive(tmp_path)
    assert [s.name for s in archive.shards] == ["part-00000.parquet"]
    assert archive.num_rows == 20 and len(A.existing_ids(tmp_path)) == 20
    assert A.next_shard_index(tmp_path) == 1


def test_write_shard_refuses_to_replace_a_shard_unless_asked(tmp_path):
    A.write_shard(tmp_path, 3, make_rows(5, seed=11))
    with pytest.raises(ArchiveError, match="already exists.*next_shard_index"):
        A.write_shard(tmp_path, 3, make_rows(5, seed=12))
    A.write_shard(tmp_path, 3, make_rows(6, seed=12), overwrite=True)
    assert A.open_archive(tmp_path).num_rows == 6
    assert A.next_shard_index(tmp_path) == 4
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


# ------------------------------------------------------------------------------------------------
# reading by id


def test_reading_one_id_reads_a_small_fraction_of_the_archive(tmp_path):
    rows = make_rows(4000, seed=13)
    with A.ArchiveWriter(tmp_path, rows_per_shard=2000) as writer:
        for row in rows:
            writer.add(row)
    total = sum(os.path.getsize(tmp_path / n) for n in os.listdir(tmp_path) if n.startswith("part-"))

    fs = CountingLocalFileSystem(skip_instance_cache=True)
    archive = A.open_archive(str(tmp_path), filesystem=fs)
    assert fs.bytes_read == os.path.getsize(tmp_path / "_manifest.json")  # no footer read yet
    assert archive.num_rows == 4000 and [s.num_rows for s in archive.shards] == [2000, 2000]
    wanted = rows[2345]
    table = archive.read([wanted["id"]])
    assert table.to_pylist() == [wanted]
    assert fs.bytes_read <= _upper_bound_one_id(str(tmp_path))
    assert fs.bytes_read < 0.10 * total, (fs.bytes_read, total)

    # a few ids spread over both shards: still only their row groups, one row per id, sorted
    fs.bytes_read = 0
    picks = [rows[i] for i in (5, 1999, 2000, 3999)]
    table = archive.read([r["id"] for r in picks] * 2, columns=["bitstream", "bitstream_sha256"])
    assert table.column_names == ["bitstream", "bitstream_sha256"]
    assert table.to_pylist() == [
        {"bitstream": r["bitstream"], "bitstream_sha256": r["bitstream_sha256"]} for r in sorted(picks, key=lambda r: r["id"])
    ]
    assert fs.bytes_read < 0.5 * total


def test_missing_ids_are_reported(tmp_path):
    rows = make_rows(50, seed=14)
    A.write_shard(tmp_path, 0, rows)
    archive = A.open_archive(tmp_path)
    with pytest.raises(ArchiveError) as err:
        archive.read([rows[3]["id"], "sub/nope.png", "zzz/absent.jpg"])
    message = str(err.value)
    assert "2 of 3 requested id(s) are not in the archive" in message
    assert "'sub/nope.png'" in message and "'zzz/absent.jpg'" in message and rows[3]["id"] not in message
    found = archive.read([rows[3]["id"], "sub/nope.png"], missing="ignore")
    assert found.column("id").to_pylist() == [rows[3]["id"]]
    assert archive.read([]).num_rows == 0
    with pytest.raises(ValueError, match="unknown column"):
        archive.read(columns=["pixels"])


# ------------------------------------------------------------------------------------------------
# errors on opening


def test_missing_path_and_non_archives(tmp_path):
    with pytest.raises(ArchiveError, match="does not exist"):
        A.open_archive(tmp_path / "nowhere")
    assert A.existing_ids(tmp_path / "nowhere") == set()

    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchiveError, match="not a coldpress archive.*no part-\\*.parquet"):
        A.open_archive(tmp_path / "empty")

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), foreign / "data.parquet")
    with pytest.raises(ArchiveError, match=r"data.parquet is a Parquet file but not a coldpress archive file"):
        A.open_archive(foreign)

    newer = tmp_path / "newer"
    A.write_shard(newer, 0, make_rows(3, seed=15))
    table = pq.ParquetFile(newer / "part-00000.parquet").read()
    pq.write_table(table.replace_schema_metadata({b"coldpress.format": b"archive/2"}), newer / "part-00000.parquet")
    with pytest.raises(ArchiveError, match="'archive/2'.*upgrade coldpress"):
        A.open_archive(newer)

    A.write_shard(tmp_path / "single", 0, make_rows(3, seed=16))
    with pytest.raises(ArchiveError, match="is a file, not an archive directory"):
        A.open_archive(tmp_path / "single" / "part-00000.parquet")


def test_truncated_shard_is_named_with_what_to_do(tmp_path):
    A.write_shard(tmp_path, 0, make_rows(40, seed=17))
    A.write_shard(tmp_path, 1, make_rows(40, seed=18))
    with A.ArchiveWriter(tmp_path) as writer:  # adds a manifest that describes both shards
        manifest = writer.close({"engine": "test"})
    assert [s["name"] for s in manifest["shards"]] == ["part-00000.parquet", "part-00001.parquet"]
    shard = tmp_path / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    for call in (A.open_archive, A.existing_ids, A.archive_stats):
        with pytest.raises(ArchiveError) as err:
            call(tmp_path)
        message = str(err.value)
        assert str(shard) in message and "truncated" in message and "re-run the job with resume" in message


def test_corrupted_bytes_in_a_shard_are_detected(tmp_path):
    A.write_shard(tmp_path, 0, make_rows(40, seed=19))
    shard = tmp_path / "part-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit inside the (uncompressed) bitstream pages
    shard.write_bytes(bytes(data))
    archive = A.open_archive(tmp_path)  # the footer is intact
    with pytest.raises(ArchiveError, match="part-00000.parquet cannot be read.*CRC"):
        archive.read()


# ------------------------------------------------------------------------------------------------
# writer: rejected table, manifest, resume


def test_writer_writes_shards_rejected_table_and_manifest(tmp_path):
    rows = make_rows(250, seed=20)
    with A.ArchiveWriter(tmp_path, rows_per_shard=100) as writer:
        for row in rows:
            writer.add(row)
        writer.add_rejected(rejected("sub/broken.png"))
        writer.add_rejected(rejected("sub/empty.png", "empty file: 0 bytes"))
        with pytest.raises(ValueError, match="already added"):
            writer.add(rows[0])
        with pytest.raises(ValueError, match="lacks field"):
            writer.add({"id": "x"})
        manifest = writer.close({"engine": "local", "codec": "learned", "model_id": "cp-lic-lowrate-v1",
                                 "weights_hash": rows[0]["weights_hash"], "target_bpp": 0.03, "inputs_seen": 253})
    assert sorted(os.listdir(tmp_path)) == [
        "_manifest.json", "_rejected", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"
    ]
    assert os.listdir(tmp_path / "_rejected") == ["rejected.parquet"]
    on_disk = json.loads((tmp_path / "_manifest.json").read_text())
    checksum = on_disk.pop("checksum")  # of the rest (archive.manifest_checksum): a damaged manifest is told apart
    assert on_disk == json.loads(json.dumps(manifest, default=str))
    assert checksum == "sha256:" + hashlib.sha256(
        json.dumps(on_disk, indent=2, sort_keys=True).encode()).hexdigest()
    assert manifest["format"] == ARCHIVE_FORMAT and manifest["complete"] is True
    assert (manifest["engine"], manifest["codec"], manifest["target_bpp"]) == ("local", "learned", 0.03)
    assert (manifest["inputs_seen"], manifest["archived"], manifest["rejected"]) == (253, 250, 2)
    assert manifest["num_rows"] == 250 and manifest["num_rejected"] == 2
    assert manifest["pyarrow_version"] == pa.__version__ and manifest["coldpress_version"]
    assert [(s["name"], s["rows"]) for s in manifest["shards"]] == [
        ("part-00000.parquet", 100), ("part-00001.parquet", 100), ("part-00002.parquet", 50)
    ]
    for shard in manifest["shards"]:
        assert shard["bytes"] == os.path.getsize(tmp_path / shard["name"])
    assert manifest["started_at"] <= manifest["finished_at"] and len(manifest["runs"]) == 1

    archive = A.open_archive(tmp_path)
    assert archive.manifest == on_disk and archive.num_rows == 250
    rejected_table = archive.rejected()
    assert rejected_table.schema.names == REJECTED_SCHEMA.names
    assert rejected_table.to_pylist() == rejected_to_table(
        [rejected("sub/broken.png"), rejected("sub/empty.png", "empty file: 0 bytes")]
    ).to_pylist()

    stats = A.archive_stats(tmp_path)
    assert stats["num_rows"] == 250 and stats["num_shards"] == 3 and stats["num_rejected"] == 2
    assert stats["bitstream_bytes"] == sum(len(r["bitstream"]) for r in rows)
    assert stats["codecs"] == {"learned": 250} and stats["target_bpp"] == {0.03: 250}
    bpp = sorted(r["achieved_bpp"] for r in rows)
    assert stats["bpp"]["min"] == bpp[0] and stats["bpp"]["max"] == bpp[-1]
    assert stats["bpp"]["median"] == pytest.approx((bpp[124] + bpp[125]) / 2)
    assert stats["rejected_reasons"] == {"not an image: cannot identify image file": 1, "empty file: 0 bytes": 1}
    assert stats["file_bytes"] == sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())


def test_a_run_with_only_rejections_is_still_an_archive(tmp_path):
    with A.ArchiveWriter(tmp_path) as writer:
        writer.add_rejected(rejected("a.png"))
    archive = A.open_archive(tmp_path)
    assert archive.shards == [] and archive.num_rows == 0 and archive.read().num_rows == 0
    assert archive.rejected().column("id").to_pylist() == ["a.png"]


def test_resume_appends_a_shard_and_merges_rejections(tmp_path):
    first = make_rows(150, seed=21)
    with A.ArchiveWriter(tmp_path, rows_per_shard=100) as writer:
        for row in first:
            writer.add(row)
        writer.add_rejected(rejected("sub/a.png"))
        writer.add_rejected(rejected("sub/b.png"))
        writer.close({"engine": "local"})
    before = {n: (os.stat(tmp_path / n).st_mtime_ns, os.path.getsize(tmp_path / n)) for n in os.listdir(tmp_path) if n.startswith("part-")}
    assert A.existing_ids(tmp_path) == {r["id"] for r in first}

    # resume: sub/a.png now archives, sub/c.png is rejected, the rest is new
    second = make_rows(30, seed=22)
    second[0]["id"] = "sub/a.png"
    with A.ArchiveWriter(tmp_path, rows_per_shard=100) as writer:
        for row in second:
            writer.add(row)
        writer.add_rejected(rejected("sub/c.png"))
        manifest = writer.close({"engine": "local", "skipped": 150})

    after = {n: (os.stat(tmp_path / n).st_mtime_ns, os.path.getsize(tmp_path / n)) for n in os.listdir(tmp_path) if n.startswith("part-")}
    assert {n: after[n] for n in before} == before  # old shards untouched
    assert sorted(after) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert manifest["shards_written"] == ["part-00002.parquet"]
    assert manifest["num_rows"] == 180 and manifest["archived"] == 30 and manifest["skipped"] == 150
    assert [r["engine"] for r in manifest["runs"]] == ["local", "local"]
    assert A.existing_ids(tmp_path) == {r["id"] for r in first} | {r["id"] for r in second}
    archive = A.open_archive(tmp_path)
    assert archive.rejected().column("id").to_pylist() == ["sub/b.png", "sub/c.png"]
    assert archive.read(["sub/a.png"]).column("bitstream").to_pylist() == [second[0]["bitstream"]]


def test_a_manifest_entry_is_trusted_only_while_the_shard_is_unchanged(tmp_path):
    with A.ArchiveWriter(tmp_path, rows_per_shard=10) as writer:
        for row in make_rows(20, seed=26):
            writer.add(row)
    replacement = make_rows(7, seed=27)
    A.write_shard(tmp_path, 0, replacement, overwrite=True)  # now unlike what the manifest says
    archive = A.open_archive(tmp_path)
    assert [s.num_rows for s in archive.shards] == [7, 10] and archive.num_rows == 17
    assert archive.read([replacement[3]["id"]]).to_pylist() == [replacement[3]]


def test_a_stale_manifest_range_does_not_hide_rows(tmp_path):
    rows = make_rows(20, seed=28)
    with A.ArchiveWriter(tmp_path, rows_per_shard=10) as writer:
        for row in rows:
            writer.add(row)
    manifest = A.read_manifest(tmp_path)
    manifest["shards"][1]["min_id"] = manifest["shards"][1]["max_id"] = "zzz"  # as if another file were described
    A.write_manifest(tmp_path, manifest)
    archive = A.open_archive(tmp_path)
    target = sorted(rows, key=lambda r: r["id"])[15]  # in the second shard
    assert archive.read([target["id"]]).to_pylist() == [target]
    assert archive.shards[1].min_id <= target["id"] <= archive.shards[1].max_id  # the footer's range now
    with pytest.raises(ArchiveError, match="1 of 2 requested id.*'sub/absent.png'"):
        archive.read([target["id"], "sub/absent.png"])
    fresh = A.open_archive(tmp_path)
    with pytest.raises(ArchiveError, match="1 of 2 requested id.*'sub/absent.png'"):
        fresh.read([target["id"], "sub/absent.png"])


def test_an_exception_in_the_writer_block_keeps_the_buffered_rows(tmp_path):
    rows = make_rows(5, seed=23)
    with pytest.raises(RuntimeError, match="engine failed"):
        with A.ArchiveWriter(tmp_path) as writer:
            for row in rows:
                writer.add(row)
            raise RuntimeError("engine failed")
    manifest = A.read_manifest(tmp_path)
    assert manifest["complete"] is False and "engine failed" in manifest["error"]
    assert A.existing_ids(tmp_path) == {r["id"] for r in rows}


# ------------------------------------------------------------------------------------------------
# S3 (a real moto server)


def test_s3_round_trip(s3_bucket, s3_options):
    import s3fs

    url = f"s3://{s3_bucket}/archives/run1"
    rows = make_rows(2000, seed=24)
    with A.ArchiveWriter(url, s3_options, rows_per_shard=1000) as writer:
        for row in rows:
            writer.add(row)
        writer.add_rejected(rejected("sub/bad.tif"))
        manifest = writer.close({"engine": "local"})
    fs = s3fs.S3FileSystem(**s3_options)
    listed = sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{s3_bucket}/archives/run1"))
    assert listed == ["_manifest.json", "_rejected", "part-00000.parquet", "part-00001.parquet"]  # no temp keys
    assert fs.ls(f"{s3_bucket}/archives/run1/_rejected") == [f"{s3_bucket}/archives/run1/_rejected/rejected.parquet"]
    assert manifest["num_rows"] == 2000

    archive = A.open_archive(url, s3_options)
    assert archive.num_rows == 2000 and archive.manifest["num_rows"] == 2000
    assert archive.shards[1].path == f"s3://{s3_bucket}/archives/run1/part-00001.parquet"
    picks = sorted((rows[7], rows[1500]), key=lambda r: r["id"])
    assert archive.read([r["id"] for r in picks]).to_pylist() == picks
    assert archive.rejected().column("id").to_pylist() == ["sub/bad.tif"]
    assert A.existing_ids(url, s3_options) == {r["id"] for r in rows}
    assert A.archive_stats(url, s3_options)["num_rejected"] == 1

    # bytes fetched from S3 to restore one id: the footers and one row group, no read-ahead
    class CountingS3(s3fs.S3FileSystem):
        fetched = 0

        def _open(self, path, mode="rb", **kwargs):
            f = super()._open(path, mode, **kwargs)
            if "r" in mode:
                fetch = f.cache.fetcher

                def counting(start, end):
                    data = fetch(start, end)
                    CountingS3.fetched += len(data)
                    return data

                f.cache.fetcher = counting
            return f

    counting_fs = CountingS3(**s3_options)
    archive = A.open_archive(url, filesystem=counting_fs)
    assert archive.read([rows[1234]["id"]]).to_pylist() == [rows[1234]]
    total = sum(s.num_bytes for s in archive.shards)
    assert 0 < CountingS3.fetched < 0.2 * total, (CountingS3.fetched, total)

    # resume on S3 appends the next shard
    A.write_shard(url, A.next_shard_index(url, s3_options), make_rows(3, seed=25), s3_options)
    assert [s.name for s in A.open_archive(url, s3_options).shards][-1] == "part-00002.parquet"
