"""The three engines (local, Ray, Beam) write the same archive for the same inputs: the same ids, the
same bitstreams byte for byte, the same rejections, all with the default (learned) codec."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from coldpress.pipelines.local import encode_local, verify_local
from coldpress.transforms.archive import open_archive
from synthetic_images import natural_image

ray = pytest.importorskip("ray")
pytest.importorskip("apache_beam")

BPP = 0.5  # tiny images: room for the container header


def _contents(archive: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    arch = open_archive(str(archive))
    rows = {r["id"]: r["bitstream"] for r in arch.read(columns=["id", "bitstream"]).to_pylist()}
    rejected = {r["id"]: r["reason"] for r in arch.rejected().to_pylist()}
    return rows, rejected


def test_local_ray_and_beam_archives_are_identical(tmp_path):
    from coldpress.pipelines.beam import encode_beam
    from coldpress.pipelines.ray import connect, encode_ray

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(natural_image(64, 96, "RGB", seed=21)).save(src / "a.png")
    Image.fromarray(natural_image(48, 80, "L", seed=22)).save(src / "sub" / "b.jpg", quality=90)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    encode_local(str(src), str(tmp_path / "local"), bpp=BPP, progress=False)
    started_here = not ray.is_initialized()
    connect(num_cpus=2, object_store_memory=256 << 20, quiet=True)  # no-op when a test module started Ray
    try:
        encode_ray(str(src), str(tmp_path / "ray"), bpp=BPP, progress=False)
    finally:
        if started_here:
            ray.shutdown()
    encode_beam(str(src), str(tmp_path / "beam"), bpp=BPP, progress=False, pipeline_args=["--direct_num_workers=1"])

    local_rows, local_rejected = _contents(tmp_path / "local")
    assert sorted(local_rows) == ["a.png", "sub/b.jpg"] and list(local_rejected) == ["broken.png"]
    for engine in ("ray", "beam"):
        rows, rejected = _contents(tmp_path / engine)
        assert rows == local_rows, f"{engine} bitstreams differ from the local engine's"
        assert rejected == local_rejected, f"{engine} rejections differ from the local engine's"
        report = verify_local(str(tmp_path / engine))
        assert report["ok"] == 2 and not report["failures"]
    assert open_archive(str(tmp_path / "ray")).manifest["codec"] == "learned"
