"""Concurrent writers: an encode holds the archive's write lease (exclusive create locally,
If-None-Match on S3); a second encode into the same archive stops with a clear error and writes
nothing; an expired lease, or one whose process died on this host, is taken over."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import s3fs
from PIL import Image

from coldpress.errors import ArchiveError
from coldpress.pipelines.local import encode_local, verify_local
from coldpress.transforms.archive.lease import LEASE_NAME, archive_lease
from synthetic_images import natural_image


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lease-src")
    for i in range(6):
        Image.fromarray(natural_image(64, 64, seed=400 + i)).save(root / f"{i}.png")
    return root


def _ids(archive: Path) -> list[str]:
    return sorted(i for p in archive.glob("part-*.parquet") for i in pq.read_table(p, columns=["id"]).column("id").to_pylist())


def test_a_second_writer_is_refused_while_the_first_holds_the_lease(src, tmp_path):
    dst = tmp_path / "archive"
    with archive_lease(str(dst)):  # a live writer (this process) holds it
        assert (dst / LEASE_NAME).exists()
        with pytest.raises(ArchiveError, match="another encode is writing into .* two writers would corrupt it"):
            encode_local(src, dst, codec="jpeg", bpp=2.0, progress=False, workers=1)
        assert not list(dst.glob("part-*"))
    manifest = encode_local(src, dst, codec="jpeg", bpp=2.0, progress=False, workers=1)
    assert manifest["archived"] == 6 and not (dst / LEASE_NAME).exists()


def test_expired_and_dead_leases_are_taken_over(src, tmp_path):
    dst = tmp_path / "archive"
    dst.mkdir()
    (dst / LEASE_NAME).write_text(json.dumps({"owner": "x", "host": "elsewhere", "pid": 1, "expires_at": time.time() - 1}))
    assert encode_local(src, dst, codec="jpeg", bpp=2.0, progress=False, workers=1)["archived"] == 6
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (dst / LEASE_NAME).write_text(json.dumps({"owner": "y", "host": socket.gethostname(), "pid": dead.pid,
                                              "expires_at": time.time() + 3600}))
    assert encode_local(src, dst, codec="jpeg", bpp=2.0, progress=False, workers=1)["skipped"] == 6
    assert not (dst / LEASE_NAME).exists()


def test_two_encodes_at_once_never_duplicate_an_id(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        Image.fromarray(natural_image(64, 96, seed=500 + i)).save(src / f"{i:02d}.png")
    dst = tmp_path / "archive"
    code = (f"from coldpress.pipelines.local import encode_local\n"
            f"encode_local({str(src)!r}, {str(dst)!r}, codec='avif', bpp=1.0, progress=False, workers=1)\n")
    first = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (dst / LEASE_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(ArchiveError, match="another encode is writing"):
        encode_local(src, dst, codec="avif", bpp=1.0, progress=False, workers=1)
    assert first.wait(timeout=300) == 0, first.stderr.read().decode()[-2000:]
    assert _ids(dst) == [f"{i:02d}.png" for i in range(20)]
    assert verify_local(dst, progress=False)["ok"] == 20


def test_s3_lease_is_a_conditional_put_only_one_writer_wins(src, s3_bucket, s3_options):
    dst = f"s3://{s3_bucket}/archive"
    results = []

    def take() -> None:
        try:
            results.append(archive_lease(dst, s3_options).acquire())
        except ArchiveError as exc:
            results.append(exc)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if not isinstance(r, ArchiveError)]
    assert len(winners) == 1 and len(results) == 4
    with pytest.raises(ArchiveError, match="another encode is writing"):
        encode_local(src, dst, codec="jpeg", bpp=2.0, progress=False, storage_options=s3_options, workers=1)
    winners[0].release()
    fs = s3fs.S3FileSystem(**s3_options)
    assert not fs.exists(f"{s3_bucket}/archive/{LEASE_NAME}")
    fs.pipe_file(f"{s3_bucket}/archive/{LEASE_NAME}",
                 json.dumps({"owner": "z", "host": "elsewhere", "pid": 1, "expires_at": time.time() - 5}).encode())
    manifest = encode_local(src, dst, codec="jpeg", bpp=2.0, progress=False, storage_options=s3_options, workers=1)
    assert manifest["archived"] == 6 and not fs.exists(f"{s3_bucket}/archive/{LEASE_NAME}")


def test_a_holder_in_another_pid_namespace_of_this_host_is_not_taken_for_dead(tmp_path):
    """Containers sharing the host name (host networking) do not see each other's pids: such a holder
    waits for its lease to expire instead of being taken over at once."""
    import socket

    from coldpress.transforms.archive.lease import _dead_here, _pid_namespace

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    here = {"host": socket.gethostname(), "pid": gone.pid}
    assert _dead_here(here)  # a lease written before boot_id/pid_ns: the host decides, as before
    lease = archive_lease(str(tmp_path / "a"))
    mine = json.loads(lease._body())
    assert _dead_here({**mine, "pid": gone.pid}) and mine["pid_ns"] == _pid_namespace()
    assert not _dead_here({**mine, "pid": gone.pid, "pid_ns": "pid:[1]"})
    assert not _dead_here({**mine, "pid": gone.pid, "boot_id": "another boot"})


def test_an_encode_whose_lease_was_taken_over_says_so(tmp_path, monkeypatch):
    from coldpress.transforms.archive.lease import leased

    monkeypatch.setenv("COLDPRESS_LEASE_TTL_S", "0.3")
    dst = tmp_path / "archive"

    @leased
    def encode(src, dst, *, storage_options=None):
        lease = Path(dst) / LEASE_NAME
        lease.write_text(json.dumps({**json.loads(lease.read_text()), "owner": "another writer"}))
        time.sleep(0.5)  # the renewal (every ttl / 3) finds the other owner
        return {"archived": 1}

    with pytest.raises(ArchiveError, match=r"lost the write lease of .*taken over by another writer.*coldpress verify"):
        encode("src", dst)
    assert (dst / LEASE_NAME).exists()  # the other writer's lease is left alone
