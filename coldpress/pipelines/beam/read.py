"""ReadImages: the sources of an encode (a folder or URL listed in the pipeline, or an input listing)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam

from coldpress.transforms.archive.layout import remove_run_folder
from coldpress.transforms.records import unreadable_row
from coldpress.transforms.sources import filesystem_for, list_sources, read_source
from coldpress.pipelines.beam.options import IMAGES, REJECTED, graph_storage_options

#: Planned inputs per part file of a run's input listing (``write_listing``).
LISTING_PART_ROWS = 10_000
#: Folder of the archive where a running encode keeps its input listing (removed when it ends).
LISTING_DIR = "_inputs"
#: Most consecutive inputs of a listing that travel to a worker together (``listing_chunk``).
LISTING_CHUNK_MAX = 256


class _ListSources(beam.DoFn):
    """SRC -> its (uri, key) pairs, sorted (``sources.list_sources``: hidden files left out)."""

    def __init__(self, storage_options: Mapping[str, Any] | None) -> None:
        self._storage_options = dict(storage_options or {}) or None

    def process(self, src: str):
        yield from list_sources(src, self._storage_options)


class _ReadSource(beam.DoFn):
    """(uri, key) -> (key, uri, bytes or SourceFile); a source that cannot be read leaves as a rejected row.

    As in the local and Ray engines (``sources.read_source``), a raster file of
    ``sources.LARGE_SOURCE_BYTES`` or more is not read into the element: its sha256 is streamed here
    (8 MB at a time) and the element carries a ``SourceFile`` (its URI, size, sha256, first 64
    bytes and the job's credential-free storage options), which the encode step opens with GDAL
    and reads window by window. Other files travel as their bytes."""

    def __init__(self, storage_options: Mapping[str, Any] | None) -> None:
        self._storage_options = dict(storage_options or {}) or None

    def process(self, source: tuple[str, str]):
        uri, key = source
        try:
            data = read_source(uri, self._storage_options)
        except Exception as exc:  # noqa: BLE001 - an unreadable input is rejected with the reason
            yield beam.pvalue.TaggedOutput(REJECTED, unreadable_row(key, uri, exc))
            return
        yield key, uri, data


class InputListing(tuple):
    """The part files (URLs or paths) of a run's input listing, written by ``write_listing``: one
    JSON ``[uri, key]`` per line. ``ReadImages`` reads them inside the pipeline, so the job graph
    carries the part names (one per LISTING_PART_ROWS inputs), never the inputs themselves.

    ``chunk``: how many consecutive inputs travel to a worker together (``listing_chunk``), so that
    each worker encodes runs of consecutive ids and the rows it stages (``WriteArchive``) hold
    narrow id ranges that each shard's writer reads with few row groups."""

    def __new__(cls, parts=(), chunk: int = 1):
        listing = super().__new__(cls, parts)
        listing.chunk = max(1, int(chunk))
        return listing

    def __reduce__(self):
        return (InputListing, (tuple(self), self.chunk))


def listing_chunk(inputs: int) -> int:
    """Inputs that travel together when a run has ``inputs``: about 64 chunks or more (so that the
    workers share the work evenly, also when a few large files dominate), at most LISTING_CHUNK_MAX."""
    return max(1, min(LISTING_CHUNK_MAX, inputs // 64))


def write_listing(sources: Sequence[tuple[str, str]], dst: str, storage_options: Mapping[str, Any] | None = None,
                  *, part_rows: int = LISTING_PART_ROWS) -> tuple[InputListing, str]:
    """Write ``sources`` as the input listing of one run under ``dst/_inputs/<run>/``, where every
    worker of the job reads the archive (any fsspec filesystem); returns (the listing, its folder,
    to remove when the run ends). ``_inputs`` starts with ``_``: Parquet tools skip it."""
    fs, root = filesystem_for(str(dst), dict(storage_options or {}) or None)
    folder = f"{root.rstrip('/')}/{LISTING_DIR}/{uuid.uuid4().hex}"
    fs.makedirs(folder, exist_ok=True)
    parts = []
    for n, start in enumerate(range(0, len(sources), part_rows)):
        path = f"{folder}/part-{n:05d}.jsonl"
        text = "".join(json.dumps([uri, key]) + "\n" for uri, key in sources[start:start + part_rows])
        with fs.open(path, "wb") as f:
            f.write(text.encode())
        parts.append(fs.unstrip_protocol(path) if "://" in str(dst) else path)
    return InputListing(parts, listing_chunk(len(sources))), folder


def remove_listing(folder: str, dst: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove a run's listing folder (and ``_inputs`` when no other run's listing is left)."""
    fs, _ = filesystem_for(str(dst), dict(storage_options or {}) or None)
    remove_run_folder(fs, folder)


class _ReadListing(beam.DoFn):
    """A part file of an InputListing -> its (uri, key) pairs, in lists of ``chunk`` consecutive ones."""

    def __init__(self, storage_options: Mapping[str, Any] | None, chunk: int = 1) -> None:
        self._storage_options = dict(storage_options or {}) or None
        self._chunk = max(1, int(chunk))

    def process(self, part: str):
        fs, path = filesystem_for(part, self._storage_options)
        chunk: list[tuple[str, str]] = []
        with fs.open(path, "rb") as f:
            for line in f:
                if line.strip():
                    uri, key = json.loads(line)
                    chunk.append((str(uri), str(key)))
                    if len(chunk) >= self._chunk:
                        yield chunk
                        chunk = []
        if chunk:
            yield chunk


class ReadImages(beam.PTransform):
    """Read every file under a source: outputs ``images`` ((key, uri, bytes), or (key, uri,
    ``sources.SourceFile``) for a large raster, whose pixels the encode step reads by window) and
    ``rejected`` rows.

    ``src`` is a folder, a file or an fsspec URL (``s3://bucket/photos``), listed inside the
    pipeline with ``sources.list_sources``; an ``InputListing`` (``write_listing``: the launcher's
    plan in files that the pipeline reads, what ``encode_beam`` uses); or the ``(uri, key)`` pairs
    of a plan (``plan_encode(...).todo``), which then travel in the job graph (small jobs only:
    about 100 bytes each, and Dataflow refuses graphs over 10 MB). ``storage_options`` go to
    fsspec (``{"client_kwargs": {"endpoint_url": ...}}``; S3 endpoints also come from
    ``COLDPRESS_S3_ENDPOINT_URL``/``AWS_ENDPOINT_URL`` on the workers). Files are not filtered by
    type: what is not an image is rejected by the encoder, with the reason.
    """

    def __init__(self, src: str | Sequence[tuple[str, str]], storage_options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if isinstance(src, (str, InputListing)):
            self._src = src
        else:
            self._src = [(str(u), str(k)) for u, k in src]
        self._storage_options = graph_storage_options(storage_options)

    def expand(self, pbegin):
        if isinstance(self._src, InputListing):  # consecutive inputs travel together (InputListing.chunk)
            sources = (pbegin
                       | "Name the listing's parts" >> beam.Create(list(self._src), reshuffle=False)
                       | "Read the listing in chunks" >> beam.ParDo(_ReadListing(self._storage_options, self._src.chunk))
                       | "Spread the chunks over the workers" >> beam.Reshuffle()
                       | "Take each chunk's files" >> beam.FlatMap(lambda chunk: chunk))
        else:
            if isinstance(self._src, str):
                sources = (pbegin
                           | "Name the source" >> beam.Create([self._src])
                           | "List its files" >> beam.ParDo(_ListSources(self._storage_options)))
            else:
                sources = pbegin | "Take the planned files" >> beam.Create(self._src, reshuffle=False)
            sources = sources | "Spread the reads over the workers" >> beam.Reshuffle()
        return sources | "Read each file" >> beam.ParDo(_ReadSource(self._storage_options)).with_outputs(
            REJECTED, main=IMAGES)
