"""The local engine: encode, restore and verify archives in one process, with no cluster.

It is the engine the CLI uses by default and the reference the distributed engines are compared
with: it calls the same engine-neutral transforms (``coldpress.transforms``) and writes the same
archive files. Sources are read a few at a time in background threads (object stores are slow to
answer, local disks are not); decoding and encoding run one image at a time in the calling thread.

    manifest = encode_local("photos/", "s3://bucket/archive", bpp=0.05)
    paths = restore_local("s3://bucket/archive", "restored/", ids=["2024/img_0001.jpg"])
    report = verify_local("s3://bucket/archive")
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Mapping

from tqdm import tqdm

from coldpress.codec.base import Codec, check_bpp
from coldpress.errors import ColdpressError
from coldpress.defaults import DEFAULT_CODEC, DEFAULT_RESTORE_FORMAT
from coldpress.transforms.archive import DEFAULT_ROWS_PER_SHARD, ArchiveWriter, open_archive
from coldpress.transforms.plan import (
    check_strict,
    join_destination,
    plan_encode,
    resolve_codec,
    restore_failure,
    restore_failures_error,
    run_manifest,
)
from coldpress.transforms.records import (
    decode_record,
    pixels_sha256,
    process_input,
    restore_record,
    restored_names,
)
from coldpress.transforms.faults import raise_if_environmental
from coldpress.transforms.sources import filesystem_for, read_ahead

ENGINE = "local"
#: Rows decoded per Parquet batch when restoring or verifying a whole archive.
RESTORE_BATCH_ROWS = 16


def _progress(iterable: Iterable[Any] | None = None, *, total: int | None, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar on stderr; hidden when ``enabled`` is false or stderr is not a terminal."""
    return tqdm(iterable, total=total, desc=desc, unit="img", disable=None if enabled else True,
                file=sys.stderr, dynamic_ncols=True, leave=False)


def encode_local(
    src: str,
    dst: str,
    *,
    codec: str | Codec = DEFAULT_CODEC,
    bpp: float,
    storage_options: Mapping[str, Any] | None = None,
    resume: bool = True,
    strict: bool = False,
    progress: bool = True,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    codec_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Encode every file under ``src`` into the archive ``dst``; return the archive's manifest.

    ``src`` and ``dst`` are local paths or fsspec URLs (``s3://bucket/prefix``); ``storage_options``
    go to fsspec for both. Each input is archived (one row, verified on write) or rejected (one row
    of the rejected table with the reason); bad input never stops the job.

    ``resume``: inputs whose id is already in ``dst`` are skipped and new rows go to new shards, so
    an interrupted or extended job can be run again. With ``resume=False`` ``dst`` must not hold an
    archive yet. ``strict``: after the archive is written, raise RejectedInputs (its ``manifest``
    attribute holds the manifest) when any input was rejected. ``codec_options`` build the codec
    (``get_codec(codec, **codec_options)``, e.g. ``{"model": "my-model.safetensors"}``).
    """
    bpp = check_bpp(bpp)
    started = time.monotonic()
    the_codec = resolve_codec(codec, **dict(codec_options or {}))
    src, dst = str(src), str(dst)
    plan = plan_encode(src, dst, storage_options, resume=resume)
    todo = plan.todo

    with ArchiveWriter(dst, rows_per_shard=rows_per_shard, filesystem=plan.dst_fs) as writer:
        with _progress(total=len(todo), desc=f"encoding ({the_codec.name} @ {bpp} bpp)", enabled=progress) as bar:
            for uri, key, data in read_ahead(todo, storage_options):
                status, row = process_input(key, uri, data, the_codec, bpp)
                if status == "archived":
                    writer.add(row)
                else:
                    writer.add_rejected(row)
                bar.set_postfix(archived=writer.archived, rejected=writer.rejected, refresh=False)
                bar.update()
        manifest = writer.close(run_manifest(ENGINE, plan, the_codec, bpp, resume=resume, strict=strict,
                                             elapsed_s=time.monotonic() - started))
    check_strict(manifest, plan, strict)
    return manifest


def restore_local(
    archive: str,
    dst: str,
    *,
    ids: Iterable[str] | None = None,
    fmt: str = DEFAULT_RESTORE_FORMAT,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    region: Mapping[str, Any] | None = None,
) -> list[str]:
    """Decode images of ``archive`` into files under ``dst``; return the paths written, sorted by id.

    ``ids`` None restores every row; otherwise only those ids (an id not in the archive raises
    ArchiveError before anything is written, and only the row groups holding them are read). Files
    are named from the ids (``restored_names``: folders kept, extension of ``fmt``). An image whose
    row does not decode is skipped, the others are written, then ArchiveError lists the failures.
    Ids whose names collide among those restored (``a.jpg`` and ``a.png`` both give ``a.png``) get a
    short hash of the id added to their names. Rasters restore as GeoTIFF (``records.restore_record``:
    fmt "auto", the default, writes a COG named .tif); ``region`` ({"window": (col, row, width,
    height)} or {"bbox": (minx, miny, maxx, maxy), "bbox_crs": ...}) restores only that part of each.
    """
    archive, dst = str(archive), str(dst)
    fs, _ = filesystem_for(archive, storage_options)
    arch = open_archive(archive, filesystem=fs)
    if ids is None:
        wanted = arch.read(columns=["id"]).column("id").to_pylist()
        batches: Iterable[Any] = arch.iter_batches(batch_size=RESTORE_BATCH_ROWS)
    else:
        if isinstance(ids, str):
            raise TypeError("ids must be a list of ids, not a single string")
        wanted = sorted(set(ids))
        batches = arch.read(ids=wanted).to_batches(max_chunksize=RESTORE_BATCH_ROWS)
    total = len(wanted)
    names = restored_names(sorted(set(wanted)), fmt)
    written: list[tuple[str, str]] = []
    failures: list[tuple[str, str]] = []
    with _progress(total=total, desc="restoring", enabled=progress) as bar:
        for batch in batches:
            for row in batch.to_pylist():
                rid = row["id"]
                try:
                    target = restore_record(row, join_destination(dst, names[rid]), fmt, storage_options,
                                            region=region)
                    written.append((rid, target))
                except Exception as exc:  # noqa: BLE001 - sorted: a bad row is listed, anything else stops
                    reason = restore_failure(exc)
                    if reason is None:  # the destination or the environment, not the row: stop
                        raise_if_environmental(exc, f"restoring {rid!r} into {dst}")
                        raise
                    failures.append((rid, reason))
                bar.update()
    if failures:
        raise restore_failures_error(failures, total, len(written), archive, dst)
    return [target for _, target in sorted(written)]


def verify_local(
    archive: str, *, storage_options: Mapping[str, Any] | None = None, progress: bool = True
) -> dict[str, Any]:
    """Check every row of ``archive``: bitstream checksum, full decode, decoded pixels vs ``recon_sha256``.

    Returns ``{"archive", "rows", "ok", "failures": [{"id", "problem"}], "rejected"}``; nothing is
    raised for a bad row (an unreadable shard raises ArchiveError). A row fails when its bitstream's
    sha256 differs from ``bitstream_sha256`` (the bytes changed), when it does not decode (container
    checksum, format, missing codec or model), when the decoded pixels' sha256 differs from
    ``recon_sha256`` (the decoder's output changed since the row was written), or when its id
    appears more than once in the archive.
    """
    archive = str(archive)
    fs, _ = filesystem_for(archive, storage_options)
    arch = open_archive(archive, filesystem=fs)
    failures: list[dict[str, str]] = []
    seen: set[str] = set()
    rows = 0
    with _progress(total=arch.num_rows, desc="verifying", enabled=progress) as bar:
        for batch in arch.iter_batches(batch_size=RESTORE_BATCH_ROWS):
            for row in batch.to_pylist():
                rows += 1
                rid = row["id"]
                bar.update()
                if rid in seen:
                    failures.append({"id": rid, "problem": "this id appears in more than one row; remove the "
                                     "duplicate shard or re-encode the archive into a new destination"})
                    continue
                seen.add(rid)
                try:
                    pixels = decode_record(row)
                except Exception as exc:  # noqa: BLE001 - a decoder crash is a failed row, not a crash
                    # ... unless the environment failed (GPU, driver, disk, network): not a damaged row.
                    raise_if_environmental(exc, f"verifying {rid!r} of {archive}")
                    problem = str(exc) if isinstance(exc, ColdpressError) else (
                        f"decoding failed unexpectedly ({type(exc).__name__}: {exc})")
                    failures.append({"id": rid, "problem": problem})
                    continue
                recorded = row.get("recon_sha256")
                if recorded and pixels_sha256(pixels) != recorded:
                    failures.append({
                        "id": rid,
                        "problem": (
                            "the bitstream is intact but decodes to different pixels than when it was "
                            f"written (codec version then: {row.get('codec_version') or 'unknown'}); the "
                            "decoder changed: restore with the coldpress and codec versions recorded in the row"
                        ),
                    })
    return {
        "archive": arch.path,
        "rows": rows,
        "ok": rows - len(failures),
        "failures": failures,
        "rejected": arch.rejected().num_rows,
    }
