"""Large-scene figures of the raster path: peak memory of encoding, full vs region restore time, seams.

    .venv/bin/python tools/bench_raster_scale.py --size 8192 --bands 4 --codec webp --bpp 0.4 --out /tmp/scale

1. writes a SIZE x SIZE, BANDS-band uint16 GeoTIFF (tiled, deflate) window by window;
2. encodes it in a child process with the local engine (``encode_local``) and reports that
   process's peak RSS; ``--read whole`` holds the file's bytes whole as before ``sources.read_source``
   (``--read both``: one after the other, for the memory before and after);
3. (alone with ``--restore-only``, on the archive of an earlier run in ``--out``) restores it whole (COG) and a ``--region`` px square region (default 1024; ``--window``, not
   aligned to the tiles: it straddles the scene's central tile corner) and reports both times (the
   median of ``--repeats`` restores) and how many of the scene's tiles the region decoded;
   ``--tile`` and ``--overlap`` code the scene in other tiles than the package's (1024 px, 8 px
   overlap), e.g. a 2048 px scene in 256 px tiles with a 256 px region has the tile geometry of an
   8192 px scene in 1024 px tiles with a 1024 px region, at a sixteenth of the pixels;
4. seams (``--no-seams``: skipped) (alone with ``--seams-only``): a ``--seam-size`` px scene in tiles of ``--seam-tile``, with the
   package's tile overlap and without: PSNR against the source and against the scene coded as one
   tile, and the step of the coding error across tile edges vs across 16 px block edges inside tiles.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def _scene_band(b: int, y0: int, x0: int, h: int, w: int, size: int, rng) -> np.ndarray:
    y, x = np.mgrid[y0:y0 + h, x0:x0 + w] / size
    f = (np.sin(2 * np.pi * (x * (3 + b) + 2 * y)) + np.cos(2 * np.pi * (5 * y - x * (1 + b)))
         + 0.6 * np.sin(40 * np.pi * x * y))
    return np.clip(6000 + 2500 * f + rng.normal(0, 30, f.shape), 0, 65535).astype(np.uint16)


def write_scene(path: str, size: int, bands: int) -> None:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=bands, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(300000, 5000000, 10, 10), nodata=0, tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate", predictor=2, BIGTIFF="IF_SAFER") as ds:
        step = 1024
        for y0 in range(0, size, step):
            for x0 in range(0, size, step):
                h, w = min(step, size - y0), min(step, size - x0)
                block = np.stack([_scene_band(b, y0, x0, h, w, size, rng) for b in range(bands)])
                ds.write(block, window=Window(x0, y0, w, h))


def _child_encode(path: str, archive: str, codec: str, bpp: float, read: str = "window", tile: int = 0,
                  overlap: int = -1) -> None:
    from coldpress.pipelines.local import encode_local
    from coldpress.transforms import raster, sources

    # encode_local has no tile setting (archives use the package's); the bench changes encode_raster's defaults
    if tile > 0:
        raster.encode_raster.__kwdefaults__["tile_size"] = tile
    if overlap >= 0:
        raster.encode_raster.__kwdefaults__["overlap"] = overlap

    if read == "whole":  # as before sources.read_source: the file's bytes held whole while it is encoded
        sources.LARGE_SOURCE_BYTES = float("inf")

    t = time.monotonic()
    manifest = encode_local(os.path.dirname(path), archive, codec=codec, bpp=bpp, progress=False)
    print(json.dumps({"read": read, "encode_s": time.monotonic() - t, "archived": manifest["archived"],
                      "rejected": manifest["rejected"],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def seams(codec: str, bpp: float, size: int, tile: int) -> dict:
    """Seams of a SIZE x SIZE 3-band uint16 scene cut into TILE px tiles, with the package's tile overlap
    (the default) and without (``overlap=0``), against the same scene coded as one tile."""
    import rasterio  # noqa: F401
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    from coldpress.codec import get_codec
    from coldpress.metrics import psnr_from_mse
    from coldpress.transforms import raster

    rng = np.random.default_rng(1)
    data = np.stack([_scene_band(b, 0, 0, size, size, size // 4, rng) for b in range(3)])
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=size, height=size, count=3, dtype="uint16", crs="EPSG:32633",
                      transform=from_origin(0, 0, 10, 10)) as ds:
            ds.write(data)
        tif = mem.read()
    c = get_codec(codec)
    src = data.transpose(1, 2, 0).astype(np.float64)
    peak = float(src.max() - src.min())
    whole = raster.encode_raster(tif, "seams.tif", c, bpp, tile_size=10 * size)
    b = raster.decode_package(whole.package).astype(np.float64)
    out = {"size": size, "tile": tile, "codec": codec, "bpp": bpp, "bytes_untiled": len(whole.package),
           "psnr_untiled_vs_source": psnr_from_mse(float(np.mean((b - src) ** 2)), peak),
           "step": "mean absolute step of the coding error (decoded - source) across columns and rows, source units"}

    def step(img, cols):
        return float(np.mean([np.abs(img[:, e] - img[:, e - 1]).mean() + np.abs(img[e] - img[e - 1]).mean()
                              for e in cols])) / 2

    for name, overlap in (("overlap_%d" % raster.TILE_OVERLAP, raster.TILE_OVERLAP), ("overlap_0", 0)):
        tiled = raster.encode_raster(tif, "seams.tif", c, bpp, tile_size=tile, overlap=overlap)
        a = raster.decode_package(tiled.package).astype(np.float64)
        header = raster.unpack_package(tiled.package).header
        edges = sorted({t["x"] for t in header["tiles"] if t["x"] > 0})
        blocks = [e for e in range(16, size, 16) if all(abs(e - k) > 16 for k in edges)]
        err = a - src
        out[name] = {
            "tiles": len(header["tiles"]), "bytes": len(tiled.package),
            "psnr_vs_source": psnr_from_mse(float(np.mean(err ** 2)), peak),
            "psnr_vs_untiled": psnr_from_mse(float(np.mean((a - b) ** 2)), peak),
            "error_step_across_tile_edges": step(err, edges),
            "error_step_across_16px_block_edges_inside_tiles": step(err, blocks),
            "seam_ratio": step(err, edges) / step(err, blocks),
        }
    return out


def _region_tiles(archive: str, window: tuple[int, int, int, int]) -> dict:
    """The scene's tile count, overlap, and the tiles whose coded windows the region overlaps (what it decodes)."""
    from coldpress.transforms.archive import open_archive
    from coldpress.transforms.raster.package import coded_window, unpack_package

    header = unpack_package(open_archive(archive).read(columns=["bitstream"]).column("bitstream")[0].as_py()).header
    col, row, w, h = window
    hit = [i for i in range(len(header["tiles"])) for cx, cy, cw, ch in [coded_window(header, i)]
           if cx < col + w and col < cx + cw and cy < row + h and row < cy + ch]
    return {"tiles": len(header["tiles"]), "tile_size": header.get("tile_size"),
            "overlap": int(header.get("overlap", 0)), "region_tiles_decoded": len(hit)}


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(max(1, repeats)):
        t = time.monotonic()
        fn()
        times.append(time.monotonic() - t)
    return float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--bands", type=int, default=4)
    p.add_argument("--codec", default="webp")
    p.add_argument("--bpp", type=float, default=0.4)
    p.add_argument("--out", default="/tmp/coldpress-scale")
    p.add_argument("--seam-size", type=int, default=1536)
    p.add_argument("--seam-tile", type=int, default=512)
    p.add_argument("--seams-only", action="store_true", help="only the seam measurement (step 4)")
    p.add_argument("--read", choices=("window", "whole", "both"), default="window",
                   help="how the encode reads the scene: GDAL window by window (coldpress's way for a source of "
                   "sources.LARGE_SOURCE_BYTES or more), the file's bytes whole (as before), or both, one after the other")
    p.add_argument("--encode-only", action="store_true", help="steps 1-2 only")
    p.add_argument("--restore-only", action="store_true",
                   help="step 3 only, on the scene and archive an earlier run left in --out")
    p.add_argument("--tile", type=int, default=0, help="tile side in px (default: the package's, 1024)")
    p.add_argument("--overlap", type=int, default=-1, help="tile overlap in px (default: the package's, 8)")
    p.add_argument("--region", type=int, default=1024, help="side of the restored region in px")
    p.add_argument("--repeats", type=int, default=1, help="restores timed (the median is reported)")
    p.add_argument("--no-seams", action="store_true", help="skip the seam measurement (step 4)")
    p.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.seams_only:
        print(json.dumps(seams(args.codec, args.bpp, args.seam_size, args.seam_tile), indent=2))
        return
    if args.child:
        path, archive, codec, bpp, read, tile, overlap = args.child
        _child_encode(path, archive, codec, float(bpp), read, int(tile), int(overlap))
        return
    os.makedirs(os.path.join(args.out, "src"), exist_ok=True)
    path = os.path.join(args.out, "src", "scene.tif")
    archive = os.path.join(args.out, "archive")
    result: dict = {"size": args.size, "bands": args.bands, "codec": args.codec, "bpp": args.bpp, "region": args.region}
    t = time.monotonic()
    if not os.path.exists(path):
        write_scene(path, args.size, args.bands)
    result["write_scene_s"] = time.monotonic() - t
    result["source_bytes"] = os.path.getsize(path)
    if not args.restore_only:
        subprocess.run(["rm", "-rf", archive, os.path.join(args.out, "full"), os.path.join(args.out, "region")], check=True)
    for read in () if args.restore_only else (("whole", "window") if args.read == "both" else (args.read,)):
        subprocess.run(["rm", "-rf", archive], check=True)
        out = subprocess.run([sys.executable, __file__, "--child", path, archive, args.codec, str(args.bpp), read,
                              str(args.tile), str(args.overlap)],
                             check=True, capture_output=True, text=True).stdout
        child = json.loads(out.strip().splitlines()[-1])
        result.update(child) if args.read != "both" else result.setdefault("encodes", []).append(child)
    if args.encode_only:
        print(json.dumps(result, indent=2))
        return

    from coldpress.pipelines.local import restore_local

    def restore(name: str, **kw) -> None:
        subprocess.run(["rm", "-rf", os.path.join(args.out, name)], check=True)
        restore_local(archive, os.path.join(args.out, name), progress=False, **kw)

    result["full_restore_s"] = _timed(lambda: restore("full"), args.repeats)
    off = args.size // 2 - args.region // 2 + round(100 * args.region / 1024)  # not aligned to the tile grid
    window = (off, off, args.region, args.region)
    result["region_restore_s"] = _timed(lambda: restore("region", region={"window": window}), args.repeats)
    result["region_fraction_of_full"] = result["region_restore_s"] / result["full_restore_s"]
    result.update(window=list(window), repeats=args.repeats, **_region_tiles(archive, window))
    if not args.no_seams:
        result["seams"] = seams(args.codec, args.bpp, args.seam_size, args.seam_tile)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
