"""A Parquet dataset's other columns (captions, labels, scores, tags, URLs) are carried into each
archive row's metadata under ``dataset``, bounded (binary values as their length, long values cut),
on the local engine and on Beam (whose workers pass the image bytes between stages)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from coldpress.pipelines.local import encode_local
from coldpress.transforms.archive import open_archive
from coldpress.transforms.datasets import MAX_VALUE_CHARS
from synthetic_images import natural_image


def _jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(natural_image(64, 64, seed=seed)).save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture
def dataset(tmp_path) -> Path:
    src = tmp_path / "data"
    src.mkdir()
    table = pa.table({
        "image": [{"bytes": _jpeg(i), "path": f"{i}.jpg"} for i in range(4)],
        "uid": [f"u{i}" for i in range(4)],
        "caption": [f"a photo number {i}" for i in range(4)],
        "label": [i % 2 for i in range(4)],
        "score": [0.5 + i for i in range(4)],
        "tags": [["a", "b"], [], None, ["c"]],
        "thumbnail": [b"\x00" * (100 + i) for i in range(4)],
        "long_text": ["x" * 3000] * 4,
    })
    pq.write_table(table, src / "train-00000.parquet", row_group_size=3)  # rows 3.. in a second row group
    return src


def _columns(archive: Path) -> dict[str, dict]:
    rows = open_archive(archive).read(columns=["id", "metadata"]).to_pylist()
    return {r["id"]: json.loads(r["metadata"])["dataset"] for r in rows}


def _check(columns: dict[str, dict]) -> None:
    assert sorted(columns) == ["u0", "u1", "u2", "u3"]
    for i in range(4):
        c = columns[f"u{i}"]
        assert (c["uid"], c["caption"], c["label"], c["score"]) == (f"u{i}", f"a photo number {i}", i % 2, 0.5 + i)
        assert c["tags"] == [["a", "b"], [], None, ["c"]][i]
        assert c["thumbnail"] == f"<{100 + i} bytes>"  # binary: its length, not its bytes
        assert len(c["long_text"]) == MAX_VALUE_CHARS and c["long_text"].endswith("\u2026")
        assert "image" not in c  # the coded column itself is not repeated


def test_parquet_columns_reach_the_row_metadata_on_the_local_engine(dataset, tmp_path):
    dst = tmp_path / "archive"
    manifest = encode_local(f"parquet:{dataset}?id=uid", dst, codec="jpeg", bpp=2.0, progress=False, workers=2)
    assert manifest["archived"] == 4
    _check(_columns(dst))


def test_parquet_columns_reach_the_row_metadata_on_beam(dataset, tmp_path):
    pytest.importorskip("apache_beam")
    from coldpress.pipelines.beam import encode_beam

    dst = tmp_path / "archive"
    manifest = encode_beam(f"parquet:{dataset}?id=uid", dst, codec="jpeg", bpp=2.0,
                           pipeline_args=["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert manifest["archived"] == 4
    _check(_columns(dst))


def test_folder_sources_get_no_dataset_key(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(_jpeg(1))
    encode_local(src, tmp_path / "archive", codec="jpeg", bpp=2.0, progress=False, workers=1)
    row = open_archive(tmp_path / "archive").read(columns=["metadata"]).to_pylist()[0]
    assert "dataset" not in json.loads(row["metadata"])
