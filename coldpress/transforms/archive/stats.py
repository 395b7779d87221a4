"""``archive_stats``: what ``coldpress inspect`` shows, from footers and a few small columns."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import pyarrow.compute as pc

from coldpress.transforms.archive.reader import open_archive


def _summary(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    values.sort()
    n = len(values)
    median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return {"min": values[0], "median": median, "mean": sum(values) / n, "max": values[-1]}


def archive_stats(path: Any, storage_options: Mapping[str, Any] | None = None, *, filesystem: Any = None) -> dict[str, Any]:
    """What ``coldpress inspect`` shows: counts, sizes, bpp/PSNR distribution, codecs, rejections.

    Sizes: ``bitstream_bytes`` is the sum of the bitstream lengths (what ``decode_bitstream``
    takes); ``stored_bitstream_bytes`` what the bitstream column takes in the shards (zstd-1 pages
    and their headers); ``shard_bytes`` the shard files; ``overhead_bytes_per_row`` is
    (shard bytes - stored bitstream bytes) / rows: every other column, page headers and footers.
    ``file_bytes`` adds the manifest and the rejected table.

    Reads footers and a few small columns; never the bitstreams (unless a shard lacks the
    bitstream byte count that write_shard stores in its metadata).
    """
    archive = open_archive(path, storage_options, filesystem=filesystem)
    columns = ["codec", "model_id", "target_bpp", "achieved_bpp", "psnr"]
    codecs: Counter[str] = Counter()
    models: Counter[str] = Counter()
    targets: Counter[float] = Counter()
    bpp: list[float] = []
    psnr: list[float] = []
    for batch in archive.iter_batches(columns=columns, batch_size=65536):
        codecs.update(batch.column("codec").to_pylist())
        models.update(m for m in batch.column("model_id").to_pylist() if m)
        targets.update(batch.column("target_bpp").to_pylist())
        bpp.extend(batch.column("achieved_bpp").to_pylist())
        psnr.extend(batch.column("psnr").to_pylist())
    bitstream_bytes = 0
    stored_bitstream_bytes = 0
    for i, shard in enumerate(archive.shards):
        if shard.bitstream_bytes is not None:
            bitstream_bytes += shard.bitstream_bytes
        else:
            lengths = pc.binary_length(archive._read_shard(i, None, ["bitstream"]).column("bitstream"))
            bitstream_bytes += pc.sum(lengths).as_py() or 0
        stored_bitstream_bytes += _stored_column_bytes(archive._footer(i), "bitstream")
    shard_bytes = sum(s.num_bytes for s in archive.shards)
    fs, root = archive._fs, archive._root
    other_bytes = 0
    for name in archive.side_files:
        try:
            other_bytes += fs.size(f"{root}/{name}")
        except FileNotFoundError:
            pass
    rejected = archive.rejected()
    reasons = Counter(rejected.column("reason").to_pylist())
    n = archive.num_rows
    return {
        "path": archive.path,
        "num_shards": len(archive.shards),
        "num_rows": n,
        "num_rejected": rejected.num_rows,
        "rejected_reasons": dict(reasons.most_common()),
        "bitstream_bytes": bitstream_bytes,
        "shard_bytes": shard_bytes,
        "file_bytes": shard_bytes + other_bytes,
        "stored_bitstream_bytes": stored_bitstream_bytes,
        # Everything in the shards but the bitstream column chunks: the other columns, page headers,
        # footers. Never negative, unlike file bytes minus bitstream lengths: zstd-1 stores the
        # bitstream column in fewer bytes than its values' lengths (container headers repeat).
        "overhead_bytes_per_row": (shard_bytes - stored_bitstream_bytes) / n if n else None,
        "bpp": _summary(bpp),
        "psnr": _summary(psnr),
        "target_bpp": dict(sorted(targets.items())),
        "codecs": dict(codecs.most_common()),
        "model_ids": dict(models.most_common()),
        "complete": (archive.manifest or {}).get("complete"),
        "manifest": archive.manifest is not None,
        "layout": archive.layout,
        "legacy_files": list(archive.legacy_files),
    }


def _stored_column_bytes(metadata: Any, column: str) -> int:
    """Bytes the chunks of ``column`` take in a Parquet file (pages and their headers, compressed)."""
    index = metadata.schema.names.index(column)
    return sum(metadata.row_group(rg).column(index).total_compressed_size for rg in range(metadata.num_row_groups))
