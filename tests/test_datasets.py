"""Datasets as sources: Parquet tables with an image column (Hugging Face / img2dataset layout),
webdataset tar shards, listing files; stable unique ids, broken samples rejected with the rest kept."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from coldpress.jobs import cli
from coldpress.pipelines.local import encode_local, verify_local
from coldpress.transforms.archive import open_archive
from coldpress.transforms.records import decode_record
from coldpress.transforms.sources import list_sources
from synthetic_images import natural_image

BPP = 2.0


def _jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(natural_image(64, 64, seed=seed)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _ids(archive: Path) -> list[str]:
    return sorted(open_archive(archive).read(columns=["id"]).column("id").to_pylist())


def _rejected(archive: Path) -> dict[str, str]:
    return {r["id"]: r["reason"] for r in open_archive(archive).rejected().to_pylist()}


@pytest.fixture(scope="module")
def wds(tmp_path_factory) -> Path:
    """Two webdataset shards (img2dataset's layout: NNNNN.jpg + NNNNN.json + NNNNN.txt per sample);
    sample 00003 is a truncated JPEG."""
    root = tmp_path_factory.mktemp("wds")
    for shard in range(2):
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for i in range(shard * 5, shard * 5 + 5):
                key = f"{i:05d}"
                data = _jpeg(i)[:200] if i == 3 else _jpeg(i)
                for name, payload in ((f"{key}.jpg", data), (f"{key}.json", json.dumps({"key": key}).encode()),
                                      (f"{key}.txt", b"a caption")):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return root


def test_webdataset_shards_archive_every_sample_by_key(wds, tmp_path):
    pairs = list_sources(f"webdataset:{wds}")
    assert [k for _, k in pairs] == [f"{i:05d}" for i in range(10)]
    manifest = encode_local(f"webdataset:{wds}", tmp_path / "a", codec="jpeg", bpp=BPP, progress=False)
    assert (manifest["archived"], manifest["rejected"]) == (9, 1)
    assert _ids(tmp_path / "a") == [f"{i:05d}" for i in range(10) if i != 3]
    assert "00003" in _rejected(tmp_path / "a")
    rows = {r["id"]: r for r in open_archive(tmp_path / "a").read().to_pylist()}
    assert rows["00007"]["source_uri"].endswith("00001.tar::00007.jpg")
    original = np.asarray(Image.open(io.BytesIO(_jpeg(7))).convert("RGB")).astype(int)
    assert np.abs(decode_record(rows["00007"]).astype(int) - original).mean() < 12
    assert verify_local(tmp_path / "a", progress=False)["ok"] == 9
    # Resume: the same ids, nothing twice; with worker processes too.
    again = encode_local(f"webdataset:{wds}", tmp_path / "a", codec="jpeg", bpp=BPP, progress=False, workers=2)
    assert (again["archived"], again["skipped"], again["num_rows"]) == (0, 9, 9)


def test_parquet_image_column_with_ids_and_hugging_face_structs(tmp_path):
    src = tmp_path / "hf" / "data"
    src.mkdir(parents=True)
    for part in range(2):
        images = [{"bytes": _jpeg(10 + part * 3 + i), "path": None} for i in range(3)]
        if part == 1:
            images[1] = {"bytes": b"not an image", "path": None}
        table = pa.table({"image": images, "uid": [f"u{part}{i}" for i in range(3)], "caption": ["c"] * 3})
        pq.write_table(table, src / f"train-{part:05d}-of-00002.parquet", row_group_size=2)
    # Positional ids by default; the id column with --id-column.
    assert [k for _, k in list_sources(f"parquet:{src}")][:2] == ["train-00000-of-00002/00000000",
                                                                   "train-00000-of-00002/00000001"]
    dst = tmp_path / "archive"
    code = cli.main(["encode", f"parquet:{src}", str(dst), "--bpp", "2", "--codec", "jpeg", "--id-column", "uid",
                     "--quiet"])
    assert code == 0
    assert _ids(dst) == ["u00", "u01", "u02", "u10", "u12"]
    assert set(_rejected(dst)) == {"u11"}
    assert verify_local(dst, progress=False)["ok"] == 5
    assert cli.main(["encode", str(src), str(tmp_path / "x"), "--bpp", "2", "--id-column", "uid"]) == 1


def test_listing_files_text_csv_and_parquet(wds, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    for i in range(4):
        (files / f"{i}.jpg").write_bytes(_jpeg(30 + i))
    (tmp_path / "list.txt").write_text("".join(f"{files / f'{i}.jpg'}\n" for i in range(4)) + f"{files}/gone.jpg\n")
    manifest = encode_local(f"listing:{tmp_path / 'list.txt'}", tmp_path / "a", codec="jpeg", bpp=BPP,
                            progress=False)
    assert (manifest["archived"], manifest["rejected"]) == (4, 1)
    assert _ids(tmp_path / "a") == [f"{str(files).lstrip('/')}/{i}.jpg" for i in range(4)]
    (tmp_path / "list.csv").write_text("uri,id\n" + "".join(f"{files / f'{i}.jpg'},img-{i}\n" for i in range(4))
                                       + f"{files / '0.jpg'},img-0\n")  # a repeated id: rejected, said why
    encode_local(f"listing:{tmp_path / 'list.csv'}", tmp_path / "b", codec="jpeg", bpp=BPP, progress=False)
    assert _ids(tmp_path / "b") == [f"img-{i}" for i in range(4)]
    assert any("is also the id of another input" in r for r in _rejected(tmp_path / "b").values())
    pq.write_table(pa.table({"uri": [str(files / "1.jpg")], "id": ["one"]}), tmp_path / "list.parquet")
    encode_local(f"listing:{tmp_path / 'list.parquet'}", tmp_path / "c", codec="jpeg", bpp=BPP, progress=False)
    assert _ids(tmp_path / "c") == ["one"]
