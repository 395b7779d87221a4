"""``coldpress bench rd`` on a folder of geospatial rasters: coldpress's raster package against the
formats remote sensing archives in, JPEG 2000 and COG with WebP, at the same bytes, all bands.

For every raster, target and coldpress codec (``--codecs``; on rasters the default is ``learned``),
the raster is coded as ``coldpress encode`` codes it (``transforms.raster.encode_raster``: tiles,
band groups, range mapping, masks) and decoded. Each anchor then gets at most the bytes of the
first codec's package for that raster and target (the target's bytes, ``bpp * W * H / 8``, where
that codec could not reach it), and the highest quality that fits:

- ``jp2``: GDAL's JP2OpenJPEG driver, all bands in one codestream in their own data type (16-bit
  stays 16-bit), irreversible wavelet, no colour transform (``YCBCR420=NO``), ``QUALITY``
  bisected. Written as a bare codestream (``CODEC=J2K``) without georeferencing: the bytes are the
  pixels' only, as coldpress's georeferencing lives in the row's metadata, not its package.
- ``cog-webp``: GDAL's COG driver with ``COMPRESS=WEBP`` (512 px blocks), one ``QUALITY`` bisected
  for all files. GDAL's WebP takes only 3-band (RGB) or 4-band (RGBA, the fourth band coded
  losslessly as alpha) 8-bit rasters, so every raster is written as a GDAL user writes it for WebP:
  bands mapped to 8 bits over their valid range (``gdal_translate -scale min max 0 255 -ot Byte``;
  uint8 bands as they are) and one COG per group of three bands (1-3, 4-6, ...; a last one or two
  bands repeated to three), the bytes of all files counted; restored through the inverse mapping.

Scores are those of ``coldpress inspect``: per band, PSNR over valid pixels with peak 255 for uint8
bands and the band's valid range (max - min) otherwise, and the PSNR of the mean normalised MSE over
the bands (``psnr``). Tables, Bjøntegaard deltas (against ``jp2``, then ``cog-webp``) and the plot
go to ``--out`` as for photos, with ``psnr_per_band``, ``bytes`` and ``budget_bytes`` per row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

#: The anchors, each coded at (at most) the bytes of the first coldpress codec.
RASTER_ANCHORS = ("jp2", "cog-webp")
#: Codecs benchmarked on a raster folder when --codecs is not given.
DEFAULT_RASTER_CODECS = ("learned",)
RASTER_FIELDS = (
    "image", "width", "height", "bands", "dtype", "codec", "target_bpp", "status", "budget_bytes", "bytes",
    "achieved_bpp", "psnr", "psnr_per_band", "rmse_per_band", "ms_ssim", "encode_s", "decode_s", "encode_mp_s",
    "decode_mp_s", "needed_bpp", "params", "message",
)


# -- the folder -----------------------------------------------------------------------------------
def raster_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(rasters, other files) of a local folder, sorted by name: a raster is what ``coldpress encode``
    archives as one (``transforms.raster.is_raster``, or a file Pillow cannot read and GDAL can)."""
    from coldpress.transforms import raster
    from coldpress.transforms.sources import IMAGE_SUFFIXES

    suffixes = tuple(dict.fromkeys(IMAGE_SUFFIXES + raster.RASTER_SUFFIXES))
    rasters, others = [], []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.suffix.lower() not in suffixes:
            continue
        with open(p, "rb") as f:
            head = f.read(16)
        if raster.is_photo_format(head) or not raster.looks_like_raster_file(head):
            others.append(p)
            continue
        data = p.read_bytes()
        rasters.append(p) if raster.is_raster(data) or _pillow_cannot(data) and raster.gdal_opens(data) else others.append(p)
    return rasters, others


def _pillow_cannot(data: bytes) -> bool:
    from coldpress.errors import InputRejected
    from coldpress.transforms.read import decode_input

    try:
        decode_input(data, "bench")
    except InputRejected:
        return True
    return False


# -- scoring --------------------------------------------------------------------------------------
class Source:
    """One raster read whole (benchmark rasters are small): bands (b, h, w), band masks, peaks."""

    def __init__(self, path: Path):
        import rasterio

        with rasterio.open(path) as ds:
            self.data = ds.read()
            self.valid = ds.read_masks() > 0
            self.dtype = np.dtype(ds.dtypes[0])
        if np.issubdtype(self.dtype, np.floating):
            self.valid &= np.isfinite(self.data)
        self.name = path.name
        self.bytes = path.read_bytes()
        self.count, self.height, self.width = self.data.shape
        self.lo, self.hi = [], []
        for b in range(self.count):
            v = self.data[b][self.valid[b]]
            self.lo.append(float(v.min()) if v.size else 0.0)
            self.hi.append(float(v.max()) if v.size else 0.0)

    def peak(self, b: int) -> float:
        if self.dtype == np.uint8:
            return 255.0
        return self.hi[b] - self.lo[b] if self.hi[b] > self.lo[b] else 1.0

    def score(self, decoded: np.ndarray) -> dict[str, Any]:
        """Per-band PSNR and RMSE of ``decoded`` (b, h, w), and the PSNR of the mean normalised MSE."""
        from coldpress.metrics import PSNR_CAP_DB, psnr_from_mse

        psnr_b, rmse_b, norm = [], [], []
        for b in range(self.count):
            v = self.valid[b]
            d = self.data[b][v].astype(np.float64) - decoded[b][v].astype(np.float64)
            mse = float(np.mean(d * d)) if d.size else 0.0
            psnr_b.append(round(psnr_from_mse(mse, self.peak(b)), 4))
            rmse_b.append(round(math.sqrt(mse), 6))
            norm.append(mse / self.peak(b) ** 2)
        mean = float(np.mean(norm))
        return {"psnr": PSNR_CAP_DB if mean == 0 else min(PSNR_CAP_DB, -10 * math.log10(mean)),
                "psnr_per_band": psnr_b, "rmse_per_band": rmse_b}


def _row(src: Source, codec: str, bpp: float, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {f: None for f in RASTER_FIELDS}
    row.update(image=src.name, width=src.width, height=src.height, bands=src.count, dtype=src.dtype.name,
               codec=codec, target_bpp=bpp, params="", message="")
    row.update(values)
    return row


def _finish(row: dict[str, Any], src: Source, nbytes: int, decoded: np.ndarray, encode_s: float,
            decode_s: float) -> dict[str, Any]:
    mp = src.width * src.height / 1e6
    scores = src.score(decoded)
    row.update(status="ok", bytes=nbytes, achieved_bpp=8.0 * nbytes / (src.width * src.height), encode_s=encode_s,
               decode_s=decode_s, encode_mp_s=mp / encode_s if encode_s > 0 else None,
               decode_mp_s=mp / decode_s if decode_s > 0 else None, psnr=scores["psnr"],
               psnr_per_band=json.dumps(scores["psnr_per_band"]), rmse_per_band=json.dumps(scores["rmse_per_band"]))
    return row


# -- coldpress ------------------------------------------------------------------------------------
def measure_coldpress(codec, name: str, src: Source, bpp: float) -> dict[str, Any]:
    """Encode ``src`` as ``coldpress encode`` does at ``bpp`` and decode it; never raises for a codec failure."""
    from coldpress.jobs.bench.rd import timed_encode
    from coldpress.transforms import raster

    row = _row(src, name, bpp, budget_bytes=int(bpp * src.width * src.height / 8))
    enc, encode_s = timed_encode(row, lambda: raster.encode_raster(src.bytes, src.name, codec, bpp))
    if enc is None:
        return row
    start = time.perf_counter()
    decoded = raster.decode_package(enc.package).transpose(2, 0, 1)
    row["params"] = json.dumps({"tiles": len(raster.unpack_package(enc.package).header["tiles"])})
    return _finish(row, src, len(enc.package), decoded, encode_s, time.perf_counter() - start)


# -- anchors --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _ungeoreferenced():
    """The anchors' files carry no georeferencing on purpose (see the module docstring): no warning for it."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def _jp2(src: Source, quality: float) -> bytes:
    from rasterio.io import MemoryFile

    with _ungeoreferenced(), MemoryFile() as mem:
        with mem.open(driver="JP2OpenJPEG", width=src.width, height=src.height, count=src.count,
                      dtype=src.dtype.name, QUALITY=f"{quality:.6f}", REVERSIBLE="NO", YCBCR420="NO", CODEC="J2K",
                      GMLJP2="NO", GeoJP2="NO") as dst:
            dst.write(src.data)
        return mem.read()


def _read_all(data: bytes) -> np.ndarray:
    from rasterio.io import MemoryFile

    with _ungeoreferenced(), MemoryFile(data) as mem:
        with mem.open() as ds:
            return ds.read()


def _webp_groups(src: Source) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    """The 8-bit band groups of three written as COG-WebP files, and each band's (lo, scale)."""
    if src.dtype == np.uint8:
        maps = [(0.0, 1.0)] * src.count
    else:
        maps = [(lo, (hi - lo) / 255.0 if hi > lo else 1.0) for lo, hi in zip(src.lo, src.hi)]
    v8 = [np.clip(np.round((src.data[b].astype(np.float64) - lo) / s), 0, 255).astype(np.uint8)
          for b, (lo, s) in enumerate(maps)]
    groups = []
    for i in range(0, src.count, 3):
        g = v8[i:i + 3]
        groups.append(np.stack(g + [g[-1]] * (3 - len(g))))
    return groups, maps


def _cog_webp(group: np.ndarray, quality: int) -> bytes:
    import rasterio.shutil
    from rasterio.io import MemoryFile

    _, h, w = group.shape
    with _ungeoreferenced(), MemoryFile() as tmp:
        with tmp.open(driver="GTiff", width=w, height=h, count=3, dtype="uint8", photometric="RGB") as dst:
            dst.write(group)
        with MemoryFile() as out:
            rasterio.shutil.copy(tmp.name, out.name, driver="COG", COMPRESS="WEBP", QUALITY=int(quality),
                                 BLOCKSIZE=512, OVERVIEWS="NONE")
            return out.read()


def _highest_fitting(code, lo: float, hi: float, budget: int, steps: int, integer: bool):
    """(quality, bytes) of the highest quality in [lo, hi] whose output fits ``budget`` (bisection on a
    monotonic size), or (None, smallest output's bytes)."""
    smallest = code(lo)
    if len(smallest) > budget:
        return None, smallest
    best_q, best = lo, smallest
    top = code(hi)
    if len(top) <= budget:
        return hi, top
    a, b = lo, hi
    for _ in range(steps):
        mid = (a + b) // 2 if integer else math.sqrt(a * b)
        if integer and mid in (a, b):
            break
        out = code(mid)
        if len(out) <= budget:
            a, best_q, best = mid, mid, out
        else:
            b = mid
    return best_q, best


def measure_jp2(src: Source, bpp: float, budget: int) -> dict[str, Any]:
    row = _row(src, "jp2", bpp, budget_bytes=budget)
    start = time.perf_counter()
    try:
        q, data = _highest_fitting(lambda q: _jp2(src, q), 1e-4, 100.0, budget, 16, integer=False)
    except Exception as exc:  # noqa: BLE001
        row.update(status="error", message=f"JP2OpenJPEG failed: {type(exc).__name__}: {exc}")
        return row
    encode_s = time.perf_counter() - start
    if q is None:
        row.update(status="unreachable", encode_s=encode_s, needed_bpp=8.0 * len(data) / (src.width * src.height),
                   message=f"JP2OpenJPEG's smallest codestream is {len(data)} bytes, above the {budget}-byte budget")
        return row
    row["params"] = json.dumps({"QUALITY": q, "REVERSIBLE": "NO", "YCBCR420": "NO", "CODEC": "J2K"})
    start = time.perf_counter()
    decoded = _read_all(data)
    return _finish(row, src, len(data), decoded, encode_s, time.perf_counter() - start)


def measure_cog_webp(src: Source, bpp: float, budget: int) -> dict[str, Any]:
    row = _row(src, "cog-webp", bpp, budget_bytes=budget)
    start = time.perf_counter()
    groups, maps = _webp_groups(src)
    try:
        q, files = _highest_fitting(lambda q: _Files([_cog_webp(g, q) for g in groups]), 1, 100, budget, 8, integer=True)
    except Exception as exc:  # noqa: BLE001
        row.update(status="error", message=f"GDAL's COG/WebP failed: {type(exc).__name__}: {exc}")
        return row
    encode_s = time.perf_counter() - start
    if q is None:
        row.update(status="unreachable", encode_s=encode_s, needed_bpp=8.0 * len(files) / (src.width * src.height),
                   message=f"COG-WebP at QUALITY=1 takes {len(files)} bytes, above the {budget}-byte budget")
        return row
    row["params"] = json.dumps({"QUALITY": q, "files": len(groups), "map": maps})
    start = time.perf_counter()
    planes = np.concatenate([_read_all(f) for f in files.parts])[:src.count].astype(np.float64)
    decoded = np.stack([lo + planes[b] * s for b, (lo, s) in enumerate(maps)])
    if np.issubdtype(src.dtype, np.integer):
        info = np.iinfo(src.dtype)
        decoded = np.clip(np.round(decoded), info.min, info.max)
    return _finish(row, src, len(files), decoded, encode_s, time.perf_counter() - start)


class _Files:
    """Several files counted as one output (their total bytes)."""

    def __init__(self, parts: list[bytes]):
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)


# -- the benchmark --------------------------------------------------------------------------------
def run_rd_raster(args: argparse.Namespace, folder: Path, rasters: list[Path], others: list[Path],
                  targets: list[float]) -> int:
    import datetime

    from tqdm import tqdm

    from coldpress.errors import ColdpressError
    from coldpress.jobs.bench.common import _device_name, _load_codec, _note, _write_csv
    from coldpress.jobs.bench.rd import BD_FIELDS, SUMMARY_FIELDS, _bd_rows, bjontegaard, plot_rd, summarize
    from coldpress.jobs.cli import say, show_progress
    from coldpress.versions import coldpress_version

    for p in others:
        _note(f"skipping {p.name}: not a raster (photos are benchmarked in a folder of photos)")
    sources, skipped = [], {p.name: "not a raster" for p in others}
    for p in rasters[: args.limit]:
        try:
            sources.append(Source(p))
        except Exception as exc:  # noqa: BLE001 - reported and left out
            skipped[p.name] = f"{type(exc).__name__}: {exc}"
            _note(f"skipping {p.name}: GDAL cannot read its pixels ({exc})")
    if not sources:
        raise ColdpressError(f"none of the {len(rasters)} rasters in {folder} could be read; see the notes above")

    codecs, skipped_codecs = {}, {}
    for name in dict.fromkeys(args.codecs or DEFAULT_RASTER_CODECS):
        if name in RASTER_ANCHORS:
            continue  # always run, at coldpress's bytes
        codec, reason = _load_codec(name, args)
        if codec is None:
            skipped_codecs[name] = reason
            _note(f"{name} skipped: {reason}")
        else:
            codecs[name] = codec
    if not codecs:
        raise ColdpressError("no coldpress codec left to benchmark the rasters with (the anchors are coded at its "
                             "bytes); see the notes above, or pass --codecs webp")
    first = next(iter(codecs))
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(sources) * len(targets) * (len(codecs) + len(RASTER_ANCHORS)), desc="bench rd (rasters)",
              unit="code", disable=not show_progress(args)) as bar:
        for src in sources:
            for target in targets:
                budget = None
                for name, codec in codecs.items():
                    row = measure_coldpress(codec, name, src, target)
                    rows.append(row)
                    if name == first:
                        budget = row["bytes"] if row["status"] == "ok" else row["budget_bytes"]
                    bar.update()
                rows.append(measure_jp2(src, target, budget))
                bar.update()
                rows.append(measure_cog_webp(src, target, budget))
                bar.update()

    names = list(codecs) + list(RASTER_ANCHORS)
    summary = summarize(rows, names, targets)
    bd = bjontegaard(summary, names, anchors=RASTER_ANCHORS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "per_image.csv", RASTER_FIELDS, rows)
    _write_csv(out / "summary.csv", SUMMARY_FIELDS, summary)
    _write_csv(out / "bd.csv", BD_FIELDS, _bd_rows(bd))
    per_band = _per_band_table(rows, first)
    report = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "coldpress_version": coldpress_version(),
        "folder": str(folder.resolve()),
        "kind": "rasters",
        "images": [s.name for s in sources],
        "skipped_images": skipped,
        "targets_bpp": targets,
        "bpp": "bits per spatial pixel, all bands together",
        "anchors_budget": f"the bytes of {first}'s package for the raster and target (the target's bytes where "
                          f"{first} could not reach it)",
        "codecs": {name: codec.describe() for name, codec in codecs.items()},
        "anchors": {"jp2": "GDAL JP2OpenJPEG, all bands, QUALITY bisected, REVERSIBLE=NO, YCBCR420=NO, bare "
                           "codestream (CODEC=J2K, no GeoJP2/GMLJP2 boxes)",
                    "cog-webp": "GDAL COG, COMPRESS=WEBP, BLOCKSIZE=512, one QUALITY bisected; bands mapped to 8 bits "
                                "over their valid range, one file per group of three bands"},
        "skipped_codecs": skipped_codecs,
        "cpu": _device_name(None),
        "learned_device": _device_name(codecs["learned"].device) if "learned" in codecs else None,
        "summary": summary,
        "per_band": per_band,
        "bjontegaard": bd,
    }
    (out / "summary.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    plot_rd(out / "rd.png", summary, names, f"{len(sources)} rasters from {folder.name} (PSNR over all bands)")

    for line in _per_band_lines(per_band, first):
        say(args, line)
    say(args, f"wrote {out}/per_image.csv, summary.csv, summary.json, bd.csv, rd.png")
    return 0


def _per_band_table(rows: list[dict[str, Any]], first: str) -> list[dict[str, Any]]:
    """Per raster and target: bytes and per-band PSNR of each codec, and whether ``first`` is above each
    anchor on every band with no more bytes than it."""
    table = []
    keys = dict.fromkeys((r["image"], r["target_bpp"]) for r in rows)
    for image, target in keys:
        entry: dict[str, Any] = {"image": image, "target_bpp": target, "codecs": {}}
        for r in rows:
            if (r["image"], r["target_bpp"]) == (image, target):
                entry["codecs"][r["codec"]] = {
                    "status": r["status"], "bytes": r["bytes"],
                    "psnr_per_band": json.loads(r["psnr_per_band"]) if r["psnr_per_band"] else None}
        ours = entry["codecs"].get(first, {})
        for anchor in RASTER_ANCHORS:
            theirs = entry["codecs"].get(anchor, {})
            if ours.get("psnr_per_band") and theirs.get("psnr_per_band"):
                entry[f"{first}_above_{anchor}_every_band"] = all(
                    a > b for a, b in zip(ours["psnr_per_band"], theirs["psnr_per_band"]))
            elif ours.get("psnr_per_band"):
                entry[f"{first}_above_{anchor}_every_band"] = theirs.get("status") == "unreachable"
        table.append(entry)
    return table


def _per_band_lines(table: list[dict[str, Any]], first: str) -> list[str]:
    lines = []
    for e in table:
        parts = []
        for name, c in e["codecs"].items():
            bands = " ".join(f"{v:.2f}" for v in c["psnr_per_band"]) if c["psnr_per_band"] else c["status"]
            parts.append(f"{name} {c['bytes'] or '-'} B [{bands}]")
        verdict = ", ".join(f"above {a} on every band: {e.get(f'{first}_above_{a}_every_band')}" for a in RASTER_ANCHORS)
        lines.append(f"{e['image']:<32} {e['target_bpp']:>5g}  " + "  ".join(parts) + f"  ({verdict})")
    return lines
