"""Encode images with the learned codec at 0.03 and 0.05 bpp; print params, achieved bpp, PSNR, latent codings
and encode seconds per image as JSON lines, and write them all to OUT.json.

Usage: python encode_images.py OUT.json IMAGE..."""
import sys, time, json, numpy as np
from PIL import Image
import coldpress
from coldpress.codec import get_codec
from coldpress.metrics import psnr
c = get_codec('learned', device='cpu')
out = []
for f in sys.argv[2:]:
    img = np.asarray(Image.open(f).convert('RGB'))
    for bpp in (0.03, 0.05):
        c.codings = 0
        t = time.perf_counter(); r = c.encode(img, bpp); te = time.perf_counter() - t
        d = c.decode(r.bitstream)
        out.append(dict(image=f.split('/')[-1], bpp=bpp, params=r.params, achieved=r.achieved_bpp, psnr=psnr(img, d), codings=c.codings, encode_s=te))
        print(json.dumps(out[-1]), flush=True)
json.dump(out, open(sys.argv[1], 'w'))
