"""Band decorrelation (KLT/PCA over all bands, matrix and means as float64 counted in the budget) vs
groups of three bands, at the same bytes: per-band PSNR (peak 255, every pixel).

    .venv/bin/python tools/klt_experiment.py CODEC BPP FILE... (files of ../shared/data/geo)
"""
import sys, math, numpy as np, rasterio
from rasterio.io import MemoryFile
from coldpress.codec import get_codec
from coldpress.transforms import raster
codec = get_codec(sys.argv[1]); bpp = float(sys.argv[2])
def tif(arr, prof):
    with MemoryFile(ext=".tif") as m:
        with m.open(driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0], dtype=arr.dtype.name, crs=prof["crs"], transform=prof["transform"]) as d: d.write(arr)
        return m.read()
def psnrs(a, b):
    return [round(10*math.log10(255**2/np.mean((a[i].astype(float)-b[i])**2)),2) for i in range(a.shape[0])]
for name in sys.argv[3:]:
    with rasterio.open(f"../shared/data/geo/{name}") as ds: a = ds.read(); prof = ds.profile
    n = a.shape[0]; x = a.reshape(n, -1).astype(np.float64); mu = x.mean(1, keepdims=True)
    w, v = np.linalg.eigh(np.cov(x - mu)); v = v[:, ::-1]  # components by decreasing variance
    pcs = (v.T @ (x - mu)).reshape(a.shape).astype(np.float32)
    direct = raster.encode_raster(tif(a, prof), name, codec, bpp)
    d = raster.decode_package(direct.package).transpose(2, 0, 1)
    k = raster.encode_raster(tif(pcs, prof), name, codec, bpp - 8 * (n * n + n) * 8 / (a.shape[1] * a.shape[2]))  # the KLT matrix + means as float64 in the budget
    p = raster.decode_package(k.package).transpose(2, 0, 1).reshape(n, -1).astype(np.float64)
    rec = np.clip(np.round(v @ p + mu), 0, 255).reshape(a.shape)
    print(name, sys.argv[1], bpp, "groups of 3:", len(direct.package), "B", psnrs(a, d), "| KLT:", len(k.package) + 8 * (n * n + n), "B", psnrs(a, rec), flush=True)
