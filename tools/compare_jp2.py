"""JPEG 2000 (GDAL JP2OpenJPEG, all bands, irreversible) at the same or fewer bytes than each raster of an
archive: per-band PSNR (peak 255 for uint8 bands, else the band valid range; valid pixels only).

    .venv/bin/python tools/compare_jp2.py ARCHIVE SRC_FOLDER
"""
import json
import math
import sys

import numpy as np
import rasterio
from rasterio.io import MemoryFile
from coldpress.transforms.archive import open_archive
arch = open_archive(sys.argv[1]); src_dir = sys.argv[2]
for row in arch.read(columns=["id","bitstream","metadata"]).to_pylist():
    q = json.loads(row["metadata"])["quality"]; budget = len(row["bitstream"])
    with rasterio.open(f"{src_dir}/{row['id']}") as ds:
        a = ds.read(); prof = dict(driver="JP2OpenJPEG", width=ds.width, height=ds.height, count=ds.count, dtype=ds.dtypes[0], crs=ds.crs, transform=ds.transform)
        masks = ds.read_masks() > 0
    raw = a.nbytes; qual = 100.0 * budget / raw
    for _ in range(30):
        with MemoryFile() as mem:
            with mem.open(**prof, QUALITY=f"{qual:.5f}", REVERSIBLE="NO", YCBCR420="NO") as d: d.write(a)
            data = mem.read()
            with mem.open() as d: b = d.read()
        if len(data) <= budget: break
        qual *= 0.92
    ps = []
    for i in range(a.shape[0]):
        v = masks[i]; peak = 255.0 if a.dtype == np.uint8 else float(a[i][v].max() - a[i][v].min())
        mse = np.mean((a[i][v].astype(float) - b[i][v]) ** 2); ps.append(round(10*math.log10(peak*peak/mse),2))
    better = all(c > j for c, j in zip(q["psnr_per_band"], ps))
    print(f"{row['id']:32s} coldpress {budget:6d} B {[round(x,2) for x in q['psnr_per_band']]}  jp2 {len(data):6d} B {ps}  coldpress better on every band: {better}")
