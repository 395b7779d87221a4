"""RestoreImages: read the rows of the wanted ids and decode them into files, on every worker."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam

from coldpress.defaults import DEFAULT_RESTORE_FORMAT
from coldpress.transforms.archive import open_archive
from coldpress.transforms.plan import join_destination, restore_failure
from coldpress.transforms.records import decoder_fields, restore_record, restored_names
from coldpress.transforms.schema import ROW_GROUP_ROWS
from coldpress.transforms.faults import raise_if_environmental
from coldpress.transforms.sources import filesystem_for
from coldpress.pipelines.beam.options import RESTORED, FAILED, graph_storage_options


class _PlanRestore(beam.DoFn):
    """archive -> batches of wanted ids (about one row group each) with their file names."""

    def __init__(self, ids: list[str] | None, fmt: str, storage_options: Mapping[str, Any] | None) -> None:
        self._ids, self._fmt, self._storage_options = ids, fmt, dict(storage_options or {}) or None

    def process(self, archive: str):
        fs, _ = filesystem_for(archive, self._storage_options)
        if self._ids is None:
            wanted = sorted(set(open_archive(archive, filesystem=fs).read(columns=["id"]).column("id").to_pylist()))
        else:
            wanted = sorted(set(self._ids))
        names = restored_names(wanted, self._fmt)
        for start in range(0, len(wanted), ROW_GROUP_ROWS):
            chunk = wanted[start:start + ROW_GROUP_ROWS]
            yield {rid: names[rid] for rid in chunk}


class _ReadRows(beam.DoFn):
    """{id: file name} -> (archive row, file name) for each id; reads only the row groups holding them."""

    def __init__(self, archive: str, storage_options: Mapping[str, Any] | None) -> None:
        self._archive, self._storage_options = archive, dict(storage_options or {}) or None
        self._opened = None

    def process(self, names: dict[str, str]):
        if self._opened is None:
            fs, _ = filesystem_for(self._archive, self._storage_options)
            self._opened = open_archive(self._archive, filesystem=fs)
        for row in self._opened.read(ids=sorted(names)).to_pylist():
            yield row, names[row["id"]]


class _DecodeAndWrite(beam.DoFn):
    """(row, name) -> (id, path written); a row that does not decode leaves as (id, reason) on ``failed``."""

    def __init__(self, dst: str, fmt: str, storage_options: Mapping[str, Any] | None,
                 region: Mapping[str, Any] | None = None, decoder: Mapping[str, Any] | None = None) -> None:
        self._dst, self._fmt, self._storage_options = dst, fmt, dict(storage_options or {}) or None
        self._region = dict(region) if region else None
        self._decoder = decoder_fields(decoder)

    def restore_row(self, row: Mapping[str, Any], target: str) -> str:
        """Decode ``row`` (only the region of a raster with a region) and write it at ``target``; the
        path written. The one place where a Beam worker turns an archive row into a file (the codecs
        come from the registry's cache)."""
        return restore_record(row, target, self._fmt, self._storage_options, region=self._region,
                              decoder=self._decoder)

    def process(self, item: tuple[Mapping[str, Any], str]):
        row, name = item
        rid = row["id"]
        try:
            target = self.restore_row(row, join_destination(self._dst, name))
        except Exception as exc:  # noqa: BLE001 - sorted below: a bad row is reported, a bad destination stops
            reason = restore_failure(exc)
            if reason is None:  # the destination or the environment, not the row: fail the job
                raise_if_environmental(exc, f"restoring {rid!r} into {self._dst}")
                raise
            yield beam.pvalue.TaggedOutput(FAILED, (rid, reason))
            return
        yield rid, target


class RestoreImages(beam.PTransform):
    """Decode images of ``archive`` into files under ``dst``: outputs ``restored`` (id, path) and
    ``failed`` (id, reason).

    ``ids`` None restores every row; ``region`` ({"window": ...} or {"bbox": ..., "bbox_crs": ...}, as
    for ``restore_local``) restores only that part of each raster. Files are named as by the local engine
    (``records.restored_names``). The ids are split into batches of about one row group; each batch
    is read by one worker (only the row groups holding its ids), and its rows are redistributed so
    that decoding runs on every worker.
    """

    def __init__(self, archive: str, ids: Iterable[str] | None, dst: str, *, fmt: str = DEFAULT_RESTORE_FORMAT,
                 storage_options: Mapping[str, Any] | None = None, region: Mapping[str, Any] | None = None,
                 decoder: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._region = dict(region) if region else None
        self._decoder = decoder_fields(decoder)
        if isinstance(ids, str):
            raise TypeError("ids must be a list of ids, not a single string")
        self._archive, self._dst, self._fmt = str(archive), str(dst), fmt
        self._ids = None if ids is None else sorted(set(ids))
        self._storage_options = graph_storage_options(storage_options)

    def expand(self, pbegin):
        return (pbegin
                | "Name the archive" >> beam.Create([self._archive])
                | "Batch the wanted ids by row group" >> beam.ParDo(_PlanRestore(self._ids, self._fmt, self._storage_options))
                | "Spread the batches" >> beam.Reshuffle()
                | "Read their rows" >> beam.ParDo(_ReadRows(self._archive, self._storage_options))
                | "Spread the rows" >> beam.Reshuffle()
                | "Decode and write each image" >> beam.ParDo(
                    _DecodeAndWrite(self._dst, self._fmt, self._storage_options, self._region, self._decoder)
                ).with_outputs(FAILED, main=RESTORED))
