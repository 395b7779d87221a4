"""Parquet archives: write them atomically, read them back by id with few bytes, describe them.

An archive is a directory, local or on any fsspec filesystem (``s3://bucket/prefix``)::

    part-00000.parquet            data shards (ARCHIVE_SCHEMA), rows sorted by id within each shard
    part-00001.parquet            ... (deterministic names: engines choose the shard indexes)
    _rejected/rejected.parquet    inputs that could not be archived, with the reason (REJECTED_SCHEMA)
    _manifest.json                the run manifest (counts, codec, versions, timings, shard list)

Side files start with '_', so standard Parquet readers given the directory (or the
``archive/*.parquet`` glob) read exactly the archived rows. The modules:

- ``layout``: file names, listing, atomic writes (the storage primitives);
- ``shards``: the Parquet files (``write_shard``, ``write_rejected``, footers and their checks);
- ``manifest``: ``_manifest.json``;
- ``writer``: ``ArchiveWriter``;
- ``reader``: ``open_archive``, ``Archive``, ``existing_ids``;
- ``stats``: ``archive_stats`` (``coldpress inspect``);
- ``upgrade``: ``upgrade_archive``, layout 1 (``manifest.json``, ``rejected.parquet``) to 2.

See docs/FORMAT.md. The archive code never decodes bitstreams: it stores and returns bytes.
"""

from coldpress.transforms.archive.layout import (
    ARCHIVE_LAYOUT,
    DEFAULT_BYTES_PER_SHARD,
    DEFAULT_ROWS_PER_SHARD,
    DEFAULT_SHARD_PREFIX,
    LEGACY_MANIFEST_NAME,
    LEGACY_REJECTED_NAME,
    MANIFEST_NAME,
    REJECTED_DIR,
    REJECTED_NAME,
    SideFiles,
    shard_name,
)
from coldpress.transforms.archive.manifest import read_manifest, write_manifest
from coldpress.transforms.archive.reader import Archive, Shard, existing_ids, open_archive
from coldpress.transforms.archive.shards import next_shard_index, write_rejected, write_shard
from coldpress.transforms.archive.stats import archive_stats
from coldpress.transforms.archive.upgrade import upgrade_archive
from coldpress.transforms.archive.writer import ArchiveWriter

__all__ = [
    "ARCHIVE_LAYOUT",
    "DEFAULT_BYTES_PER_SHARD",
    "DEFAULT_ROWS_PER_SHARD",
    "DEFAULT_SHARD_PREFIX",
    "LEGACY_MANIFEST_NAME",
    "LEGACY_REJECTED_NAME",
    "MANIFEST_NAME",
    "REJECTED_DIR",
    "REJECTED_NAME",
    "Archive",
    "ArchiveWriter",
    "Shard",
    "SideFiles",
    "archive_stats",
    "existing_ids",
    "next_shard_index",
    "open_archive",
    "read_manifest",
    "shard_name",
    "upgrade_archive",
    "write_manifest",
    "write_rejected",
    "write_shard",
]
