"""A writer killed in the middle of an upload (SIGKILL, on the S3 test server): no partial shard is
ever visible, and what it leaves (an incomplete multipart upload of its temporary file, a finished
temporary file it did not get to move, a Beam input listing) is removed by the next encode, which
takes the write lease and then archives every input exactly once."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import s3fs
from PIL import Image

from coldpress.pipelines.local import encode_local, verify_local
from synthetic_images import natural_image

ROOT = Path(__file__).resolve().parents[1]


def _uploads(fs: s3fs.S3FileSystem, bucket: str) -> list[str]:
    return [u["Key"] for u in fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", []) or []]


def test_killed_upload_leaves_nothing_visible_and_the_next_run_cleans_it(s3_server, s3_bucket):
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    for i in range(6):
        out = io.BytesIO()
        Image.fromarray(natural_image(64, 64, seed=900 + i)).save(out, format="PNG")
        fs.pipe_file(f"{s3_bucket}/src/{i}.png", out.getvalue())
    root = f"{s3_bucket}/archive"

    # A writer, in its own process, uploading a 12 MB shard in 5 MB parts through coldpress's atomic
    # write; killed once its first part is stored.
    script = textwrap.dedent(f"""
        import sys, time, s3fs
        from coldpress.transforms.archive.layout import _atomic_write
        fs = s3fs.S3FileSystem(client_kwargs={{"endpoint_url": {s3_server!r}}}, default_block_size=5 << 20,
                               skip_instance_cache=True)
        def write(f):
            f.write(b"\\0" * (6 << 20))  # past one block: the multipart upload starts, part 1 goes up
            f.flush()
            print("PART", flush=True)
            time.sleep(600)
        _atomic_write(fs, {root!r}, "part-00000.parquet", write)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline and "PART" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert "PART" in line, "the writer did not start its upload"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # What the kill left: a multipart upload of the temporary name, and no object at all.
    leaked = _uploads(fs, s3_bucket)
    assert len(leaked) == 1 and "/.part-00000.parquet.tmp-" in leaked[0], leaked
    fs.invalidate_cache()
    assert not fs.exists(f"{root}/part-00000.parquet")
    # And what a writer killed between its upload and its rename leaves: a complete temporary file,
    # plus a Beam launcher's input listing and the rows its workers staged.
    fs.pipe_file(f"{root}/.part-00001.parquet.tmp-{'a' * 32}", b"PAR1 half a shard")
    fs.pipe_file(f"{root}/_rejected/.rejected.parquet.tmp-{'b' * 32}", b"PAR1 half a table")
    fs.pipe_file(f"{root}/_inputs/{'c' * 32}/part-00000.jsonl", b'["s3://x/y.png", "y.png"]\n')
    fs.pipe_file(f"{root}/_staging/{'d' * 32}/{'e' * 32}.parquet", b"PAR1 rows a killed Beam worker staged")

    options = {"client_kwargs": {"endpoint_url": s3_server}, "skip_instance_cache": True}
    manifest = encode_local(f"s3://{s3_bucket}/src", f"s3://{root}", codec="jpeg", bpp=2.0, rows_per_shard=4,
                            storage_options=options, progress=False, workers=1)
    assert manifest["archived"] == 6
    assert _uploads(fs, s3_bucket) == []  # aborted
    fs.invalidate_cache()
    names = sorted(p.split("/archive/", 1)[1] for p in fs.find(root))
    assert names == ["_manifest.json", "_rejected/rejected.parquet", "part-00000.parquet", "part-00001.parquet"], names
    ids = []
    for name in ("part-00000.parquet", "part-00001.parquet"):
        with fs.open(f"{root}/{name}", "rb") as f:
            ids += pq.read_table(f, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == [f"{i}.png" for i in range(6)]  # exactly once
    assert verify_local(f"s3://{root}", storage_options=options, progress=False)["failures"] == []


def test_a_killed_local_writer_leaves_no_partial_shard_and_its_temp_file_is_removed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(natural_image(64, 64, seed=950 + i)).save(src / f"{i}.png")
    dst = tmp_path / "archive"
    dst.mkdir()
    (dst / f".part-00000.parquet.tmp-{'d' * 32}").write_bytes(b"PAR1 cut short by a kill")
    encode_local(src, dst, codec="jpeg", bpp=2.0, progress=False, workers=1)
    assert sorted(p.name for p in dst.iterdir()) == ["_manifest.json", "_rejected", "part-00000.parquet"]
