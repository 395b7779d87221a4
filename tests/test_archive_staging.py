"""Staged rows (transforms/archive/staging.py) and the shard cut over them (Beam's WriteArchive)."""

from __future__ import annotations

import random

import pyarrow.parquet as pq
import pytest

from coldpress.errors import ArchiveError
from coldpress.transforms.archive import ArchiveWriter, open_archive, write_shard
from coldpress.transforms.archive.staging import (STAGED_ROW_GROUP_ROWS, STAGING_DIR, _may_hold, read_staged,
    remove_staging, stage_rows, staging_folder)
from test_archive import make_rows

pytest.importorskip("apache_beam")
from coldpress.pipelines.beam.write import cut_shards  # noqa: E402


def _stage_shuffled(dst, run, rows, parts: int, seed: int = 0):
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    step = -(-len(shuffled) // parts)
    return [(*stage_rows(dst, run, shuffled[i:i + step]), {}) for i in range(0, len(shuffled), step)]


def test_shards_cut_from_staged_rows_are_the_local_engines_shards(tmp_path):
    rows = make_rows(300, seed=3)
    staged = _stage_shuffled(tmp_path / "beam", "run1", rows, parts=4)
    for name, sizes, _ in staged:  # each part: its rows' ids and bitstream sizes, sorted by id
        assert name.startswith(f"{STAGING_DIR}/run1/") and sizes == sorted(sizes)
    shards = cut_shards(staged, rows_per_shard=64, bytes_per_shard=1 << 30)
    assert [sum(map(len, shard.values())) for shard in shards] == [64, 64, 64, 64, 44]
    for number, selection in enumerate(shards):
        write_shard(tmp_path / "beam", number, read_staged(tmp_path / "beam", selection))
    with ArchiveWriter(tmp_path / "local", rows_per_shard=64) as writer:
        for row in sorted(rows, key=lambda r: r["id"]):
            writer.add(row)
    beam, local = open_archive(tmp_path / "beam"), open_archive(tmp_path / "local")
    assert [(s.name, s.min_id, s.max_id) for s in beam.shards] == [(s.name, s.min_id, s.max_id) for s in local.shards]
    for shard in local.shards:  # byte for byte
        assert (tmp_path / "beam" / shard.name).read_bytes() == (tmp_path / "local" / shard.name).read_bytes()


def test_the_cut_honours_the_byte_bound_and_takes_an_id_staged_twice_once():
    parts = [("_staging/r/b.parquet", [("a", 10), ("c", 10)], {}),
             ("_staging/r/a.parquet", [("b", 25), ("c", 10)], {}),  # c again: a task that ran twice
             ("_staging/r/c.parquet", [("d", 5), ("e", 5)], {})]
    shards = cut_shards(parts, rows_per_shard=100, bytes_per_shard=30)
    # a(10) + b(25) reach 30 bytes; then c (from the first part by name), d, e
    assert shards == [{"_staging/r/b.parquet": ["a"], "_staging/r/a.parquet": ["b"]},
                      {"_staging/r/a.parquet": ["c"], "_staging/r/c.parquet": ["d", "e"]}]
    assert cut_shards([], 10, 10) == []


def test_a_shard_is_read_from_the_row_groups_that_hold_its_ids(tmp_path):
    rows = sorted(make_rows(4 * STAGED_ROW_GROUP_ROWS, seed=5), key=lambda r: r["id"])
    name, sizes = stage_rows(tmp_path, "run", rows)
    meta = pq.ParquetFile(tmp_path / name).metadata
    assert meta.num_row_groups == 4
    stats = [meta.row_group(g).column(0).statistics for g in range(4)]
    second = [rid for rid, _ in sizes[STAGED_ROW_GROUP_ROWS:2 * STAGED_ROW_GROUP_ROWS]]
    assert [_may_hold(s, second[:3]) for s in stats] == [False, True, False, False]
    assert [_may_hold(s, [second[-1], sizes[-1][0]]) for s in stats] == [False, True, False, True]
    table = read_staged(tmp_path, {name: second[:3]})
    assert table.column("id").to_pylist() == second[:3]
    assert table.column("bitstream").to_pylist() == [r["bitstream"] for r in rows[256:259]]


def test_missing_staged_rows_fail_the_shard_with_what_to_do(tmp_path):
    name, sizes = stage_rows(tmp_path, "run", make_rows(5, seed=1))
    with pytest.raises(ArchiveError, match=r"lack 1 of the rows .*\(first: 'nope'\).*run the encode again"):
        read_staged(tmp_path, {name: [sizes[0][0], "nope"]})
    with pytest.raises(ArchiveError, match=r"are gone.*run the encode again"):
        read_staged(tmp_path, {f"{STAGING_DIR}/run/absent.parquet": ["x"]})
    (tmp_path / name).write_bytes((tmp_path / name).read_bytes()[:300])
    with pytest.raises(ArchiveError, match="cannot be read as Parquet"):
        read_staged(tmp_path, {name: [sizes[0][0]]})


def test_removing_a_runs_staging_keeps_the_others(tmp_path):
    stage_rows(tmp_path, "one", make_rows(2, seed=1))
    stage_rows(tmp_path, "two", make_rows(2, seed=2))
    remove_staging(tmp_path, "one")
    assert sorted(p.name for p in (tmp_path / STAGING_DIR).iterdir()) == ["two"]
    remove_staging(tmp_path, "two")
    assert not (tmp_path / STAGING_DIR).exists()
    remove_staging(tmp_path, "never")  # nothing to remove: no error
    for bad in ("", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="plain, non-empty name"):
            staging_folder(bad)
