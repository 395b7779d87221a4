"""Engines at dataset scale: the local engine's worker processes write the single-process archive,
Ray blocks are sized for large counts, and the Beam job graph does not carry the inputs."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from coldpress.jobs import cli
from coldpress.pipelines.local import encode_local, verify_local
from coldpress.transforms.archive import open_archive
from synthetic_images import natural_image

BPP = 2.0


@pytest.fixture(scope="module")
def jpeg_tree(tmp_path_factory) -> Path:
    """70 small JPEGs in two folders, a truncated JPEG and a text file."""
    root = tmp_path_factory.mktemp("jpegs")
    for i in range(70):
        folder = root / f"d{i % 2}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(natural_image(64, 64, seed=i)).save(folder / f"{i:03d}.jpg", quality=85)
    good = io.BytesIO()
    Image.fromarray(natural_image(64, 64, seed=99)).save(good, format="JPEG")
    (root / "d0" / "cut.jpg").write_bytes(good.getvalue()[:150])
    (root / "notes.txt").write_text("not an image")
    return root


def _shards(archive: Path) -> list[tuple[str, list[str], list[bytes]]]:
    """(file name, ids, bitstreams) of every shard, read with plain pyarrow."""
    out = []
    for path in sorted(archive.glob("part-*.parquet")):
        table = pq.read_table(path, columns=["id", "bitstream"])
        out.append((path.name, table.column("id").to_pylist(), table.column("bitstream").to_pylist()))
    return out


def test_local_workers_write_the_single_process_archive(jpeg_tree, tmp_path):
    one = encode_local(jpeg_tree, tmp_path / "one", codec="jpeg", bpp=BPP, rows_per_shard=16, progress=False,
                       workers=1)
    two = encode_local(jpeg_tree, tmp_path / "two", codec="jpeg", bpp=BPP, rows_per_shard=16, progress=False,
                       workers=2)
    assert (one["workers"], two["workers"]) == (1, 2)
    assert (two["archived"], two["rejected"]) == (70, 2)
    # The same shards, cut at the same ids, holding the same bitstreams in the same order.
    assert _shards(tmp_path / "two") == _shards(tmp_path / "one")
    assert len(_shards(tmp_path / "two")) == 5
    reasons = {r["id"]: r["reason"] for r in open_archive(tmp_path / "two").rejected().to_pylist()}
    assert reasons == {r["id"]: r["reason"] for r in open_archive(tmp_path / "one").rejected().to_pylist()}
    assert set(reasons) == {"d0/cut.jpg", "notes.txt"}
    report = verify_local(tmp_path / "two", progress=False)
    assert report["ok"] == 70 and not report["failures"]
    # Resume with workers: nothing twice.
    again = encode_local(jpeg_tree, tmp_path / "two", codec="jpeg", bpp=BPP, progress=False, workers=2)
    assert (again["archived"], again["skipped"], again["num_rows"]) == (0, 70, 70)


def test_workers_option_is_checked(jpeg_tree, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["encode", str(jpeg_tree), str(tmp_path / "a"), "--bpp", "2", "--workers", "0"])
    assert exit_info.value.code == 2 and "--workers: 0 must be at least 1" in capsys.readouterr().err
    code = cli.main(["encode", str(jpeg_tree), str(tmp_path / "a"), "--bpp", "2", "--workers", "2", "--engine", "beam"])
    err = capsys.readouterr().err
    assert code == 1 and "--workers applies to --engine local only" in err
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="workers must be a whole number"):
        encode_local(jpeg_tree, tmp_path / "b", codec="jpeg", bpp=BPP, workers=0)


def test_ray_blocks_are_sized_for_the_count():
    pytest.importorskip("ray")
    from coldpress.pipelines.ray import BLOCKS_PER_ACTOR, MAX_BLOCK_ROWS, encode_block_rows

    # Small jobs: every actor gets blocks; never less than a batch per block.
    assert encode_block_rows(20, 2, 4) == 4
    assert -(-40 // encode_block_rows(40, 2, 4)) >= 2 * BLOCKS_PER_ACTOR
    # Large jobs: blocks of MAX_BLOCK_ROWS, about a hundred per 100,000 inputs (not 25,000 of 4).
    assert encode_block_rows(100_000, 2, 32) == MAX_BLOCK_ROWS
    assert -(-100_000 // encode_block_rows(100_000, 2, 32)) < 100
    assert encode_block_rows(100_000, 64, 4) == -(-100_000 // (64 * BLOCKS_PER_ACTOR))


def test_beam_graph_holds_the_listing_not_the_inputs(tmp_path):
    beam = pytest.importorskip("apache_beam")
    from coldpress.pipelines.beam import InputListing, ReadImages, make_pipeline, pipeline_options, write_listing

    def graph_bytes(source) -> int:
        p = make_pipeline(pipeline_options([]))
        _ = p | ReadImages(source)
        return len(p.to_runner_api().SerializeToString())

    few = [(f"/data/{i:07d}.jpg", f"{i:07d}.jpg") for i in range(10)]
    many = [(f"/data/{i:07d}.jpg", f"{i:07d}.jpg") for i in range(30_000)]
    listing_few, _ = write_listing(few, str(tmp_path / "a"))
    listing_many, folder = write_listing(many, str(tmp_path / "b"))
    assert isinstance(listing_many, InputListing) and len(listing_many) == 3
    assert graph_bytes(listing_many) - graph_bytes(listing_few) < 1000  # two more part names
    assert graph_bytes(many) - graph_bytes(few) > 200_000  # what a Create of the inputs carried (compressed)
    # The pipeline reads every pair back, in order, in chunks of consecutive inputs (at most 256, and
    # one by one for small runs, so that a few large files still spread over the workers).
    from coldpress.pipelines.beam import _ReadListing

    assert (listing_few.chunk, listing_many.chunk) == (1, 256)
    chunks = [chunk for part in listing_many for chunk in _ReadListing(None, listing_many.chunk).process(part)]
    assert [pair for chunk in chunks for pair in chunk] == many
    assert max(map(len, chunks)) == 256 and len(chunks) == 3 * -(-10_000 // 256)
    assert pickle.loads(pickle.dumps(listing_many)).chunk == 256  # as it travels in the job graph
    assert Path(folder).parent.name == "_inputs"
    del beam


def test_beam_encode_removes_its_listing(jpeg_tree, tmp_path):
    pytest.importorskip("apache_beam")
    from coldpress.pipelines.beam import encode_beam

    manifest = encode_beam(jpeg_tree, tmp_path / "beam", codec="jpeg", bpp=BPP, rows_per_shard=16, progress=False,
                           pipeline_args=["--direct_num_workers=1"])
    assert (manifest["archived"], manifest["rejected"]) == (70, 2)
    assert not (tmp_path / "beam" / "_inputs").exists() and not (tmp_path / "beam" / "_staging").exists()
    local = encode_local(jpeg_tree, tmp_path / "local", codec="jpeg", bpp=BPP, rows_per_shard=16, progress=False)
    assert local["num_rows"] == 70
    assert _shards(tmp_path / "beam") == _shards(tmp_path / "local")


def test_read_ahead_reads_local_files_inline_and_remote_ones_in_threads(tmp_path, monkeypatch):
    """Local sources are read in the caller's thread (threads' hand-offs cost more than a local read);
    a remote store's go to the read threads; either way in order, a failure given as its exception."""
    import threading

    import fsspec

    from coldpress.transforms import sources

    for i in range(3):
        (tmp_path / f"{i}.bin").write_bytes(bytes([i]) * 10)
    local = [(str(tmp_path / f"{i}.bin"), f"{i}.bin") for i in range(3)] + [(str(tmp_path / "gone.bin"), "gone.bin")]
    fs = fsspec.filesystem("memory")
    for i in range(3):
        fs.pipe_file(f"/coldpress-read-ahead/{i}.bin", bytes([i]) * 10)
    remote = [(f"memory:///coldpress-read-ahead/{i}.bin", f"{i}.bin") for i in range(3)]
    remote.append(("memory:///coldpress-read-ahead/gone.bin", "gone.bin"))

    threads: list[str] = []
    original = sources.read_source

    def recording(uri, storage_options=None):
        threads.append(threading.current_thread().name)
        return original(uri, storage_options)

    monkeypatch.setattr(sources, "read_source", recording)
    try:
        for listed, expect_threads in ((local, False), (remote, True)):
            threads.clear()
            got = list(sources.read_ahead(listed))
            assert [(u, k) for u, k, _ in got] == listed
            assert [d for _, _, d in got[:3]] == [bytes([i]) * 10 for i in range(3)]
            assert isinstance(got[3][2], FileNotFoundError)
            assert len(threads) == 4
            assert {name.startswith("coldpress-read") for name in threads} == {expect_threads}
    finally:
        fs.rm("/coldpress-read-ahead", recursive=True)


@pytest.mark.parametrize("engine", ["local", "beam"])
def test_two_object_keys_with_one_id_archive_one_and_reject_the_other(engine, s3_server, s3_bucket, s3_options,
                                                                      tmp_path):
    """An object store keeps "x//a.png" beside "x/a.png"; both give the id "x/a.png". The first (by key) is
    archived under it, the other rejected with the reason, on every engine (never two rows of one id)."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    for key, seed in (("x/a.png", 1), ("x//a.png", 2), ("x/b.png", 3)):
        out = io.BytesIO()
        Image.fromarray(natural_image(64, 64, seed=seed)).save(out, format="PNG")
        fs.call_s3("put_object", Bucket=s3_bucket, Key=f"src/{key}", Body=out.getvalue())
    src, dst = f"s3://{s3_bucket}/src", f"s3://{s3_bucket}/archive-{engine}"
    if engine == "local":
        manifest = encode_local(src, dst, codec="jpeg", bpp=2.0, storage_options=s3_options, progress=False, workers=1)
    else:
        from coldpress.pipelines.beam import encode_beam

        manifest = encode_beam(src, dst, codec="jpeg", bpp=2.0, storage_options=s3_options, progress=False,
                               pipeline_args=["--direct_num_workers=1"])
    assert (manifest["archived"], manifest["rejected"]) == (2, 1)
    archive = open_archive(dst, storage_options=s3_options)
    rows = archive.read(columns=["id", "source_uri"]).to_pylist()
    assert sorted((r["id"], r["source_uri"].rsplit("/src/", 1)[1]) for r in rows) == [("x/a.png", "x//a.png"),
                                                                                      ("x/b.png", "x/b.png")]
    [rejected] = archive.rejected().to_pylist()
    assert rejected["source_uri"].endswith("/src/x/a.png") and rejected["id"] == "x/a.png#collision"
    assert "which another file under SRC also gives" in rejected["reason"] and "rename one of them" in rejected["reason"]
