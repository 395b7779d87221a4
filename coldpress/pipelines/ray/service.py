"""The Ray engine's warm restore service: a named pool of decoder actors for one archive."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import ray

from coldpress.defaults import DEFAULT_RESTORE_FORMAT
from coldpress.errors import ArchiveError, ColdpressError
from coldpress.transforms.archive import open_archive
from coldpress.transforms.plan import join_destination, restore_failure, restore_failures_error
from coldpress.transforms.records import (
    decoder_fields,
    decoder_provenance,
    is_raster_row,
    restored_names,
    with_extension,
    write_file_bytes,
    write_image,
)
from coldpress.transforms.sources import filesystem_for
from coldpress.pipelines.ray.restore import RowRestorer, archive_codecs
from coldpress.pipelines.ray.cluster import SERVICE_NAMESPACE, connect, actor_resources, _job_error


def service_name(archive: str) -> str:
    """The default name of the restore service of ``archive`` (stable for the same path or URL)."""
    text = str(archive).rstrip("/")
    if "://" not in text:
        text = os.path.abspath(text)
    return "coldpress-restore-" + hashlib.sha256(text.encode()).hexdigest()[:12]


class _ServiceDecoder:
    """One warm decoder of the service: the codecs loaded and the archive open (footers cached)."""

    def __init__(self, archive: str, storage_options: dict[str, Any] | None, cpus: float) -> None:
        self.archive, self.storage_options = archive, storage_options
        self._open()
        self.restorer = RowRestorer(archive_codecs(self.arch), cpus)

    def _open(self) -> None:
        fs, _ = filesystem_for(self.archive, self.storage_options)
        self.arch = open_archive(self.archive, filesystem=fs)

    def ready(self) -> bool:
        return True

    def restore(self, ids: list[str], fmt: str | None = None, region: dict[str, Any] | None = None,
                decoder: dict[str, Any] | None = None) -> dict[str, tuple[str, Any]]:
        """id -> ("ok", pixels) | ("file", (extension, bytes)) | ("error", reason) | ("missing", reason).

        Rasters asked for in a file format ``fmt`` come back as that file's bytes (a COG by default);
        ``region`` restores only a window or box of each raster, decoding only the tiles it overlaps."""
        table = self.arch.read(ids=ids, missing="ignore")
        if table.num_rows < len(set(ids)):  # the archive may have grown since the service started
            self._open()
            table = self.arch.read(ids=ids, missing="ignore")
        out: dict[str, tuple[str, Any]] = {}
        for row in table.to_pylist():
            try:
                if fmt is not None and is_raster_row(row):
                    out[row["id"]] = ("file", self.restorer.to_file_bytes(row, fmt, region))
                else:
                    out[row["id"]] = ("ok", self.restorer.to_pixels(row, region, decoder))
            except Exception as exc:  # noqa: BLE001
                out[row["id"]] = ("error", restore_failure(exc) or f"{type(exc).__name__}: {exc}")
        for rid in ids:
            out.setdefault(rid, ("missing", f"not in the archive at {self.archive}"))
        return out


class _ServiceRouter:
    """The named entry point of a service: spreads requests over its decoders."""

    def __init__(self, archive: str, storage_options: dict[str, Any] | None, num_decoders: int,
                 cpus_per_decoder: float, gpus_per_decoder: float, detached: bool) -> None:
        remote = ray.remote(_ServiceDecoder).options(
            num_cpus=cpus_per_decoder, num_gpus=gpus_per_decoder, max_restarts=-1, max_task_retries=-1,
            lifetime="detached" if detached else None,
        )
        self.archive = archive
        self.decoders = [remote.remote(archive, storage_options, cpus_per_decoder) for _ in range(num_decoders)]
        self.settings = {"archive": archive, "decoders": num_decoders, "cpus_per_decoder": cpus_per_decoder,
                         "gpus_per_decoder": gpus_per_decoder, "detached": detached}
        self._next = 0

    async def ready(self) -> dict[str, Any]:
        await asyncio.gather(*(d.ready.remote() for d in self.decoders))
        return self.settings

    async def restore(self, ids: list[str], fmt: str | None = None, region: dict[str, Any] | None = None,
                      decoder: dict[str, Any] | None = None) -> dict[str, tuple[str, Any]]:
        ids = sorted(set(ids))
        k = min(len(self.decoders), max(1, len(ids)))
        chunks = [ids[i * len(ids) // k:(i + 1) * len(ids) // k] for i in range(k)]  # contiguous: shared row groups
        start, self._next = self._next, (self._next + k) % len(self.decoders)
        refs = [self.decoders[(start + i) % len(self.decoders)].restore.remote(c, fmt, region, decoder)
                for i, c in enumerate(chunks) if c]
        out: dict[str, tuple[str, Any]] = {}
        for part in await asyncio.gather(*refs):
            out.update(part)
        return out

    def shutdown(self) -> None:
        for d in self.decoders:
            ray.kill(d, no_restart=True)


class RestoreService:
    """Client of a warm restore service: a named pool of decoder actors for one archive on Ray.

    ``RestoreService.start(archive)`` starts it (or finds the running one of that name);
    ``RestoreService.connect(archive)`` finds a running one. ``restore_pixels(ids)`` returns decoded
    arrays; ``restore(ids, dst, fmt)`` writes files under ``dst`` (named like every engine's, written
    by this process, so ``dst`` is local to the caller). ``shutdown()`` stops the actors. A service
    started with ``detached=True`` outlives the process that started it (the CLI's ``--service``).
    """

    def __init__(self, router: Any, name: str, archive: str) -> None:
        self._router, self.name, self.archive = router, name, archive

    @classmethod
    def start(cls, archive: str, *, name: str | None = None, storage_options: Mapping[str, Any] | None = None,
              num_decoders: int = 1, cpus_per_decoder: float | None = None, gpus_per_decoder: float | None = None,
              detached: bool = False, address: str | None = None) -> RestoreService:
        archive = str(archive)
        options = dict(storage_options or {}) or None
        fs, _ = filesystem_for(archive, options)
        arch = open_archive(archive, filesystem=fs)  # a missing archive fails here, with the reason
        connect(address, quiet=True)
        num_decoders, gpus_per_decoder, cpus_per_decoder = actor_resources(
            num_decoders, gpus_per_decoder, cpus_per_decoder, uses_gpu="learned" in archive_codecs(arch))
        name = name or service_name(archive)
        router = ray.remote(_ServiceRouter).options(
            name=name, namespace=SERVICE_NAMESPACE, get_if_exists=True, num_cpus=0, max_restarts=-1,
            max_concurrency=64, lifetime="detached" if detached else None,
        ).remote(archive, options, num_decoders, cpus_per_decoder, gpus_per_decoder, detached)
        try:
            ray.get(router.ready.remote())
        except Exception as exc:  # noqa: BLE001
            raise _job_error("restore service", exc, "check the archive and the cluster's resources") from exc
        return cls(router, name, archive)

    @classmethod
    def connect(cls, archive: str, *, name: str | None = None, address: str | None = None) -> RestoreService:
        connect(address, quiet=True)
        name = name or service_name(str(archive))
        try:
            router = ray.get_actor(name, namespace=SERVICE_NAMESPACE)
        except ValueError:
            raise ColdpressError(
                f"no restore service {name!r} runs for {archive} on this Ray cluster; start one with "
                "RestoreService.start(archive) or `coldpress restore ARCHIVE DST --id ID --service`"
            ) from None
        return cls(router, name, str(archive))

    def info(self) -> dict[str, Any]:
        return ray.get(self._router.ready.remote())

    def _results(self, ids: Iterable[str], fmt: str | None = None, region: Mapping[str, Any] | None = None,
                 decoder: Mapping[str, Any] | None = None) -> tuple[list[str], dict[str, tuple[str, Any]]]:
        if isinstance(ids, str):
            raise TypeError("ids must be a list of ids, not a single string")
        wanted = sorted(set(ids))
        region = dict(region) if region else None
        decoder = decoder_fields(decoder)
        results = ray.get(self._router.restore.remote(wanted, fmt, region, decoder)) if wanted else {}
        missing = [rid for rid in wanted if results[rid][0] == "missing"]
        if missing:
            shown = ", ".join(map(repr, missing[:20])) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            raise ArchiveError(
                f"{len(missing)} of {len(wanted)} requested id(s) are not in the archive at {self.archive}: "
                f"{shown}. Check the spelling, whether the input was rejected, or list the ids with "
                "`coldpress inspect --ids`."
            )
        return wanted, results

    def restore_pixels(self, ids: Iterable[str], region: Mapping[str, Any] | None = None,
                       decoder: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Decoded images by id (rasters: (H, W, bands) in their type; only ``region`` of each with a
        region; photos through ``decoder``, a ``DecoderChoice`` or its fields); ArchiveError for absent
        ids or rows that do not decode."""
        wanted, results = self._results(ids, None, region, decoder)
        failures = [(rid, results[rid][1]) for rid in wanted if results[rid][0] == "error"]
        if failures:
            raise restore_failures_error(failures, len(wanted), len(wanted) - len(failures), self.archive, "memory")
        return {rid: results[rid][1] for rid in wanted}

    def restore(self, ids: Iterable[str], dst: str, fmt: str = DEFAULT_RESTORE_FORMAT,
                storage_options: Mapping[str, Any] | None = None, region: Mapping[str, Any] | None = None,
                decoder: Mapping[str, Any] | None = None) -> list[str]:
        """Write the images of ``ids`` under ``dst``; return the paths, sorted by id. Rasters are
        written as ``records.restore_record`` writes them (a COG by default), only ``region`` of
        each with a region ({"window": ...} or {"bbox": ..., "bbox_crs": ...}); photos through ``decoder``,
        recorded in their files."""
        dst = str(dst)
        wanted, results = self._results(ids, fmt, region, decoder)
        provenance = decoder_provenance(decoder)
        names = restored_names(wanted, fmt)
        written, failures = [], []
        for rid in wanted:
            status, value = results[rid]
            if status not in ("ok", "file"):
                failures.append((rid, value))
                continue
            target = join_destination(dst, names[rid])
            if status == "file":
                ext, data = value
                target = with_extension(target, ext)
                write_file_bytes(data, target, dict(storage_options or {}) or None)
            else:
                write_image(value, target, fmt, dict(storage_options or {}) or None, provenance)
            written.append(target)
        if failures:
            raise restore_failures_error(failures, len(wanted), len(written), self.archive, dst)
        return written

    def shutdown(self) -> None:
        """Stop the decoders and the router."""
        try:
            ray.get(self._router.shutdown.remote())
        finally:
            ray.kill(self._router, no_restart=True)

    def __enter__(self) -> RestoreService:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
