"""The Apache Beam engine on Beam's own local runner: real pipelines, real Parquet, a real S3 server.

Every pipeline runs on FnApiRunner (the runner coldpress pins: DirectRunner would try to download
Prism); most in this process (``--direct_num_workers=1``), the CLI test with the default of one
worker process per core. Archives written by Beam are compared with the local engine's, row by row.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from PIL import Image

from coldpress.errors import ArchiveError, ColdpressError
from coldpress.jobs.cli import main
from coldpress.pipelines.beam import (
    ARCHIVED,
    DEFAULT_RUNNER,
    REJECTED,
    CodecModelHandler,
    EncodeImages,
    IMAGES,
    ReadImages,
    encode_beam,
    make_pipeline,
    pipeline_options,
    restore_beam,
    restore_outcome,
)
from coldpress.pipelines.local import encode_local, restore_local, verify_local
from coldpress.transforms.archive import open_archive, write_shard
from coldpress.transforms.sources import list_sources
from synthetic_images import natural_image

IN_PROCESS = ["--direct_num_workers=1"]
CODEC, BPP = "webp", 0.5  # fast, and reaches 0.5 bpp on the 96x128 test images
GOOD = {  # key -> (height, width, mode, format)
    "a.png": (96, 128, "RGB", "PNG"),
    "b.jpg": (128, 96, "RGB", "JPEG"),
    "c.bmp": (96, 128, "RGB", "BMP"),
    "sub/d.png": (96, 128, "L", "PNG"),
    "sub/deeper/e.tif": (100, 120, "RGB", "TIFF"),
}
BAD = {  # key -> what its rejection reason must say
    "empty.png": "empty",
    "notes.txt": "not an image",
    "truncated.png": "truncated",
    "tiny.png": "raise --bpp",
}


def _encoded(key: str, seed: int) -> bytes:
    h, w, mode, fmt = GOOD[key]
    buf = io.BytesIO()
    Image.fromarray(natural_image(h, w, mode, seed=seed)).save(buf, format=fmt)
    return buf.getvalue()


def _files(bad: bool = True) -> dict[str, bytes]:
    files = {key: _encoded(key, seed) for seed, key in enumerate(GOOD)}
    if bad:
        png = io.BytesIO()
        Image.fromarray(natural_image(96, 128, "RGB", seed=9)).save(png, format="PNG")
        tiny = io.BytesIO()
        Image.fromarray(natural_image(8, 8, "RGB", seed=10)).save(tiny, format="PNG")
        files.update({"empty.png": b"", "notes.txt": b"shopping list\n",
                      "truncated.png": png.getvalue()[: len(png.getvalue()) // 2], "tiny.png": tiny.getvalue()})
    return files


def make_tree(root: Path, bad: bool = True) -> Path:
    for key, data in _files(bad).items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def rows_by_id(archive: str, storage_options=None) -> dict[str, dict]:
    from coldpress.transforms.sources import filesystem_for

    fs, _ = filesystem_for(archive, storage_options)
    return {r["id"]: r for r in open_archive(archive, filesystem=fs).read().to_pylist()}


def rejected_by_id(archive: str) -> dict[str, str]:
    return {r["id"]: r["reason"] for r in open_archive(archive).rejected().to_pylist()}


def shard_layout(archive: str) -> list[tuple]:
    return [(s.name, s.num_rows, s.min_id, s.max_id) for s in open_archive(archive).shards]


# -- encode ----------------------------------------------------------------------------------------
def test_folder_with_bad_inputs_gives_the_local_engines_archive(tmp_path, caplog):
    src = make_tree(tmp_path / "src")
    caplog.set_level(logging.INFO)
    manifest = encode_beam(src, tmp_path / "beam", codec=CODEC, bpp=BPP, rows_per_shard=2,
                           pipeline_args=IN_PROCESS, progress=False)
    # Pinned runner: nothing tried Prism (which downloads a binary) or fell back from it.
    assert not [r for r in caplog.records if "prism" in r.getMessage().lower()]
    assert manifest["engine"] == "beam" and manifest["runner"] == DEFAULT_RUNNER and manifest["complete"]
    assert (manifest["inputs_seen"], manifest["archived"], manifest["rejected"]) == (9, 5, 4)

    # Nothing lost: every input is archived or rejected, never both, and each rejection says why.
    archived, rejected = rows_by_id(str(tmp_path / "beam")), rejected_by_id(str(tmp_path / "beam"))
    assert set(archived) == set(GOOD) and set(rejected) == set(BAD)
    for key, says in BAD.items():
        assert says in rejected[key], (key, rejected[key])
    report = verify_local(tmp_path / "beam", progress=False)
    assert (report["rows"], report["ok"], report["rejected"]) == (5, 5, 4), report["failures"]

    # Same archive as the local engine: bitstreams, hashes and rejection reasons per id, and the same
    # shards (rows_per_shard=2: three shards, cut at the same ids).
    encode_local(src, tmp_path / "local", codec=CODEC, bpp=BPP, rows_per_shard=2, progress=False)
    local = rows_by_id(str(tmp_path / "local"))
    for rid, row in local.items():
        for column in ("bitstream", "bitstream_sha256", "recon_sha256", "source_sha256", "width", "height",
                       "mode", "achieved_bpp", "psnr", "metadata", "source_uri"):
            assert archived[rid][column] == row[column], (rid, column)
    assert rejected == rejected_by_id(str(tmp_path / "local"))
    assert shard_layout(str(tmp_path / "beam")) == shard_layout(str(tmp_path / "local"))
    assert len(shard_layout(str(tmp_path / "beam"))) == 3


def test_resume_adds_only_new_inputs_and_retries_rejected_ones(tmp_path):
    src = make_tree(tmp_path / "src")
    dst = tmp_path / "archive"
    encode_beam(src, dst, codec=CODEC, bpp=BPP, pipeline_args=IN_PROCESS)
    (src / "empty.png").write_bytes(_encoded("a.png", seed=42))  # fixed input: archived on the next run
    (src / "new.png").write_bytes(_encoded("a.png", seed=43))
    manifest = encode_beam(src, dst, codec=CODEC, bpp=BPP, pipeline_args=IN_PROCESS)
    assert (manifest["skipped"], manifest["archived"], manifest["rejected"]) == (5, 2, 3)
    assert manifest["shards_written"] == ["part-00001.parquet"] and len(manifest["runs"]) == 2
    assert set(rows_by_id(str(dst))) == set(GOOD) | {"empty.png", "new.png"}
    assert set(rejected_by_id(str(dst))) == set(BAD) - {"empty.png"}
    with pytest.raises(ArchiveError, match="resume is off"):
        encode_beam(src, dst, codec=CODEC, bpp=BPP, resume=False, pipeline_args=IN_PROCESS)


def test_inputs_a_runner_drops_silently_are_encoded_in_another_pass(tmp_path, monkeypatch, caplog):
    """A runner that loses elements without failing the job (FnApiRunner's multi_processing mode did at
    100,000 inputs) is caught by the counts: the dropped inputs are encoded by a further pass, the manifest
    says how many were dropped; a runner that keeps dropping them fails the job with what to do."""
    from coldpress.pipelines.beam import jobs

    src = make_tree(tmp_path / "src")
    real_graph = jobs.encode_graph
    passes: list[int] = []

    def dropping_graph(p, listing, *args, drop_passes: int):
        passes.append(len(passes))
        if len(passes) <= drop_passes:  # the listing's last input vanishes between the read and the encode
            real_read = jobs.ReadImages

            class DroppingRead(real_read):
                def expand(self, pbegin):
                    outputs = super().expand(pbegin)
                    kept = outputs[IMAGES] | "Drop one" >> beam.Filter(lambda item: item[0] != "sub/d.png")
                    return {IMAGES: kept, REJECTED: outputs[REJECTED]}

            monkeypatch.setattr(jobs, "ReadImages", DroppingRead)
            try:
                return real_graph(p, listing, *args)
            finally:
                monkeypatch.setattr(jobs, "ReadImages", real_read)
        return real_graph(p, listing, *args)

    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(jobs, "encode_graph", lambda p, listing, *args: dropping_graph(p, listing, *args, drop_passes=1))
    manifest = encode_beam(src, tmp_path / "a", codec=CODEC, bpp=BPP, pipeline_args=IN_PROCESS, progress=False)
    assert len(passes) == 2 and manifest["runner_lost_inputs"] == [1]
    assert (manifest["archived"], manifest["rejected"], manifest["skipped"]) == (5, 4, 0)  # over both passes
    assert manifest["resume"] is True and len(manifest["run_id"]) == 32
    assert "dropped 1 of 9 input(s)" in caplog.text
    assert set(rows_by_id(str(tmp_path / "a"))) == set(GOOD) and set(rejected_by_id(str(tmp_path / "a"))) == set(BAD)

    passes.clear()
    monkeypatch.setattr(jobs, "encode_graph", lambda p, listing, *args: dropping_graph(p, listing, *args, drop_passes=9))
    with pytest.raises(ArchiveError, match=r"dropped inputs without an error in 3 passes \(1, 1, 1 inputs\).*without --no-resume"):
        encode_beam(src, tmp_path / "b", codec=CODEC, bpp=BPP, resume=False, pipeline_args=IN_PROCESS, progress=False)
    assert set(rows_by_id(str(tmp_path / "b"))) == set(GOOD) - {"sub/d.png"}


def test_resume_and_restore_on_a_layout_1_archive(tmp_path):
    """An archive written before layout 2 (manifest.json and rejected.parquet beside the shards):
    Beam restores from it, and a resumed Beam encode keeps its history and migrates it."""
    from layout_helpers import make_layout_1

    src = make_tree(tmp_path / "src")
    dst = tmp_path / "archive"
    encode_local(src, dst, codec=CODEC, bpp=BPP, progress=False)
    make_layout_1(dst)
    paths = restore_beam(dst, tmp_path / "out", ids=["a.png"], pipeline_args=IN_PROCESS, progress=False)
    assert [Path(p).name for p in paths] == ["a.png"]
    (src / "new.png").write_bytes(_encoded("a.png", seed=43))
    manifest = encode_beam(src, dst, codec=CODEC, bpp=BPP, pipeline_args=IN_PROCESS, progress=False)
    assert (manifest["skipped"], manifest["archived"], manifest["layout"]) == (5, 1, 2)
    assert len(manifest["runs"]) == 2
    assert sorted(p.name for p in dst.iterdir()) == ["_manifest.json", "_rejected", "part-00000.parquet",
                                                    "part-00001.parquet"]
    assert set(rejected_by_id(str(dst))) == set(BAD)
    assert set(rows_by_id(str(dst))) == set(GOOD) | {"new.png"}


def test_learned_codec_bitstreams_are_identical_across_engines(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for seed in range(2):
        Image.fromarray(natural_image(96, 128, "RGB", seed=seed)).save(src / f"img{seed}.png")
    engines = {
        "local": lambda dst: encode_local(src, dst, codec="learned", bpp=0.1, progress=False),
        "beam": lambda dst: encode_beam(src, dst, codec="learned", bpp=0.1, pipeline_args=IN_PROCESS),
    }
    bitstreams = {}
    for name, encode in engines.items():
        manifest = encode(tmp_path / name)
        assert manifest["archived"] == 2, manifest
        bitstreams[name] = {rid: row["bitstream"] for rid, row in rows_by_id(str(tmp_path / name)).items()}
    assert bitstreams["beam"] == bitstreams["local"]
    assert set(bitstreams["beam"]) == {"img0.png", "img1.png"}


def test_a_model_given_as_a_file_reaches_the_workers(tmp_path):
    from synthetic_images import model_file

    path = model_file(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(natural_image(64, 96, "RGB", seed=31)).save(src / "im.png")
    manifest = encode_beam(src, tmp_path / "beam", codec="learned", bpp=0.3, pipeline_args=IN_PROCESS,
                           codec_options={"model": str(path), "scale_search": False})
    assert manifest["archived"] == 1 and manifest["rejected"] == 0, manifest
    assert rows_by_id(str(tmp_path / "beam"))["im.png"]["model_id"] == "test-model-file"


def test_one_model_shared_across_processes_gives_the_same_rows(tmp_path):
    """large_model: RunInference hosts one codec per machine (multi_process_shared) and every batch is
    a round trip to it; the rows must not change."""
    src = make_tree(tmp_path / "src", bad=False)
    sources = list_sources(str(src))
    with make_pipeline(pipeline_options(IN_PROCESS)) as p:
        read = p | ReadImages(sources)
        encoded = read["images"] | EncodeImages(CODEC, BPP, large_model=True, max_batch_size=2)
        _ = encoded[ARCHIVED] | "Save" >> beam.Map(
            lambda row, out: (out / (row["id"].replace("/", "_") + ".bin")).write_bytes(row["bitstream"]),
            out=tmp_path)
    encode_local(src, tmp_path / "local", codec=CODEC, bpp=BPP, progress=False)
    for rid, row in rows_by_id(str(tmp_path / "local")).items():
        assert (tmp_path / (rid.replace("/", "_") + ".bin")).read_bytes() == row["bitstream"], rid


class _LosesItsModelOn(CodecModelHandler):
    """A handler whose inference call fails for batches holding one key: as when a shared model's
    process dies mid-call. (Fault injection by subclassing the real handler.)"""

    def __init__(self, key: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._key = key

    def run_inference(self, batch, model, inference_args=None):
        if any(item[0] == self._key for item in batch):
            raise ConnectionResetError("the shared model's process went away")
        return super().run_inference(batch, model, inference_args)


def _save_reason(row: dict, folder: Path) -> None:
    (folder / row["id"].replace("/", "_")).write_text(row.get("reason", "archived"))


def test_a_failed_batch_fails_the_job_and_rejects_none_of_its_inputs(tmp_path):
    """A batch whose inference raises is not its inputs' fault: the bundle fails (the runner retries,
    then fails the job) and no input is written to the rejected table; a resumed run encodes it."""
    src = make_tree(tmp_path / "src", bad=False)
    out = tmp_path / "out"
    for tag in (ARCHIVED, REJECTED):
        (out / tag).mkdir(parents=True)
    with pytest.raises(Exception, match="went away"):
        with make_pipeline(pipeline_options(IN_PROCESS)) as p:
            read = p | ReadImages(str(src))
            encoded = read["images"] | EncodeImages(handler=_LosesItsModelOn("b.jpg", CODEC, BPP, max_batch_size=1))
            for tag in (ARCHIVED, REJECTED):
                _ = encoded[tag] | f"Save {tag}" >> beam.Map(_save_reason, folder=out / tag)
    assert list((out / REJECTED).iterdir()) == []


# -- S3 and the command line -----------------------------------------------------------------------
def test_cli_encodes_from_s3_with_the_default_runner_and_restores(tmp_path, capsys, s3_server, s3_bucket, s3_options):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    for key, data in _files().items():
        fs.pipe(f"{s3_bucket}/photos/{key}", data)
    src, dst = f"s3://{s3_bucket}/photos", f"s3://{s3_bucket}/archive"
    # Default pipeline options: FnApiRunner with one worker process per core; the workers reach the
    # loopback server through AWS_ENDPOINT_URL, inherited from this process (set by the fixture).
    code = main(["encode", src, dst, "--bpp", str(BPP), "--codec", CODEC, "--engine", "beam"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "archived 5, rejected 4" in out
    archived = rows_by_id(dst, s3_options)
    assert set(archived) == set(GOOD)
    assert archived["sub/d.png"]["source_uri"] == f"s3://{s3_bucket}/photos/sub/d.png"
    from coldpress.transforms.sources import filesystem_for

    s3, _ = filesystem_for(dst, s3_options)
    assert {r["id"] for r in open_archive(dst, filesystem=s3).rejected().to_pylist()} == set(BAD)

    # Restore two ids from the S3 archive with Beam: the files decode to the pixels recorded at encode.
    code = main(["restore", dst, str(tmp_path / "restored"), "--id", "sub/d.png", "--id", "c.bmp",
                 "--engine", "beam", "--beam-option=--direct_num_workers=1"])
    assert code == 0 and "restored 2 image(s)" in capsys.readouterr().out
    paths = [tmp_path / "restored" / "c.png", tmp_path / "restored" / "sub" / "d.png"]
    for rid, path in zip(["c.bmp", "sub/d.png"], paths):
        pixels = np.asarray(Image.open(path))
        assert hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest() == archived[rid]["recon_sha256"]
    assert sorted(p.name for p in (tmp_path / "restored").iterdir()) == ["c.png", "sub"]  # no report left


def test_cli_beam_options_pass_through_and_are_checked(tmp_path, capsys):
    src = make_tree(tmp_path / "src", bad=False)
    # A runner named on the command line is the one that runs (here Beam's bundle-based direct runner).
    code = main(["encode", str(src), str(tmp_path / "a"), "--bpp", str(BPP), "--codec", CODEC, "--engine", "beam",
                 "--beam-option=--runner=BundleBasedDirectRunner", "--quiet"])
    assert code == 0
    assert open_archive(str(tmp_path / "a")).manifest["runner"] == "BundleBasedDirectRunner"
    assert main(["encode", str(src), str(tmp_path / "b"), "--bpp", str(BPP), "--codec", CODEC,
                 "--beam-option=--runner=FlinkRunner"]) == 1
    assert "--beam-option applies to --engine beam only" in capsys.readouterr().err
    assert main(["encode", str(src), str(tmp_path / "c"), "--bpp", str(BPP), "--codec", CODEC, "--engine", "beam",
                 "--beam-option=runner=FlinkRunner"]) == 1
    assert "must be flags starting with '--'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_default_options_pin_the_offline_runner():
    options = pipeline_options([])
    assert options.view_as(beam.options.pipeline_options.StandardOptions).runner == DEFAULT_RUNNER
    assert type(make_pipeline(options).runner).__name__ == "FnApiRunner"
    flink = pipeline_options(["--runner=FlinkRunner", "--flink_master=localhost:8081"])
    assert flink.view_as(beam.options.pipeline_options.StandardOptions).runner == "FlinkRunner"
    with pytest.raises(ColdpressError, match="--beam-option=--runner"):
        pipeline_options(["FlinkRunner"])


# -- restore ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("beam-restore")
    src = make_tree(root / "src", bad=False)
    encode_local(src, root / "archive", codec=CODEC, bpp=BPP, rows_per_shard=3, progress=False)
    return root / "archive"


def test_restore_writes_the_local_engines_files(archive, tmp_path):
    paths = restore_beam(archive, tmp_path / "beam", pipeline_args=IN_PROCESS)
    expected = restore_local(archive, tmp_path / "local", progress=False)
    assert [Path(p).relative_to(tmp_path / "beam") for p in paths] == \
        [Path(p).relative_to(tmp_path / "local") for p in expected]
    for ours, theirs in zip(paths, expected):
        assert Path(ours).read_bytes() == Path(theirs).read_bytes()
    with pytest.raises(ArchiveError, match="nope.png"):
        restore_beam(archive, tmp_path / "absent", ids=["a.png", "nope.png"], pipeline_args=IN_PROCESS)
    assert not (tmp_path / "absent").exists()  # refused before anything was written


def test_restore_reports_what_was_restored_not_what_was_planned():
    """The launcher's result comes from the pipeline's own report: an id the runner neither restored
    nor failed (a lost element) is a failure, never a path said to exist."""
    report = {"restored": [["b.png", "/dst/b.png"], ["a.png", "/dst/a.png"]], "failures": [["c.png", "damaged"]]}
    written, failures = restore_outcome(report, ["a.png", "b.png", "c.png", "d.png"])
    assert written == ["/dst/a.png", "/dst/b.png"]
    assert failures[0] == ("c.png", "damaged")
    assert [rid for rid, _ in failures[1:]] == ["d.png"] and "without restoring" in failures[1][1]


def test_restore_skips_a_corrupt_row_writes_the_others_and_says_which(archive, tmp_path):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(archive, damaged)
    shard = open_archive(str(damaged)).shards[0]
    rows = open_archive(str(damaged)).read(ids=None).to_pylist()
    rows = [r for r in rows if shard.min_id <= r["id"] <= shard.max_id]
    bad = rows[0]
    flipped = bytearray(bad["bitstream"])
    flipped[len(flipped) // 2] ^= 0x40
    bad["bitstream"] = bytes(flipped)
    write_shard(str(damaged), 0, rows, overwrite=True)

    with pytest.raises(ArchiveError) as info:
        restore_beam(damaged, tmp_path / "out", pipeline_args=IN_PROCESS)
    message = str(info.value)
    assert f"1 of {len(GOOD)} image(s) could not be restored" in message and bad["id"] in message
    assert "restore the archive file from a replica" in message
    written = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert len(written) == len(GOOD) - 1 and not any(name.startswith(".") for name in written)


def test_bench_pipeline_compares_beam_with_the_plain_loop(tmp_path, capsys):
    import json

    folder = tmp_path / "images"
    folder.mkdir()
    for seed in range(3):
        Image.fromarray(natural_image(96, 128, "RGB", seed=seed)).save(folder / f"img{seed}.png")
    code = main(["bench", "pipeline", str(folder), "--engine", "beam", "--codec", CODEC, "--bpp", str(BPP),
                 "--limit", "2", "--out", str(tmp_path / "out"), "--beam-option=--direct_num_workers=1"])
    assert code == 0
    report = json.loads((tmp_path / "out" / f"pipeline-beam-{CODEC}.json").read_text())
    rows = {(r["stage"], r["engine"]): r for r in report["rows"]}
    assert set(rows) == {(stage, engine) for stage in ("encode", "restore") for engine in ("local (plain loop)", "beam")}
    loop, engine = rows["encode", "local (plain loop)"], rows["encode", "beam"]
    assert engine["runner"] == DEFAULT_RUNNER
    assert loop["archived"] == engine["archived"] == 2 and engine["identical_bitstreams"] is True
    for stage in ("encode", "restore"):
        loop, engine = rows[stage, "local (plain loop)"], rows[stage, "beam"]
        assert engine["speedup"] == pytest.approx(loop["seconds"] / engine["seconds"], rel=0.05, abs=0.002)  # seconds are rounded
    assert "bitstreams identical: True" in capsys.readouterr().out
