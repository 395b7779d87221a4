"""The knob search steered by size estimates (``LearnedCodec._fit_latent``) against the search on real
codings alone (``_fit_latent_by_codings``), on the same analysed latents: the knob each finds, the
codings and estimates each makes and the seconds each takes, per image and budget (full scale only).

Usage: python estimated_vs_coded.py OUT.json IMAGE...
"""
import json
import sys
import time

import numpy as np
import torch
from PIL import Image

from coldpress.codec import get_codec

torch.set_num_threads(2)
codec = get_codec("learned", device="cpu")
estimator = codec.loaded.rate_estimator
calls = [0]
estimate = estimator.estimate


def counted(*args):
    calls[0] += 1
    return estimate(*args)


estimator.estimate = counted
rows = []
for path in sys.argv[2:]:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    h, w = rgb.shape[:2]
    y = codec.analysis(rgb, 8)
    for bpp in (0.03, 0.05, 0.1):
        budget = int(bpp * w * h / 8) - 40  # about what the container leaves for the payload
        row = {"image": path.split("/")[-1], "bpp": bpp, "budget": budget}
        for name, search in (("coded", codec._fit_latent_by_codings), ("estimated", codec._fit_latent)):
            codec.codings, calls[0] = 0, 0
            t = time.perf_counter()
            payload, knob = search(y, budget, 0)
            row[name] = {"knob": knob if payload is not None else None, "codings": codec.codings,
                         "estimates": calls[0], "seconds": round(time.perf_counter() - t, 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)
total = {n: {k: sum(r[n][k] for r in rows) for k in ("codings", "estimates", "seconds")} for n in ("coded", "estimated")}
summary = {"cases": len(rows), "same_knob": sum(r["coded"]["knob"] == r["estimated"]["knob"] for r in rows),
           "total": total}
print(json.dumps(summary))
json.dump({"summary": summary, "rows": rows}, open(sys.argv[1], "w"), indent=1)
