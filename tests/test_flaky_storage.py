"""Flaky object storage: encode, verify, inspect and restore through a proxy that fails 5 % of the
S3 requests (503 SlowDown, 500 InternalError, reset connections, stalls past the client's read
timeout, GET responses cut in half) complete on every engine (local, Ray, Beam) with every input
archived exactly once, no partial shard visible, and every image restored."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs
from PIL import Image

from coldpress.jobs.inspect import inspect_archive
from coldpress.pipelines.local import encode_local, restore_local, verify_local
from coldpress.codec import get_codec
from coldpress.jobs.bench.faulty_s3 import FAULTS, FaultyS3, client_options
from coldpress.transforms.archive import ArchiveWriter, open_archive
from coldpress.transforms.plan import plan_encode, run_manifest
from synthetic_images import natural_image

RATE = float(os.environ.get("FLAKY_RATE", "0.05"))
N = 16


def _sources(s3_server: str, bucket: str, n: int = N) -> s3fs.S3FileSystem:
    s3fs.S3FileSystem.clear_instance_cache()
    direct = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    for i in range(n):
        out = io.BytesIO()
        Image.fromarray(natural_image(64, 64, seed=300 + i)).save(out, format="PNG")
        direct.pipe_file(f"{bucket}/src/{i:02d}.png", out.getvalue())
    return direct


def _engine(name: str):
    """(encode, restore) of an engine, with the engine options that keep a test small."""
    if name == "local":
        return (lambda *a, **k: encode_local(*a, workers=2, **k)), restore_local
    if name == "ray":
        from coldpress.pipelines.ray import encode_ray, restore_ray

        return encode_ray, restore_ray
    from coldpress.pipelines.beam import encode_beam, restore_beam

    args = ["--direct_num_workers=1"]
    return ((lambda *a, **k: encode_beam(*a, pipeline_args=args, **k)),
            (lambda *a, **k: restore_beam(*a, pipeline_args=args, **k)))


def _through_faults(engine: str, tmp_path, s3_server: str, bucket: str) -> None:
    direct = _sources(s3_server, bucket)
    encode, restore = _engine(engine)
    with FaultyS3(s3_server, rate=RATE, seed=7) as proxy:
        options = client_options(proxy.url)
        archive = f"s3://{bucket}/archive"
        manifest = encode(f"s3://{bucket}/src", archive, codec="jpeg", bpp=2.0, rows_per_shard=4,
                          storage_options=options, progress=False)
        report = verify_local(archive, storage_options=options, progress=False)
        stats = inspect_archive(archive, options)
        paths = restore(archive, str(tmp_path / "out"), fmt="png", storage_options=options, progress=False)
        again = encode(f"s3://{bucket}/src", archive, codec="jpeg", bpp=2.0, storage_options=options,
                       progress=False)
    print(engine, "faults", dict(proxy.counts))
    assert proxy.injected >= 3, proxy.counts  # the faults really happened
    assert (manifest["archived"], manifest["rejected"]) == (N, 0)
    assert (report["ok"], report["failures"]) == (N, [])
    assert (stats["num_rows"], stats["num_rejected"]) == (N, 0)
    assert (again["archived"], again["skipped"]) == (0, N)
    # Exactly once, no partial or temporary object visible: every object is a complete shard or a side file.
    objects = direct.find(f"{bucket}/archive")
    shards = [o for o in objects if o.rsplit("/", 1)[1].startswith("part-")]
    assert sorted(o.split("/archive/", 1)[1] for o in objects if o not in shards) == [
        "_manifest.json", "_rejected/rejected.parquet"]
    ids = []
    for shard in shards:
        with direct.open(shard, "rb") as f:
            ids += pq.read_table(f, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == [f"{i:02d}.png" for i in range(N)]
    assert len(paths) == N
    rows = {r["id"]: r for r in open_archive(archive, storage_options={"client_kwargs": {"endpoint_url": s3_server}})
            .read(columns=["id", "width"]).to_pylist()}
    for i in range(N):
        restored = np.asarray(Image.open(tmp_path / "out" / f"{i:02d}.png"))
        assert restored.shape[:2] == (64, rows[f"{i:02d}.png"]["width"])


def test_fault_kinds_of_the_proxy():
    assert set(FAULTS) == {"503", "500", "reset", "stall", "truncate"}


def test_local_engine_through_5_percent_faults(tmp_path, s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")
    _through_faults("local", tmp_path, s3_server, s3_bucket)


def test_beam_engine_through_5_percent_faults(tmp_path, s3_server, s3_bucket, monkeypatch):
    pytest.importorskip("apache_beam")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")
    _through_faults("beam", tmp_path, s3_server, s3_bucket)


def test_ray_engine_through_5_percent_faults(tmp_path, s3_server, s3_bucket, monkeypatch):
    ray = pytest.importorskip("ray")
    from coldpress.pipelines.ray import connect

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")  # before ray.init: its workers get this environment
    if ray.is_initialized():
        ray.shutdown()
    connect(num_cpus=2, object_store_memory=256 << 20, quiet=True)
    try:
        _through_faults("ray", tmp_path, s3_server, s3_bucket)
    finally:
        ray.shutdown()


def test_truncated_and_stalled_responses_are_retried(tmp_path, s3_server, s3_bucket, monkeypatch):
    """Only the two slow-to-notice faults, often: a GET whose body stops halfway (the announced length
    is not reached) and a request that hangs past the read timeout."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")
    direct = _sources(s3_server, s3_bucket)
    archive = f"s3://{s3_bucket}/archive"
    encode_local(f"s3://{s3_bucket}/src", archive, codec="jpeg", bpp=2.0, rows_per_shard=4,
                 storage_options={"client_kwargs": {"endpoint_url": s3_server}}, progress=False, workers=1)
    with FaultyS3(s3_server, rate=0.15, seed=3, faults=("truncate", "stall")) as proxy:
        options = client_options(proxy.url)
        report = verify_local(archive, storage_options=options, progress=False)
        paths = restore_local(archive, str(tmp_path / "out"), fmt="png", storage_options=options, progress=False)
    print("faults", dict(proxy.counts))
    assert proxy.counts["truncate"] >= 2 and proxy.counts["stall"] >= 1, proxy.counts
    assert (report["ok"], report["failures"]) == (N, [])
    assert len(paths) == N
    for i in range(N):
        with direct.open(f"{s3_bucket}/src/{i:02d}.png", "rb") as f:
            source = np.asarray(Image.open(f))
        assert np.asarray(Image.open(tmp_path / "out" / f"{i:02d}.png")).shape == source.shape


def test_retries_are_counted_in_the_manifest(s3_server, s3_bucket, monkeypatch):
    """botocore's retries, as coldpress saw them (transforms/retries.py), in the manifest of the run:
    every 503/500 the proxy answered during the run's writes is a failed attempt that was retried."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")
    _sources(s3_server, s3_bucket)
    archive = f"s3://{s3_bucket}/archive"
    with FaultyS3(s3_server, rate=0.2, seed=11, faults=("503", "500")) as proxy:
        manifest = encode_local(f"s3://{s3_bucket}/src", archive, codec="jpeg", bpp=2.0, rows_per_shard=4,
                                storage_options=client_options(proxy.url), progress=False, workers=1)
    counts = manifest["storage_retries"]
    print("proxy", dict(proxy.counts), "manifest", counts)
    assert manifest["runs"][-1]["storage_retries"] == counts
    injected = {k: v for k, v in counts["by_error"].items() if k in ("SlowDown", "InternalError", "500", "503")}
    assert counts["requests"] > 10 and 1 <= sum(injected.values()) <= proxy.injected
    assert counts["retried"] == counts["failed_attempts"]  # each one retried, and then it succeeded
    assert sum(counts["by_error"].values()) == counts["failed_attempts"]
    # Anything else is a timeout of this loaded machine (1 s connect and read timeouts), also retried.
    assert all(k.endswith("TimeoutError") for k in set(counts["by_error"]) - set(injected)), counts
    # Without faults: requests counted, nothing retried.
    again = encode_local(f"s3://{s3_bucket}/src", f"s3://{s3_bucket}/archive2", codec="jpeg", bpp=2.0,
                         storage_options={"client_kwargs": {"endpoint_url": s3_server}, "skip_instance_cache": True},
                         progress=False, workers=1)
    quiet = again["storage_retries"]
    assert quiet["requests"] > 10
    # No error answers; at most a timeout of this loaded machine (each retried).
    assert all(k.endswith(("TimeoutError", "ConnectionError")) for k in quiet["by_error"]), quiet
    assert quiet["retried"] == quiet["failed_attempts"] <= 3, quiet


def test_the_plannings_retries_reach_the_manifest(s3_server, s3_bucket, monkeypatch):
    """Listing the sources and reading what is archived happen before the archive's writer exists:
    what storage made them retry goes into the manifest's storage_retries too."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")
    _sources(s3_server, s3_bucket, n=4)
    src, archive = f"s3://{s3_bucket}/src", f"s3://{s3_bucket}/archive"
    with FaultyS3(s3_server, rate=0.5, seed=3, faults=("503", "500")) as proxy:
        plan = plan_encode(src, archive, client_options(proxy.url))
    assert len(plan.todo) == 4 and proxy.injected >= 1
    assert plan.storage_retries["failed_attempts"] == plan.storage_retries["retried"] == proxy.injected
    extra = run_manifest("local", plan, get_codec("jpeg"), 2.0, resume=True, strict=False, elapsed_s=0.0)
    direct = {"client_kwargs": {"endpoint_url": s3_server}, "skip_instance_cache": True}
    manifest = ArchiveWriter(archive, direct).close(extra)
    assert "planning_storage_retries" not in manifest
    assert manifest["storage_retries"]["failed_attempts"] == proxy.injected  # the writer's own calls had no faults


def _assert_the_manifest_counts_the_injected_faults(manifest: dict, proxy: FaultyS3, n: int) -> None:
    """Every input archived, and the manifest's storage_retries count exactly the 503/500 answers the
    proxy injected, each a failed attempt that was retried."""
    counts = manifest["storage_retries"]
    print("proxy", dict(proxy.counts), "manifest", counts)
    assert manifest["archived"] == n and proxy.injected >= 2
    five = sum(v for k, v in counts["by_error"].items() if k in ("SlowDown", "InternalError", "500", "503"))
    assert five == proxy.injected, (counts, proxy.counts)
    assert counts["retried"] == counts["failed_attempts"]


def test_worker_retries_reach_the_manifest(s3_server, s3_bucket, monkeypatch):
    """Faults only on the sources' GETs, which the local engine's worker processes make: the manifest
    counts exactly the faults injected (each a failed attempt, retried), gathered from the workers."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")
    _sources(s3_server, s3_bucket)
    for workers in (2, 1):
        archive = f"s3://{s3_bucket}/archive-{workers}"
        with FaultyS3(s3_server, rate=0.3, seed=5, faults=("503", "500"), only=f"/{s3_bucket}/src/") as proxy:
            manifest = encode_local(f"s3://{s3_bucket}/src", archive, codec="jpeg", bpp=2.0,
                                    storage_options=client_options(proxy.url), progress=False, workers=workers)
        counts = manifest["storage_retries"]
        print(workers, "proxy", dict(proxy.counts), "manifest", counts)
        assert manifest["archived"] == N and proxy.injected >= 2
        five = sum(v for k, v in counts["by_error"].items() if k in ("SlowDown", "InternalError", "500", "503"))
        assert five == proxy.injected, (workers, counts, proxy.counts)
        assert counts["retried"] == counts["failed_attempts"]


def test_ray_worker_retries_reach_the_manifest(s3_server, s3_bucket, monkeypatch):
    """The same on Ray: the encode actors' reads report their retries with their rows (the first row
    of each batch), the write tasks add theirs, the driver sums them into the manifest."""
    ray = pytest.importorskip("ray")
    from coldpress.pipelines.ray import connect, encode_ray

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")  # before ray.init: its workers get this environment
    _sources(s3_server, s3_bucket)
    if ray.is_initialized():
        ray.shutdown()
    connect(num_cpus=2, object_store_memory=256 << 20, quiet=True)
    try:
        with FaultyS3(s3_server, rate=0.3, seed=5, faults=("503", "500"), only=f"/{s3_bucket}/src/") as proxy:
            manifest = encode_ray(f"s3://{s3_bucket}/src", f"s3://{s3_bucket}/archive", codec="jpeg", bpp=2.0,
                                  storage_options=client_options(proxy.url), progress=False)
    finally:
        ray.shutdown()
    _assert_the_manifest_counts_the_injected_faults(manifest, proxy, N)


def test_beam_worker_retries_reach_the_manifest(s3_server, s3_bucket, monkeypatch):
    """The same on Beam (FnApiRunner): the reads' retries are taken when each bundle of the encode
    stage ends (``TakeRetries``), the shard writes' with their shards, and the step writing the
    manifest sums them. Few inputs: the Beam flaky-storage test above covers the rest."""
    pytest.importorskip("apache_beam")
    from coldpress.pipelines.beam import encode_beam

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")
    n = 4
    _sources(s3_server, s3_bucket, n)
    with FaultyS3(s3_server, rate=0.3, seed=5, faults=("503", "500"), only=f"/{s3_bucket}/src/") as proxy:
        manifest = encode_beam(f"s3://{s3_bucket}/src", f"s3://{s3_bucket}/archive", codec="jpeg", bpp=2.0,
                               storage_options=client_options(proxy.url), progress=False,
                               pipeline_args=["--direct_num_workers=1"])
    _assert_the_manifest_counts_the_injected_faults(manifest, proxy, n)


def test_bench_scale_faults_runs_an_engine_through_the_injector_and_counts_what_it_saw(tmp_path):
    """``coldpress bench scale --faults``: its own S3 server and injector; one row per engine."""
    pytest.importorskip("moto.server")
    import csv
    import json

    from coldpress.jobs import cli

    assert cli.main(["bench", "scale", "--sizes", "", "--engines", "local", "--faults", "0.3", "--fault-size", "6",
                     "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert not (tmp_path / "out" / "scale.json").exists()  # no --sizes: the scale figures are not rewritten
    [row] = list(csv.DictReader(open(tmp_path / "out" / "faults.csv")))
    assert row["engine"] == "local" and "error" not in row, row
    figures = {k: int(row[k]) for k in ("archived", "verified_ok", "inspected_rows", "restored", "lost", "duplicated",
                                        "other_objects_visible", "leaked_uploads")}
    assert figures == {"archived": 6, "verified_ok": 6, "inspected_rows": 6, "restored": 6, "lost": 0, "duplicated": 0,
                       "other_objects_visible": 0, "leaked_uploads": 0}
    injected, during_encode = int(row["faults_injected"]), int(row["encode_faults"])
    assert injected == sum(int(row[f"faults_{k}"]) for k in FAULTS) and 1 <= during_encode <= injected
    assert int(row["manifest_failed_attempts"]) <= during_encode + 3  # botocore's view (+ timeouts of a busy machine)
    assert json.loads((tmp_path / "out" / "faults.json").read_text())["faults"][0]["engine"] == "local"
