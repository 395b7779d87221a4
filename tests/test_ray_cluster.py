"""Faults on a real 2-node Ray cluster on this machine (ray.cluster_utils.Cluster): a worker node or an
encode actor killed in the middle of an encode still leaves every input archived exactly once."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from ray.cluster_utils import Cluster  # noqa: E402

from coldpress.pipelines.local import verify_local  # noqa: E402
from coldpress.pipelines.ray import encode_ray  # noqa: E402
from synthetic_images import natural_image  # noqa: E402

N = 12


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 128 << 20,
                                                      "include_dashboard": False})
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src")
    for i in range(N):
        Image.fromarray(natural_image(256, 384, seed=200 + i)).save(root / f"im_{i:02d}.png")
    return root


def _ids(archive: Path) -> list[str]:
    ids = []
    for path in archive.glob("part-*.parquet"):
        ids += pq.read_table(path, columns=["id"]).column("id").to_pylist()
    return ids


def _encode_in_background(src: Path, dst: Path) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run():
        try:
            result["manifest"] = encode_ray(src, dst, codec="avif", bpp=1.0, progress=False, rows_per_shard=1,
                                            batch_size=1, num_actors=2)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _check_exactly_once(dst: Path, result: dict) -> None:
    assert "error" not in result, result.get("error")
    manifest = result["manifest"]
    assert sorted(_ids(dst)) == [f"im_{i:02d}.png" for i in range(N)]  # each input once, none missing
    assert (manifest["archived"], manifest["rejected"], manifest["num_rows"]) == (N, 0, N)
    assert verify_local(dst, progress=False)["ok"] == N


def test_worker_node_killed_mid_encode(cluster, src, tmp_path):
    # The driver joins before the worker node exists, so that it attaches to the head node's raylet: a
    # driver attached to the worker's raylet (both run on this machine's address) dies with that node.
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    worker = cluster.add_node(num_cpus=2, object_store_memory=128 << 20)
    cluster.wait_for_nodes()
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    dst = tmp_path / "archive"
    thread, result = _encode_in_background(src, dst)
    _busy_encoder_pid(thread, worker)  # the worker node is encoding: lose it now
    cluster.remove_node(worker, allow_graceful=False)
    thread.join(timeout=240)
    assert not thread.is_alive(), "the encode did not finish after the node was lost"
    _check_exactly_once(dst, result)


def _ray_process_titles() -> dict[int, str]:
    titles = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("ray::"):
            titles[proc.info["pid"]] = cmdline
    return titles


def _busy_encoder_pid(thread: threading.Thread, node=None, timeout: float = 120) -> int:
    """The process of an encode actor (Ray Data's map worker of ``_Encoder``) while it encodes a batch
    (its title ends in ``.submit``), on ``node`` (a cluster node) when given and one is seen there
    within 0.2 s, found while the encode runs. Shards are written after the encode stage, so
    waiting for a shard could find the actors gone."""
    raylets = {p.process.pid for p in node.all_processes["raylet"]} if node is not None else None
    start = time.monotonic()
    while thread.is_alive() and time.monotonic() < start + timeout:
        elsewhere = None
        for pid, title in _ray_process_titles().items():
            if "_Encoder" in title and ".submit" in title:
                try:
                    ancestors = {p.pid for p in psutil.Process(pid).parents()}
                except psutil.NoSuchProcess:
                    continue
                if raylets is None or ancestors & raylets:
                    return pid
                elsewhere = pid
        # Ray may place every encode actor on the head node: then lose the node while they encode.
        if elsewhere is not None and time.monotonic() > start + 0.2:
            return elsewhere
        time.sleep(0.02)
    raise AssertionError("no encode actor was seen encoding" + (" on the worker node" if node else "")
                         + " before the encode ended; Ray processes: "
                         f"{sorted({t.strip() for t in _ray_process_titles().values()})}")


def test_encode_actor_killed_mid_encode(cluster, src, tmp_path):
    if not ray.is_initialized():
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    dst = tmp_path / "archive"
    thread, result = _encode_in_background(src, dst)
    os.kill(_busy_encoder_pid(thread), signal.SIGKILL)
    thread.join(timeout=240)
    assert not thread.is_alive(), "the encode did not finish after the actor was killed"
    _check_exactly_once(dst, result)
