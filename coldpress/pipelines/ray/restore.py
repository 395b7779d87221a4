"""The Ray engine's restore: read tasks that fetch the rows of a few ids, decoder actors, ``restore_ray``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from coldpress.defaults import DEFAULT_RESTORE_FORMAT
from coldpress.errors import ColdpressError
from coldpress.transforms.archive import open_archive
from coldpress.transforms.plan import join_destination, restore_failure, restore_failures_error
from coldpress.transforms.records import (
    decode_region_record,
    decoder_fields,
    raster_file_bytes,
    restore_record,
    restored_names,
)
from coldpress.transforms.faults import environment_cause
from coldpress.transforms.sources import filesystem_for
from coldpress.pipelines.ray.cluster import (DEFAULT_BATCH_SIZE, IO_TASK_CONCURRENCY, RESTORE_READ_ROWS,
    IO_TASK_CPUS, connect, actor_resources, _configure, _job_error, _threads_for, log)


def archive_codecs(arch: Any) -> list[str]:
    """The codec names an archive's runs used (from its manifest)."""
    manifest = arch.manifest or {}
    names = {manifest.get("codec")} | {r.get("codec") for r in manifest.get("runs", []) if isinstance(r, dict)}
    return sorted(n for n in names if isinstance(n, str) and n)


def _warm(codecs: Iterable[str]) -> None:
    """Load the codecs an archive uses (decode_bitstream then finds them in the registry's cache)."""
    from coldpress.codec import get_codec

    for name in codecs:
        try:
            get_codec(name)
        except Exception as exc:  # noqa: BLE001 - the rows that need it fail with the reason
            log.warning("could not load codec %s: %s", name, exc)


def _read_rows(batch: pa.Table, archive: str, storage_options: dict[str, Any] | None) -> pa.Table:
    """Restore read stage: the archive rows of the batch's ids (only their row groups), with their names."""
    names = dict(zip(batch.column("id").to_pylist(), batch.column("name").to_pylist()))
    fs, _ = filesystem_for(archive, storage_options)
    table = open_archive(archive, filesystem=fs).read(ids=list(names))
    return table.append_column("name", pa.array([names[i] for i in table.column("id").to_pylist()], pa.string()))


class RowRestorer:
    """What every Ray restore worker holds (the restore job's decoder actors and the service's
    decoders): the archive's codecs, loaded once with the worker's torch threads. It is the one place
    where a Ray worker turns an archive row into a file, file bytes or pixels."""

    def __init__(self, codecs: Iterable[str], cpus: float) -> None:
        _warm(codecs)  # torch is loaded only when one of them needs it
        _threads_for(cpus)

    def to_file(self, row: Mapping[str, Any], target: str, fmt: str, storage_options: dict[str, Any] | None,
                region: Mapping[str, Any] | None = None, decoder: Mapping[str, Any] | None = None) -> str:
        """Decode ``row`` (only ``region`` of a raster with a region; photos through ``decoder``, a
        ``DecoderChoice``'s fields) and write it at ``target`` (``records.restore_record``); the path written."""
        return restore_record(row, target, fmt, storage_options, region=region, decoder=decoder)

    def to_pixels(self, row: Mapping[str, Any], region: Mapping[str, Any] | None = None,
                  decoder: Mapping[str, Any] | None = None) -> Any:
        """The decoded pixels of ``row`` (only ``region`` of a raster with a region; through ``decoder``)."""
        return decode_region_record(row, region, decoder)

    def to_file_bytes(self, row: Mapping[str, Any], fmt: str, region: Mapping[str, Any] | None = None
                      ) -> tuple[str, bytes]:
        """A raster row as the bytes of a ``fmt`` file (a COG by default): (extension, bytes)."""
        return raster_file_bytes(row, fmt, region)


class _Decoder:
    """Restore stage: decode rows and write their files; a row that fails is reported, not raised."""

    def __init__(self, dst: str, fmt: str, storage_options: dict[str, Any] | None, codecs: list[str],
                 cpus: float, region: Mapping[str, Any] | None = None, decoder: Mapping[str, Any] | None = None
                 ) -> None:
        self.restorer = RowRestorer(codecs, cpus)
        self.dst, self.fmt, self.storage_options, self.region = dst, fmt, storage_options, region
        self.decoder = decoder

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list] = {"id": [], "path": [], "error": [], "fatal": []}
        for row in batch.to_pylist():
            path = error = fatal = None
            try:
                path = self.restorer.to_file(row, join_destination(self.dst, row["name"]), self.fmt,
                                             self.storage_options, region=self.region, decoder=self.decoder)
            except Exception as exc:  # noqa: BLE001 - classified: a bad row, or a bad destination
                reason = restore_failure(exc)
                if reason is None:  # the destination or the environment (a full disk, a lost GPU): stop
                    fatal = environment_cause(exc) or f"{type(exc).__name__}: {exc}"
                else:
                    error = reason
            out["id"].append(row["id"])
            out["path"].append(path)
            out["error"].append(error)
            out["fatal"].append(fatal)
        return pa.table(out, schema=pa.schema([(k, pa.string()) for k in out]))


def _wanted_ids(arch: Any, ids: Iterable[str] | None) -> list[str]:
    if ids is None:  # shard order: consecutive ids share row groups
        return list(dict.fromkeys(arch.read(columns=["id"]).column("id").to_pylist()))
    if isinstance(ids, str):
        raise TypeError("ids must be a list of ids, not a single string")
    wanted = sorted(set(ids))
    arch.read(ids=wanted, columns=["id"])  # ArchiveError listing absent ids, before anything is written
    return wanted


def restore_ray(
    archive: str,
    dst: str,
    *,
    ids: Iterable[str] | None = None,
    fmt: str = DEFAULT_RESTORE_FORMAT,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    address: str | None = None,
    num_actors: int | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float | None = None,
    batch_size: int | None = None,
    region: Mapping[str, Any] | None = None,
    decoder: Mapping[str, Any] | None = None,
) -> list[str]:
    """Decode images of ``archive`` into files under ``dst`` on Ray; return the paths written, sorted by id.

    Same contract as ``restore_local`` (ids or all, names from ``restored_names``, failures listed
    in one ArchiveError after the others are written, ``region`` of each raster only, photos through
    ``decoder``: a ``DecoderChoice`` or its fields), with the engine options of ``encode_ray``.
    """
    archive, dst = str(archive), str(dst)
    options = dict(storage_options or {}) or None
    fs, _ = filesystem_for(archive, options)
    arch = open_archive(archive, filesystem=fs)
    wanted = _wanted_ids(arch, ids)
    names = restored_names(sorted(wanted), fmt)
    if not wanted:
        return []
    connect(address, quiet=not progress)
    _configure(progress)
    actors, gpus, cpus = actor_resources(num_actors, gpus_per_actor, cpus_per_actor,
                                         uses_gpu="learned" in archive_codecs(arch))
    batch = int(batch_size or DEFAULT_BATCH_SIZE)
    items = [{"id": rid, "name": names[rid]} for rid in wanted]
    ds = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / RESTORE_READ_ROWS)))
    ds = ds.map_batches(_read_rows, fn_kwargs={"archive": archive, "storage_options": options},
                        batch_size=RESTORE_READ_ROWS, batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
                        concurrency=IO_TASK_CONCURRENCY)
    ds = ds.map_batches(
        _Decoder,
        fn_constructor_kwargs={"dst": dst, "fmt": fmt, "storage_options": options, "codecs": archive_codecs(arch),
                               "cpus": cpus, "region": dict(region) if region else None,
                               "decoder": decoder_fields(decoder)},
        batch_size=batch, batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
        num_cpus=cpus, num_gpus=gpus,
    )
    written: list[tuple[str, str]] = []
    failures: list[tuple[str, str]] = []
    fatal: list[str] = []
    try:
        for row in ds.iter_rows():
            if row["fatal"]:
                fatal.append(f"{row['id']}: {row['fatal']}")
            elif row["error"]:
                failures.append((row["id"], row["error"]))
            else:
                written.append((row["id"], row["path"]))
    except Exception as exc:  # noqa: BLE001
        raise _job_error("restore", exc, "the files written so far are complete; run the command again") from exc
    if fatal:
        raise ColdpressError(
            f"could not write restored images under {dst} ({fatal[0]}); check that the destination exists "
            "or can be created and that this job may write there, then run the restore again"
        )
    if failures:
        raise restore_failures_error(sorted(failures), len(wanted), len(written), archive, dst)
    return [path for _, path in sorted(written)]
