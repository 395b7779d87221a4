"""The Ray engine on a real local Ray instance (2 CPUs, shared by the module): encode, restore, the
warm restore service, resume after a killed driver, S3 through the test server, and the CLI."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from coldpress.errors import ArchiveError, ColdpressError  # noqa: E402
from coldpress.jobs import cli  # noqa: E402
from coldpress.pipelines.local import encode_local, restore_local, verify_local  # noqa: E402
from coldpress.pipelines.ray import RestoreService, connect, encode_ray, restore_ray  # noqa: E402
from coldpress.transforms.archive import open_archive, write_shard  # noqa: E402
from coldpress.transforms.records import decode_record  # noqa: E402
from synthetic_images import natural_image  # noqa: E402

BPP = 2.5  # 96x64 images: every reference codec reaches it, the lossless alpha plane included


@pytest.fixture(scope="module", autouse=True)
def ray_instance(s3_server):
    """Ray workers get the environment of ray.init: start it after the S3 server set its credentials."""
    if ray.is_initialized():
        ray.shutdown()
    connect(num_cpus=2, object_store_memory=256 << 20, quiet=True)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """Nine images of every mode in two folders, and three inputs that must be rejected."""
    root = tmp_path_factory.mktemp("src")
    for i in range(6):
        _save(root / f"img_{i}.png", natural_image(64, 96, seed=i))
    _save(root / "sub" / "gray.png", natural_image(64, 96, mode="L", seed=7))
    _save(root / "sub" / "alpha.png", natural_image(64, 96, mode="RGBA", seed=8))
    _save(root / "sub" / "deep" / "img.png", natural_image(48, 80, seed=9))
    (root / "notes.txt").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    good = io.BytesIO()
    Image.fromarray(natural_image(64, 96, seed=10)).save(good, format="PNG")
    (root / "truncated.png").write_bytes(good.getvalue()[:200])
    return root


def _shard_ids(archive: Path) -> list[str]:
    """Every id of every shard file, read with plain pyarrow (duplicates across shards stay)."""
    ids = []
    for path in sorted(archive.glob("*.parquet")):  # side files start with '_' and hold no shards
        ids += pq.read_table(path, columns=["id"]).column("id").to_pylist()
    return ids


def _bitstreams(archive: Path) -> dict[str, bytes]:
    return {r["id"]: r["bitstream"] for r in open_archive(archive).read(columns=["id", "bitstream"]).to_pylist()}


def _rejected(archive: Path) -> dict[str, str]:
    return {r["id"]: r["reason"] for r in open_archive(archive).rejected().to_pylist()}


@pytest.fixture(scope="module")
def local_archive(src, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("local") / "archive"
    encode_local(src, dst, codec="webp", bpp=BPP, progress=False)
    return dst


@pytest.fixture(scope="module")
def ray_archive(src, tmp_path_factory) -> tuple[Path, dict]:
    dst = tmp_path_factory.mktemp("ray") / "archive"
    manifest = encode_ray(src, dst, codec="webp", bpp=BPP, progress=False, rows_per_shard=3, batch_size=2)
    return dst, manifest


def test_encode_writes_the_local_engines_archive(ray_archive, local_archive):
    dst, manifest = ray_archive
    assert _bitstreams(dst) == _bitstreams(local_archive)  # same ids, byte-identical bitstreams
    assert len(_bitstreams(dst)) == 9
    assert _rejected(dst) == _rejected(local_archive)  # same inputs rejected, same reasons
    assert set(_rejected(dst)) == {"notes.txt", "empty.png", "truncated.png"}
    assert manifest["engine"] == "ray" and manifest["complete"] is True
    assert (manifest["archived"], manifest["rejected"], manifest["num_rows"]) == (9, 3, 9)
    # Deterministic names: part-<write task index>; each id in exactly one shard; the manifest lists them.
    shards = sorted(p.name for p in dst.glob("part-*.parquet"))
    assert shards == sorted(manifest["shards_written"])
    assert all(name.startswith("part-") and name[5:10].isdigit() for name in shards)
    assert sorted(_shard_ids(dst)) == sorted(_bitstreams(dst))
    assert not list(dst.glob(".*"))  # no temporary files left
    report = verify_local(dst, progress=False)
    assert report["ok"] == 9 and not report["failures"]


def test_learned_codec_bitstreams_match_the_local_engine(tmp_path):
    from coldpress.codec.models import default_model_available

    if not default_model_available():
        pytest.skip("no learned model bundled")
    src = tmp_path / "src"
    for i in range(2):
        _save(src / f"im{i}.png", natural_image(64, 96, seed=20 + i))
    encode_local(src, tmp_path / "local", codec="learned", bpp=0.3, progress=False)
    manifest = encode_ray(src, tmp_path / "ray", codec="learned", bpp=0.3, progress=False, num_actors=1)
    assert manifest["archived"] == 2 and manifest["model_id"]
    assert _bitstreams(tmp_path / "ray") == _bitstreams(tmp_path / "local")


def test_a_model_given_as_a_file_and_codec_options_reach_the_actors(tmp_path):
    """--model path/to/model.safetensors on Ray (the actors got the model's id and failed to find it)."""
    from coldpress.codec import get_codec
    from coldpress.codec.models import default_model_available
    from coldpress.pipelines.ray import _codec_spec
    from synthetic_images import model_file

    if not default_model_available():
        pytest.skip("no learned model bundled")
    path = model_file(tmp_path)
    src = tmp_path / "src"
    _save(src / "im.png", natural_image(64, 96, seed=30))
    manifest = encode_ray(src, tmp_path / "ray", codec="learned", bpp=0.3, progress=False, num_actors=1,
                          codec_options={"model": str(path), "scale_search": False})
    assert manifest["archived"] == 1 and manifest["rejected"] == 0, manifest
    row = open_archive(str(tmp_path / "ray")).read().to_pylist()[0]
    assert row["model_id"] == "test-model-file"
    name, options = _codec_spec(get_codec("learned", model=str(path), tile=512, scale_search=False, device="cpu"))
    assert (name, options) == ("learned", {"model": str(path.resolve()), "tile": 512, "scale_search": False,
                                           "device": "cpu"})


def test_restore_matches_the_local_engine(ray_archive, tmp_path):
    dst, _ = ray_archive
    paths = restore_ray(dst, tmp_path / "ray", progress=False, batch_size=3)
    expected = restore_local(dst, tmp_path / "local", progress=False)
    assert [os.path.relpath(p, tmp_path / "ray") for p in paths] == \
        [os.path.relpath(p, tmp_path / "local") for p in expected]
    for a, b in zip(paths, expected):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), a
    # Some ids only, another format; an absent id fails before anything is written.
    some = restore_ray(dst, tmp_path / "some", ids=["sub/gray.png", "img_3.png"], fmt="tiff", progress=False)
    assert [os.path.relpath(p, tmp_path / "some") for p in some] == ["img_3.tif", os.path.join("sub", "gray.tif")]
    with pytest.raises(ArchiveError, match="nope.png"):
        restore_ray(dst, tmp_path / "none", ids=["img_1.png", "nope.png"], progress=False)
    assert not (tmp_path / "none").exists()


def test_restore_names_cannot_escape_and_bad_rows_are_reported(ray_archive, tmp_path):
    """A crafted archive: hostile ids stay under DST; a corrupt row is listed, the others written."""
    dst, _ = ray_archive
    rows = open_archive(dst).read(ids=["img_0.png", "img_1.png", "img_2.png", "img_3.png"]).to_pylist()
    hostile = ["../../escape.png", "/etc/passwd.png", "a/../../../b.png"]
    for row, rid in zip(rows, hostile):
        row["id"] = rid
    rows[3]["id"] = "corrupt.png"
    rows[3]["bitstream"] = rows[3]["bitstream"][:-1] + bytes([rows[3]["bitstream"][-1] ^ 1])
    crafted = tmp_path / "crafted"
    write_shard(crafted, 0, rows)
    out = tmp_path / "out"
    with pytest.raises(ArchiveError, match="1 of 4 image.*corrupt.png.*sha256"):
        restore_ray(crafted, out, progress=False)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert len(written) == 3
    for p in out.rglob("*"):
        assert p.resolve().is_relative_to(out.resolve())
    assert not (tmp_path / "escape.png").exists() and not Path("/etc/passwd.png").exists()


def test_restore_service_answers_by_id(ray_archive, tmp_path):
    dst, _ = ray_archive
    row = open_archive(dst).read(ids=["sub/alpha.png"]).to_pylist()[0]
    with RestoreService.start(dst, num_decoders=2) as service:
        assert service.info()["decoders"] == 2
        pixels = service.restore_pixels(["sub/alpha.png"])["sub/alpha.png"]
        assert np.array_equal(pixels, decode_record(row)) and pixels.shape == (64, 96, 4)
        again = RestoreService.connect(str(dst) + "/")  # the same service, found by the archive's path
        out = again.restore(["img_4.png", "sub/deep/img.png"], tmp_path / "out", fmt="png")
        assert [os.path.relpath(p, tmp_path / "out") for p in out] == ["img_4.png", os.path.join("sub", "deep", "img.png")]
        with pytest.raises(ArchiveError, match="missing.png"):
            service.restore_pixels(["img_4.png", "missing.png"])
    with pytest.raises(ColdpressError, match="no restore service"):
        RestoreService.connect(dst)


def test_resume_after_the_driver_is_killed(tmp_path, ray_instance):
    """A driver killed mid-run leaves complete shards; the next run adds exactly the rest."""
    src = tmp_path / "src"
    n = 10
    for i in range(n):
        _save(src / f"im_{i:02d}.png", natural_image(128, 192, seed=100 + i))
    dst = tmp_path / "archive"
    code = (
        "from coldpress.pipelines.ray import encode_ray\n"
        f"encode_ray({str(src)!r}, {str(dst)!r}, codec='avif', bpp=1.0, address={ray_instance!r}, "
        "rows_per_shard=1, batch_size=1, num_actors=1, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and len(list(dst.glob("part-*.parquet"))) < 2 and proc.poll() is None:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _shard_ids(dst)
    assert 2 <= len(before) < n, "the first run should have been killed part way"
    assert not (dst / "_manifest.json").exists()
    manifest = encode_ray(src, dst, codec="avif", bpp=1.0, progress=False, rows_per_shard=4)
    ids = _shard_ids(dst)
    assert sorted(ids) == [f"im_{i:02d}.png" for i in range(n)]  # no duplicates, no gaps
    assert manifest["skipped"] == len(set(before)) and manifest["archived"] == n - len(set(before))
    assert manifest["num_rows"] == n and verify_local(dst, progress=False)["ok"] == n


def test_s3_source_and_archive(tmp_path, s3_bucket, s3_options, src):
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    for name in ("img_0.png", "img_1.png", "sub/gray.png", "notes.txt"):
        fs.put_file(str(src / name), f"{s3_bucket}/photos/{name}")
    archive = f"s3://{s3_bucket}/archive"
    manifest = encode_ray(f"s3://{s3_bucket}/photos", archive, codec="jpeg", bpp=BPP, storage_options=s3_options,
                          progress=False)
    assert (manifest["archived"], manifest["rejected"]) == (3, 1)
    assert fs.exists(f"{s3_bucket}/archive/_manifest.json")
    paths = restore_ray(archive, tmp_path / "out", ids=["sub/gray.png"], storage_options=s3_options, progress=False)
    restored = np.asarray(Image.open(paths[0]))
    original = np.asarray(Image.open(src / "sub" / "gray.png"))
    assert restored.shape == original.shape and np.mean(np.abs(restored.astype(int) - original)) < 20
    # Ray Data reads the archive directory on S3 too: the archived rows only, not the rejected table.
    from pyarrow.fs import S3FileSystem

    s3 = S3FileSystem(endpoint_override=s3_options["client_kwargs"]["endpoint_url"], scheme="http",
                      region="us-east-1", access_key="testing", secret_key="testing", session_token="testing")
    data = ray.data.read_parquet(f"{s3_bucket}/archive", filesystem=s3)
    assert sorted(data.to_pandas()["id"]) == ["img_0.png", "img_1.png", "sub/gray.png"]


def test_ray_data_reads_the_archive_directory(ray_archive):
    """ray.data.read_parquet(archive) reads exactly the archived rows with the archive's columns
    (the rejected table and the manifest start with '_', which Ray skips)."""
    from coldpress.jobs.inspect import inspect_archive
    from coldpress.transforms.schema import ARCHIVE_SCHEMA

    dst, _ = ray_archive
    expected = inspect_archive(str(dst), ids=True)
    assert expected["num_rejected"] == 3
    data = ray.data.read_parquet(str(dst))
    assert data.count() == expected["num_rows"] == 9
    assert data.schema().names == ARCHIVE_SCHEMA.names
    assert sorted(data.to_pandas()["id"]) == expected["ids"]


def test_resume_and_restore_on_a_layout_1_archive(ray_archive, src, tmp_path):
    """An archive written before layout 2 (manifest.json, rejected.parquet beside the shards):
    restore reads it, and a resumed encode keeps its rejections and run history and migrates it."""
    import shutil

    from layout_helpers import make_layout_1

    old = tmp_path / "old"
    shutil.copytree(ray_archive[0], old)
    make_layout_1(old)
    paths = restore_ray(old, tmp_path / "out", ids=["img_3.png"], progress=False)
    assert [Path(p).name for p in paths] == ["img_3.png"]
    more = tmp_path / "src"
    shutil.copytree(src, more)
    _save(more / "new.png", natural_image(64, 96, seed=30))
    manifest = encode_ray(more, old, codec="webp", bpp=BPP, progress=False, rows_per_shard=3)
    assert (manifest["skipped"], manifest["archived"], manifest["layout"]) == (9, 1, 2)
    assert len(manifest["runs"]) == 2
    assert sorted(p.name for p in old.iterdir() if not p.name.startswith("part-")) == ["_manifest.json", "_rejected"]
    assert set(_rejected(old)) == {"notes.txt", "empty.png", "truncated.png"}
    assert verify_local(old, progress=False)["ok"] == 10


def test_cli_engine_ray_and_service(src, tmp_path, capsys):
    dst = tmp_path / "archive"
    assert cli.main(["encode", str(src / "sub"), str(dst), "--engine", "ray", "--codec", "jpeg", "--bpp", str(BPP),
                     "--actors", "1", "--batch-size", "2", "--quiet"]) == 0
    assert sorted(_bitstreams(dst)) == ["alpha.png", "deep/img.png", "gray.png"]
    assert cli.main(["restore", str(dst), str(tmp_path / "all"), "--all", "--engine", "ray", "--quiet"]) == 0
    assert sorted(str(p.relative_to(tmp_path / "all")) for p in (tmp_path / "all").rglob("*.png")) == \
        ["alpha.png", os.path.join("deep", "img.png"), "gray.png"]
    capsys.readouterr()
    assert cli.main(["restore", str(dst), str(tmp_path / "one"), "--id", "gray.png", "--service"]) == 0
    assert "(started now)" in capsys.readouterr().out
    assert cli.main(["restore", str(dst), str(tmp_path / "one"), "--id", "alpha.png", "--format", "webp",
                     "--service", "--stop-service"]) == 0
    out = capsys.readouterr().out
    assert "restored 1 image(s)" in out and "started now" not in out and "service stopped" in out
    assert (tmp_path / "one" / "gray.png").exists() and (tmp_path / "one" / "alpha.webp").exists()
    with pytest.raises(ColdpressError):
        RestoreService.connect(dst)


def test_many_small_inputs_start_no_process_storm(tmp_path, ray_instance):
    """600 small inputs: Ray runs one actor per CPU and a bounded number of I/O tasks, not one worker
    process per block of reads (the old zero-CPU read tasks started dozens); every input once."""
    import threading

    import psutil

    from coldpress.pipelines.ray import IO_TASK_CONCURRENCY

    src = tmp_path / "src"
    src.mkdir()
    base = natural_image(64, 64, seed=1)
    for i in range(600):
        Image.fromarray(np.roll(base, i, axis=1)).save(src / f"{i:04d}.jpg", quality=80)
    gcs = f"--gcs-address={ray_instance}"
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            workers = 0
            for proc in psutil.process_iter(["cmdline"]):
                cmdline = proc.info["cmdline"] or []
                if gcs in cmdline and any(part.endswith("default_worker.py") for part in cmdline):
                    workers += 1
            peak[0] = max(peak[0], workers)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        manifest = encode_ray(src, tmp_path / "archive", codec="jpeg", bpp=2.0, progress=False)
    finally:
        stop.set()
        watcher.join()
    cpus = int(ray.cluster_resources()["CPU"])
    assert manifest["ray_actors"] == cpus and manifest["ray_block_rows"] == 600 // (cpus * 4)
    assert 1 <= peak[0] <= 2 * cpus + IO_TASK_CONCURRENCY, f"{peak[0]} Ray worker processes for {cpus} CPUs"
    ids = _shard_ids(tmp_path / "archive")
    assert sorted(ids) == [f"{i:04d}.jpg" for i in range(600)]  # every input exactly once
