"""``coldpress inspect ARCHIVE``: what an archive holds, without decoding anything."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

#: Rejected inputs listed in the text output (--json lists all of them).
SHOWN_REJECTIONS = 20


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "inspect",
        help="summarize an archive: counts, sizes, bpp, PSNR, codecs, rejections",
        description="Summarize an archive from its footers and small columns; bitstreams are not read.",
    )
    p.add_argument("archive", metavar="ARCHIVE", help="archive directory, local or URL (s3://bucket/archive)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--ids", action="store_true", help="also list the id of every archived image")
    return p


def rejection_kind(reason: str) -> str:
    """The error class a rejection reason starts with ("RateUnreachableError", "InputRejected", ...)."""
    head, sep, _ = reason.partition(":")
    return head.strip() if sep and head.strip().isidentifier() else "other"


def inspect_archive(archive: str, storage_options: dict[str, Any] | None = None, *, ids: bool = False) -> dict[str, Any]:
    """The summary ``coldpress inspect`` prints, as a JSON-able dict."""
    from coldpress.transforms.archive import archive_stats, open_archive
    from coldpress.transforms.sources import filesystem_for

    fs, _ = filesystem_for(archive, storage_options)
    stats = archive_stats(archive, filesystem=fs)
    arch = open_archive(archive, filesystem=fs)
    rejected = arch.rejected().sort_by("id").select(["id", "source_uri", "reason"]).to_pylist()
    stats.pop("rejected_reasons", None)  # one entry per input: replaced by the kinds and the list
    stats["rejected_kinds"] = dict(Counter(rejection_kind(r["reason"]) for r in rejected).most_common())
    stats["rejected"] = rejected
    manifest = arch.manifest or {}
    stats["runs"] = len(manifest.get("runs", []))
    stats["engine"] = manifest.get("engine")
    if ids:
        stats["ids"] = sorted(arch.read(columns=["id"]).column("id").to_pylist())
    stats["rasters"] = raster_quality(arch)
    return stats


def inspect_damaged(archive: str, storage_options: dict[str, Any] | None = None, *, ids: bool = False,
                    cause: BaseException | None = None) -> dict[str, Any]:
    """What ``coldpress inspect`` says of an archive it cannot read whole: every part read on its own
    (``salvage``, the id and quality columns only, no bitstream), the rows of the intact parts counted
    and summarized, every damaged part listed with the ids it held. ``damaged`` lists them."""
    from coldpress.transforms.archive.salvage import salvage
    from coldpress.transforms.sources import filesystem_for

    fs, _ = filesystem_for(archive, storage_options)
    readable: list[str] = []
    bpp: list[float] = []
    psnr: list[float] = []
    damaged: list[str] = []
    for kind, item in salvage(archive, filesystem=fs, columns=["id", "achieved_bpp", "psnr"]):
        if kind == "damage":
            damaged.append(item.describe())
            continue
        readable += item.column("id").to_pylist()
        bpp += [v for v in item.column("achieved_bpp").to_pylist() if v is not None]
        psnr += [v for v in item.column("psnr").to_pylist() if v is not None and v == v]
    if not damaged and cause is not None:  # every part reads on its own: what failed is the whole
        damaged.append(str(cause))
    stats: dict[str, Any] = {
        "path": archive, "damaged": damaged, "readable_rows": len(readable),
        "bpp": _summary(bpp), "psnr": _summary(psnr),
    }
    if ids:
        stats["ids"] = sorted(readable)
    return stats


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"min": ordered[0], "median": ordered[len(ordered) // 2], "mean": sum(ordered) / len(ordered),
            "max": ordered[-1]}


def print_damaged(stats: dict[str, Any]) -> None:
    print(f"archive      {stats['path']}")
    print(f"status       DAMAGED: {len(stats['damaged'])} part(s) cannot be read; `coldpress verify` checks every "
          "row, `coldpress restore --all` writes every intact image")
    print(f"images       {stats['readable_rows']} readable in the intact parts")
    print(f"bpp          {_fmt_summary(stats['bpp'], 'bpp', 4)}")
    print(f"PSNR         {_fmt_summary(stats['psnr'], 'dB', 2)}")
    print("damage")
    for line in stats["damaged"]:
        print(f"  {line}")
    if "ids" in stats:
        print("ids (readable)")
        for rid in stats["ids"]:
            print(f"  {rid}")


def raster_quality(arch) -> list[dict[str, Any]]:
    """Per raster row: bands, dtype, bpp (all bands per spatial pixel), bits per band-pixel, RMSE and
    PSNR per band (from the row metadata; no bitstream is read)."""
    from coldpress.codec.limits import loads_bounded

    out = []
    table = arch.read(columns=["id", "mode", "achieved_bpp", "metadata"])
    for row in table.to_pylist():
        if row["mode"] != "RASTER":
            continue
        try:
            meta = loads_bounded(row["metadata"] or "{}", "the row's metadata")
        except ValueError:
            continue
        if not isinstance(meta, dict) or not isinstance(meta.get("raster", {}), dict) or not isinstance(
                meta.get("quality", {}), dict):
            continue
        r, q = meta.get("raster", {}), meta.get("quality", {})
        out.append({
            "id": row["id"], "bands": r.get("count"), "dtype": r.get("dtype"), "crs": r.get("crs_code"),
            "bpp": row["achieved_bpp"], "bits_per_band_pixel": q.get("bits_per_band_pixel"),
            "psnr_per_band": q.get("psnr_per_band"), "rmse_per_band": q.get("rmse_per_band"),
        })
    return out


def print_raster_quality(rasters: list[dict[str, Any]]) -> None:
    """The per-band lines of ``raster_quality`` (bpp counts all bands; PSNR per band against 255 for
    uint8 bands, else the band's valid range; RMSE in the band's own units)."""
    if not rasters:
        return
    print("rasters      bpp (all bands) / bits per band-pixel; per band PSNR dB (RMSE in source units)")
    for r in rasters:
        bands = "  ".join(f"{p:.2f} ({e:.4g})" for p, e in zip(r["psnr_per_band"] or [], r["rmse_per_band"] or []))
        print(f"  {r['id']}: {r['bands']}x{r['dtype']} {r['crs'] or 'no CRS'}, {r['bpp']:.4f} / "
              f"{(r['bits_per_band_pixel'] or 0):.4f} bpp; {bands}")


def _fmt_summary(s: dict[str, float] | None, unit: str, digits: int) -> str:
    if not s:
        return "-"
    return (f"min {s['min']:.{digits}f}  median {s['median']:.{digits}f}  mean {s['mean']:.{digits}f}  "
            f"max {s['max']:.{digits}f} {unit}")


def print_text(stats: dict[str, Any]) -> None:
    n = stats["num_rows"]
    print(f"archive      {stats['path']}")
    complete = {True: "complete", False: "INCOMPLETE (a run stopped early: run the encode again)", None: "no manifest"}
    print(f"status       {complete.get(stats.get('complete'), stats.get('complete'))}; {stats['runs']} run(s)")
    print(f"images       {n} in {stats['num_shards']} shard(s)")
    print(f"rejected     {stats['num_rejected']}")
    print(f"bitstreams   {stats['bitstream_bytes']:,} bytes"
          + (f" ({stats['bitstream_bytes'] / n:,.0f} per image), stored in {stats['stored_bitstream_bytes']:,} "
             "bytes of the shards (zstd-compressed column)" if n else ""))
    print(f"shards       {stats['shard_bytes']:,} bytes"
          + (f": bitstreams + {stats['overhead_bytes_per_row']:,.0f} bytes per image of row overhead (every other "
             "column: ids, checksums, quality, metadata; page headers and footers)" if n else ""))
    print(f"files        {stats['file_bytes']:,} bytes in total with the manifest and the rejected table")
    if stats.get("legacy_files"):
        print(f"layout       1 ({', '.join(stats['legacy_files'])} beside the shards, where Parquet tools read "
              f"them as data): run `coldpress upgrade {stats['path']}`")
    print(f"bpp          {_fmt_summary(stats['bpp'], 'bpp', 4)}")
    print(f"PSNR         {_fmt_summary(stats['psnr'], 'dB', 2)}")
    targets = ", ".join(f"{t:g} bpp: {c}" for t, c in stats["target_bpp"].items()) or "-"
    print(f"targets      {targets}")
    print(f"codecs       {', '.join(f'{k}: {v}' for k, v in stats['codecs'].items()) or '-'}")
    if stats["model_ids"]:
        print(f"models       {', '.join(f'{k}: {v}' for k, v in stats['model_ids'].items())}")
    print_raster_quality(stats.get("rasters") or [])
    if stats["rejected"]:
        kinds = ", ".join(f"{k}: {v}" for k, v in stats["rejected_kinds"].items())
        print(f"rejections   {kinds}")
        for row in stats["rejected"][:SHOWN_REJECTIONS]:
            print(f"  {row['id']}: {row['reason']}")
        if len(stats["rejected"]) > SHOWN_REJECTIONS:
            print(f"  ... and {len(stats['rejected']) - SHOWN_REJECTIONS} more (--json lists all)")
    if "ids" in stats:
        print("ids")
        for rid in stats["ids"]:
            print(f"  {rid}")


def run(args: argparse.Namespace) -> int:
    from coldpress.jobs.cli import storage_options

    from coldpress.errors import ArchiveError

    options = storage_options(args)
    try:
        stats = inspect_archive(args.archive, options, ids=args.ids)
    except ArchiveError as exc:  # a damaged part (or no archive there: salvage then says so)
        stats = inspect_damaged(args.archive, options, ids=args.ids, cause=exc)
    show = print_damaged if "damaged" in stats else print_text
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True, default=str))
    else:
        show(stats)
    return 1 if "damaged" in stats else 0
