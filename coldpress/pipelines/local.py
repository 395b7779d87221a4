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

import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Iterator, Mapping

from tqdm import tqdm

from coldpress.codec import get_codec
from coldpress.codec.base import Codec
from coldpress.errors import ArchiveError, ColdpressError, InputRejected, RejectedInputs
from coldpress.defaults import DEFAULT_CODEC, DEFAULT_RESTORE_FORMAT
from coldpress.transforms.archive import DEFAULT_ROWS_PER_SHARD, ArchiveWriter, existing_ids, open_archive
from coldpress.transforms.records import (
    decode_record,
    pixels_sha256,
    process_input,
    restored_names,
    write_image,
)
from coldpress.transforms.sources import filesystem_for, list_sources, read_bytes, record_id

ENGINE = "local"
#: Sources read ahead of the encoder, and threads reading them.
READ_AHEAD = 8
READ_THREADS = 4
#: Rows decoded per Parquet batch when restoring or verifying a whole archive.
RESTORE_BATCH_ROWS = 16


def _progress(iterable: Iterable[Any] | None = None, *, total: int | None, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar on stderr; hidden when ``enabled`` is false or stderr is not a terminal."""
    return tqdm(iterable, total=total, desc=desc, unit="img", disable=None if enabled else True,
                file=sys.stderr, dynamic_ncols=True, leave=False)


def _resolve_codec(codec: str | Codec) -> Codec:
    if isinstance(codec, Codec):
        return codec
    try:
        return get_codec(codec)
    except ValueError as exc:  # unknown name: the registry's message lists the known ones
        raise ColdpressError(f"{exc} (pass it as --codec NAME)") from None


def _url(fs: Any, path: str, original: str) -> str:
    """``path`` on ``fs`` in the form list_sources records URIs: absolute local path, or full URL."""
    if "://" not in str(original) and "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return os.path.normpath(os.path.abspath(path))
    return fs.unstrip_protocol(path)


def _read_ahead(
    sources: list[tuple[str, str]], storage_options: Mapping[str, Any] | None
) -> Iterator[tuple[str, str, bytes | Exception]]:
    """(uri, key, bytes or the exception reading them) for each source, in order, read in threads."""
    if not sources:
        return
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(sources)), thread_name_prefix="coldpress-read") as pool:
        pending: deque[tuple[str, str, Future]] = deque()
        it = iter(sources)

        def submit() -> None:
            for uri, key in it:
                pending.append((uri, key, pool.submit(read_bytes, uri, storage_options)))
                return

        for _ in range(READ_AHEAD):
            submit()
        while pending:
            uri, key, future = pending.popleft()
            submit()
            try:
                data: bytes | Exception = future.result()
            except Exception as exc:  # noqa: BLE001 - becomes a rejected row with the reason
                data = exc
            yield uri, key, data


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
) -> dict[str, Any]:
    """Encode every file under ``src`` into the archive ``dst``; return the archive's manifest.

    ``src`` and ``dst`` are local paths or fsspec URLs (``s3://bucket/prefix``); ``storage_options``
    go to fsspec for both. Each input is archived (one row, verified on write) or rejected (one row
    of the rejected table with the reason); bad input never stops the job.

    ``resume``: inputs whose id is already in ``dst`` are skipped and new rows go to new shards, so
    an interrupted or extended job can be run again. With ``resume=False`` ``dst`` must not hold an
    archive yet. ``strict``: after the archive is written, raise RejectedInputs (its ``manifest``
    attribute holds the manifest) when any input was rejected.
    """
    if not (isinstance(bpp, (int, float)) and bpp > 0):
        raise ValueError(f"bpp must be a positive number, got {bpp!r}; pass e.g. bpp=0.05")
    started = time.monotonic()
    the_codec = _resolve_codec(codec)
    src, dst = str(src), str(dst)
    dst_fs, dst_path = filesystem_for(dst, storage_options)
    dst_root = dst_path.rstrip("/") or dst_path

    sources = list_sources(src, storage_options)
    # An archive inside the tree it archives must not archive itself on the next run.
    dst_url = _url(dst_fs, dst_root, dst)
    sources = [(uri, key) for uri, key in sources if not (uri == dst_url or uri.startswith(dst_url.rstrip("/") + "/"))]

    done = existing_ids(dst, filesystem=dst_fs)
    if done and not resume:
        raise ArchiveError(
            f"{dst} already holds an archive of {len(done)} image(s) and resume is off; write to a new "
            "destination, delete this one first, or turn resume on to add only the missing inputs"
        )
    todo, skipped = [], 0
    for uri, key in sources:
        try:
            if record_id(key) in done:
                skipped += 1
                continue
        except InputRejected:
            pass  # process_input rejects it with the reason
        todo.append((uri, key))

    described = the_codec.describe()
    with ArchiveWriter(dst, rows_per_shard=rows_per_shard, filesystem=dst_fs) as writer:
        with _progress(total=len(todo), desc=f"encoding ({the_codec.name} @ {bpp} bpp)", enabled=progress) as bar:
            for uri, key, data in _read_ahead(todo, storage_options):
                status, row = process_input(key, uri, data, the_codec, bpp)
                if status == "archived":
                    writer.add(row)
                else:
                    writer.add_rejected(row)
                bar.set_postfix(archived=writer.archived, rejected=writer.rejected, refresh=False)
                bar.update()
        manifest = writer.close(
            {
                "engine": ENGINE,
                "src": src,
                "codec": the_codec.name,
                "model_id": described.get("model_id", ""),
                "weights_hash": described.get("weights_hash", ""),
                "target_bpp": float(bpp),
                "device_class": the_codec.device_class,
                "inputs_seen": len(sources),
                "skipped": skipped,
                "resume": resume,
                "strict": strict,
                "elapsed_s": round(time.monotonic() - started, 3),
            }
        )
    if strict and manifest.get("rejected"):
        raise RejectedInputs(
            f"{manifest['rejected']} of {len(todo)} input(s) were rejected (strict mode); the others are "
            f"archived in {dst}. See the reasons with `coldpress inspect {dst}` and fix or remove those inputs",
            manifest,
        )
    return manifest


def _join(dst: str, name: str) -> str:
    if "://" in dst:
        return dst.rstrip("/") + "/" + name
    return os.path.join(dst, *name.split("/"))


def restore_local(
    archive: str,
    dst: str,
    *,
    ids: Iterable[str] | None = None,
    fmt: str = DEFAULT_RESTORE_FORMAT,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> list[str]:
    """Decode images of ``archive`` into files under ``dst``; return the paths written, sorted by id.

    ``ids`` None restores every row; otherwise only those ids (an id not in the archive raises
    ArchiveError before anything is written, and only the row groups holding them are read). Files
    are named from the ids (``restored_names``: folders kept, extension of ``fmt``). An image whose
    row does not decode is skipped, the others are written, then ArchiveError lists the failures.
    Ids whose names collide among those restored (``a.jpg`` and ``a.png`` both give ``a.png``) get a
    short hash of the id added to their names.
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
                    pixels = decode_record(row)
                    target = _join(dst, names[rid])
                    write_image(pixels, target, fmt, storage_options)
                    written.append((rid, target))
                except ColdpressError as exc:
                    failures.append((rid, str(exc)))
                except (ValueError, OSError, SyntaxError) as exc:  # a decoder choking on a damaged payload
                    if isinstance(exc, (FileNotFoundError, PermissionError)):
                        raise  # the destination, not the row: stop
                    failures.append((rid, f"the bitstream does not decode ({type(exc).__name__}: {exc}); "
                                     "restore the archive from a replica or re-encode the source"))
                bar.update()
    if failures:
        shown = "; ".join(f"{rid}: {msg}" for rid, msg in failures[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        raise ArchiveError(
            f"{len(failures)} of {total} image(s) could not be restored from {archive} "
            f"({len(written)} written to {dst}): {shown}{more}"
        )
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
                except ColdpressError as exc:
                    failures.append({"id": rid, "problem": str(exc)})
                    continue
                except Exception as exc:  # noqa: BLE001 - a decoder crash is a failed row, not a crash
                    failures.append({"id": rid, "problem": f"decoding failed unexpectedly ({type(exc).__name__}: {exc})"})
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
