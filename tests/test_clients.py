"""Standard Parquet clients on a coldpress archive: DuckDB, pandas, Polars, pyarrow (read_table and
dataset) and Hugging Face datasets read exactly the archived rows with the archive's schema, given
the directory or the archive/*.parquet glob, locally and on the S3 test server; the README's
"Query an archive" code runs as written; layout-1 archives keep working and `upgrade` fixes them
for these clients. (Ray Data's read_parquet is tested in test_ray.py, on its shared Ray instance.)"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from coldpress.jobs.inspect import inspect_archive
from coldpress.pipelines.local import encode_local, restore_local, verify_local
from coldpress.transforms.archive import open_archive, upgrade_archive
from coldpress.transforms.schema import ARCHIVE_SCHEMA
from layout_helpers import make_layout_1
from synthetic_images import natural_image

duckdb = pytest.importorskip("duckdb")
pd = pytest.importorskip("pandas")
pl = pytest.importorskip("polars")

README = Path(__file__).resolve().parent.parent / "README.md"


def make_src(root: Path) -> Path:
    """Six images (two in a subfolder) and two inputs that are rejected."""
    for i in range(4):
        Image.fromarray(natural_image(48, 64, seed=i)).save(root / f"img_{i}.png")
    (root / "sub").mkdir()
    Image.fromarray(natural_image(40, 56, mode="L", seed=5)).save(root / "sub" / "gray.png")
    buf = io.BytesIO()
    Image.fromarray(natural_image(40, 56, seed=6)).save(buf, "JPEG", quality=90)
    (root / "sub" / "photo.jpg").write_bytes(buf.getvalue())
    (root / "notes.txt").write_text("not an image")
    (root / "truncated.png").write_bytes((root / "img_0.png").read_bytes()[:100])
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    src = make_src(tmp_path_factory.mktemp("src"))
    dst = tmp_path_factory.mktemp("archives") / "archive"
    manifest = encode_local(str(src), str(dst), codec="jpeg", bpp=2.0, progress=False, rows_per_shard=4)
    assert (manifest["archived"], manifest["rejected"]) == (6, 2)
    assert len(list(dst.glob("part-*.parquet"))) == 2  # two shards: readers must union them
    return dst


@pytest.fixture(scope="module")
def expected(archive) -> dict:
    stats = inspect_archive(str(archive), ids=True)
    assert stats["num_rows"] == 6 and stats["num_rejected"] == 2
    return stats


def check_table(table: pa.Table, expected: dict) -> None:
    """The archived rows, all of them, nothing else, with the archive's columns and types."""
    assert table.num_rows == expected["num_rows"]
    assert sorted(table.column("id").to_pylist()) == expected["ids"]
    assert table.schema.names == ARCHIVE_SCHEMA.names
    for field in ARCHIVE_SCHEMA:
        found = table.schema.field(field.name).type
        if pa.types.is_timestamp(field.type):  # DuckDB names the zone Etc/UTC
            assert found.unit == field.type.unit and found.tz in ("UTC", "Etc/UTC"), field.name
        else:
            assert found == field.type, field.name


# -- local ----------------------------------------------------------------------------------------
def test_pyarrow_read_table_and_dataset_take_the_directory(archive, expected):
    check_table(pq.read_table(archive), expected)
    dataset = ds.dataset(archive, format="parquet")
    assert dataset.count_rows() == expected["num_rows"]
    check_table(dataset.to_table(), expected)
    assert sorted(Path(f).name for f in dataset.files) == sorted(p.name for p in archive.glob("part-*.parquet"))


def test_pandas_reads_the_directory(archive, expected):
    df = pd.read_parquet(archive)
    assert len(df) == expected["num_rows"] and sorted(df["id"]) == expected["ids"]
    assert list(df.columns) == ARCHIVE_SCHEMA.names
    assert df.groupby("codec").size().to_dict() == expected["codecs"]
    assert df["psnr"].min() == pytest.approx(expected["psnr"]["min"])


def test_duckdb_counts_only_archived_images(archive, expected):
    glob = f"{archive}/*.parquet"
    assert duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall() == [(expected["num_rows"],)]
    ids = [r[0] for r in duckdb.sql(f"select id from read_parquet('{glob}') order by id").fetchall()]
    assert ids == expected["ids"]
    columns = [r[0] for r in duckdb.sql(f"describe select * from read_parquet('{glob}')").fetchall()]
    assert columns == ARCHIVE_SCHEMA.names
    check_table(duckdb.sql(f"select * from read_parquet('{glob}')").to_arrow_table(), expected)
    rejected = duckdb.sql(f"select id from read_parquet('{archive}/_rejected/rejected.parquet') order by id").fetchall()
    assert [r[0] for r in rejected] == [r["id"] for r in expected["rejected"]]


def test_polars_reads_the_glob(archive, expected):
    df = pl.read_parquet(f"{archive}/*.parquet")
    assert df.height == expected["num_rows"] and sorted(df["id"].to_list()) == expected["ids"]
    assert df.columns == ARCHIVE_SCHEMA.names
    lazy = pl.scan_parquet(f"{archive}/*.parquet").select(pl.len()).collect()
    assert lazy.item() == expected["num_rows"]


def test_hugging_face_datasets_reads_the_glob(archive, expected, tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    data = datasets.load_dataset("parquet", data_files=f"{archive}/*.parquet", split="train",
                                 cache_dir=str(tmp_path / "hf-cache"))
    assert data.num_rows == expected["num_rows"] and sorted(data["id"]) == expected["ids"]
    assert data.column_names == ARCHIVE_SCHEMA.names


def test_the_readme_query_section_runs_as_written(tmp_path, monkeypatch):
    """Every code block of README.md's "Query an archive" section, in order, on the archive of the
    sample photos that the section's own command makes (with avif-half: quicker than learned)."""
    import coldpress
    from coldpress.codec import decode_bitstream

    text = README.read_text()
    section = text.split("## Query an archive", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    assert "--bpp 0.05" in section and "coldpress/samples/photos archive/" in section
    encode_local(str(coldpress.samples_path()), str(tmp_path / "archive"), codec="avif-half", bpp=0.05,
                 progress=False)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    expected = open_archive("archive").read(ids=["coffee.jpg"]).column("bitstream")[0].as_py()
    assert scope["bitstream"] == expected
    assert np.array_equal(scope["pixels"], decode_bitstream(expected))
    assert Image.open(tmp_path / "coffee-restored.png").size == Image.open(coldpress.samples_path() / "coffee.jpg").size
    assert len(scope["df"]) == 4 and scope["rejected"].empty


# -- S3 -------------------------------------------------------------------------------------------
@pytest.fixture
def s3_archive(archive, s3_bucket, s3_options) -> str:
    import s3fs

    fs = s3fs.S3FileSystem(**s3_options)
    fs.put(str(archive) + "/", f"{s3_bucket}/archive/", recursive=True)
    return f"s3://{s3_bucket}/archive"


def _s3fs(s3_options):
    import s3fs

    return s3fs.S3FileSystem(**s3_options)


def test_s3_pyarrow_pandas_and_duckdb(s3_archive, s3_options, s3_server, expected):
    from pyarrow.fs import FSSpecHandler, PyFileSystem, S3FileSystem

    path = s3_archive.removeprefix("s3://")
    native = S3FileSystem(endpoint_override=s3_server, scheme="http", region="us-east-1",
                          access_key="testing", secret_key="testing", session_token="testing")
    check_table(pq.read_table(path, filesystem=native), expected)
    check_table(ds.dataset(path, filesystem=PyFileSystem(FSSpecHandler(_s3fs(s3_options)))).to_table(), expected)
    df = pd.read_parquet(s3_archive, storage_options=s3_options)
    assert sorted(df["id"]) == expected["ids"] and list(df.columns) == ARCHIVE_SCHEMA.names
    # DuckDB's own S3 client is an extension it downloads; through fsspec it needs nothing more.
    con = duckdb.connect()
    con.register_filesystem(_s3fs(s3_options))
    rows = con.sql(f"select id from read_parquet('{s3_archive}/*.parquet') order by id").fetchall()
    assert [r[0] for r in rows] == expected["ids"]


def test_s3_polars_and_hugging_face_datasets(s3_archive, s3_options, s3_server, expected, tmp_path):
    options = {"aws_endpoint_url": s3_server, "aws_allow_http": "true", "aws_region": "us-east-1",
               "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    df = pl.read_parquet(f"{s3_archive}/*.parquet", storage_options=options)
    assert sorted(df["id"].to_list()) == expected["ids"] and df.columns == ARCHIVE_SCHEMA.names
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    data = datasets.load_dataset("parquet", data_files=f"{s3_archive}/*.parquet", split="train",
                                 storage_options=s3_options, cache_dir=str(tmp_path / "hf-cache"))
    assert sorted(data["id"]) == expected["ids"]


# -- layout 1 (archives written before the side files started with '_') -------------------------
def test_a_layout_1_archive_works_with_every_command_and_upgrade_fixes_it(archive, expected, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(archive, old)
    make_layout_1(old)
    assert sorted(p.name for p in old.iterdir()) == ["manifest.json", "part-00000.parquet", "part-00001.parquet",
                                                    "rejected.parquet"]
    with pytest.raises(Exception):  # what users met: pyarrow reads manifest.json as a Parquet file
        pq.read_table(old)
    assert duckdb.sql(f"select count(*) from read_parquet('{old}/*.parquet')").fetchall() == [(8,)]  # 6 + 2 rejected

    stats = inspect_archive(str(old), ids=True)
    assert stats["layout"] == 1 and stats["legacy_files"] == ["manifest.json", "rejected.parquet"]
    for key in ("num_rows", "num_rejected", "ids", "rejected", "codecs", "bitstream_bytes", "runs"):
        assert stats[key] == expected[key], key
    assert verify_local(str(old), progress=False)["ok"] == 6
    assert sorted(Path(p).name for p in restore_local(str(old), str(tmp_path / "restored"), ids=["sub/gray.png"],
                                                progress=False)) == ["gray.png"]

    result = upgrade_archive(str(old))
    assert result["moved"] == [["rejected.parquet", "_rejected/rejected.parquet"], ["manifest.json", "_manifest.json"]]
    assert sorted(p.name for p in old.iterdir()) == ["_manifest.json", "_rejected", "part-00000.parquet",
                                                    "part-00001.parquet"]
    after = inspect_archive(str(old), ids=True)
    assert after["layout"] == 2 and after["legacy_files"] == []
    for key in ("num_rows", "num_rejected", "ids", "rejected", "runs"):
        assert after[key] == expected[key], key
    assert open_archive(str(old)).manifest["layout"] == 2
    check_table(pq.read_table(old), expected)
    assert duckdb.sql(f"select count(*) from read_parquet('{old}/*.parquet')").fetchall() == [(6,)]
    assert upgrade_archive(str(old))["moved"] == []  # again: nothing to do


def test_resuming_an_encode_into_a_layout_1_archive_migrates_it(archive, expected, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(archive, old)
    make_layout_1(old)
    (tmp_path / "src").mkdir()
    src = make_src(tmp_path / "src")
    Image.fromarray(natural_image(48, 64, seed=11)).save(src / "new.png")
    manifest = encode_local(str(src), str(old), codec="jpeg", bpp=2.0, progress=False, rows_per_shard=4)
    assert manifest["skipped"] == 6 and manifest["archived"] == 1 and manifest["layout"] == 2
    assert len(manifest["runs"]) == 2  # the layout-1 manifest's run history is kept
    assert not (old / "manifest.json").exists() and not (old / "rejected.parquet").exists()
    stats = inspect_archive(str(old), ids=True)
    assert stats["ids"] == sorted([*expected["ids"], "new.png"])
    assert [r["id"] for r in stats["rejected"]] == [r["id"] for r in expected["rejected"]]
    check_table(pq.read_table(old, filters=[("id", "!=", "new.png")]), expected)
