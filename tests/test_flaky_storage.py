"""Flaky object storage: encode, verify, inspect and restore through a proxy that fails 5 % of the
S3 requests (503 SlowDown, 500 InternalError, reset connections) complete with every input
archived exactly once, no partial shard visible, and every image restored."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import s3fs
from PIL import Image

from coldpress.pipelines.local import encode_local, restore_local, verify_local
from coldpress.transforms.archive import open_archive
from faulty_s3 import FaultyS3
from synthetic_images import natural_image

RATE = float(__import__("os").environ.get("FLAKY_RATE", "0.05"))


def test_local_engine_through_5_percent_faults(tmp_path, s3_server, s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "10")
    s3fs.S3FileSystem.clear_instance_cache()
    direct = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, skip_instance_cache=True)
    n = 16
    for i in range(n):
        out = io.BytesIO()
        Image.fromarray(natural_image(64, 64, seed=300 + i)).save(out, format="PNG")
        direct.pipe_file(f"{s3_bucket}/src/{i:02d}.png", out.getvalue())
    with FaultyS3(s3_server, rate=RATE, seed=7) as proxy:
        options = {"client_kwargs": {"endpoint_url": proxy.url}, "skip_instance_cache": True}
        archive = f"s3://{s3_bucket}/archive"
        manifest = encode_local(f"s3://{s3_bucket}/src", archive, codec="jpeg", bpp=2.0, rows_per_shard=4,
                                storage_options=options, progress=False, workers=2)
        report = verify_local(archive, storage_options=options, progress=False)
        paths = restore_local(archive, str(tmp_path / "out"), fmt="png", storage_options=options, progress=False)
        again = encode_local(f"s3://{s3_bucket}/src", archive, codec="jpeg", bpp=2.0, storage_options=options,
                             progress=False, workers=1)
    assert proxy.injected >= 3, proxy.counts  # the faults really happened
    print("faults", dict(proxy.counts))
    assert (manifest["archived"], manifest["rejected"]) == (n, 0)
    assert (report["ok"], report["failures"]) == (n, [])
    assert (again["archived"], again["skipped"]) == (0, n)
    # Exactly once, no partial or temporary object visible: every object is a complete shard or a side file.
    objects = direct.find(f"{s3_bucket}/archive")
    shards = [o for o in objects if o.rsplit("/", 1)[1].startswith("part-")]
    assert sorted(o.rsplit("/", 1)[1] for o in objects if o not in shards) == ["_manifest.json", "rejected.parquet"]
    ids = []
    for shard in shards:
        with direct.open(shard, "rb") as f:
            ids += pq.read_table(f, columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == [f"{i:02d}.png" for i in range(n)]
    assert len(paths) == n
    rows = {r["id"]: r for r in open_archive(archive, storage_options={"client_kwargs": {"endpoint_url": s3_server}})
            .read(columns=["id", "width"]).to_pylist()}
    for i in range(n):
        restored = np.asarray(Image.open(tmp_path / "out" / f"{i:02d}.png"))
        assert restored.shape[:2] == (64, rows[f"{i:02d}.png"]["width"])
