"""Make the small synthetic sample images shipped in coldpress/samples/.

Deterministic (fixed seeds, no external data): run it again and the same pictures come out
(byte-identical with the same numpy and Pillow versions). The scenes cover what an archival codec
meets: smooth gradients, hard-edged shapes, fine texture, thin text-like strokes, a grayscale page.

    .venv/bin/python tools/make_samples.py          # writes coldpress/samples/*
    .venv/bin/python tools/make_samples.py --check  # exit 1 if the shipped files differ
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUT_DIR = Path(__file__).resolve().parent.parent / "coldpress" / "samples"


def _value_noise(rng: np.random.Generator, h: int, w: int, octaves: int = 5) -> np.ndarray:
    """Fractal value noise in [0, 1]: sums of upsampled random grids, coarse to fine."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 4 * 2**o
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        img = Image.fromarray((grid * 255).astype(np.uint8), "L").resize((w, h), Image.Resampling.BICUBIC)
        out += amp * np.asarray(img, np.float32) / 255.0
        total += amp
        amp *= 0.55
    out /= total
    return (out - out.min()) / (out.max() - out.min() + 1e-6)


def landscape(w: int = 512, h: int = 384) -> Image.Image:
    """Sky gradient, sun, two mountain ridges with texture, a lake with a blurred reflection."""
    rng = np.random.default_rng(1)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    top, bottom = np.array([40, 90, 170], np.float32), np.array([250, 200, 150], np.float32)
    sky = np.broadcast_to(top + (bottom - top) * y, (h, w, 3)).copy()
    img = Image.fromarray(sky.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    sx, sy, r = int(0.72 * w), int(0.2 * h), int(0.07 * w)
    d.ellipse((sx - r, sy - r, sx + r, sy + r), fill=(255, 236, 180))
    noise = _value_noise(rng, h, w)
    xs = np.arange(w)
    for base, amp, colour, seed in ((0.58, 0.2, (95, 105, 130), 2), (0.68, 0.14, (60, 90, 60), 3)):
        ridge = h * (base - amp * _value_noise(np.random.default_rng(seed), 1, w, octaves=4)[0])
        d.polygon([(0, h)] + [(int(x), int(r)) for x, r in zip(xs, ridge)] + [(w, h)], fill=colour)
    arr = np.asarray(img, np.float32)
    slopes = int(0.45 * h)
    arr[slopes:] *= 0.8 + 0.4 * noise[slopes:, :, None]  # texture on the slopes
    horizon = int(0.78 * h)
    arr[horizon:] = 0.55 * arr[horizon - 1 :: -1][: h - horizon] + 0.45 * np.array([30, 70, 110], np.float32)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    lake = img.crop((0, horizon, w, h)).filter(ImageFilter.GaussianBlur(1.5))
    img.paste(lake, (0, horizon))
    return img


def shapes(w: int = 448, h: int = 320) -> Image.Image:
    """Flat colours with hard edges, thin lines and text: what blurs first at low rates."""
    img = Image.new("RGB", (w, h), (236, 232, 220))
    d = ImageDraw.Draw(img)
    rng = np.random.default_rng(4)
    palette = [(200, 50, 40), (30, 110, 180), (240, 180, 30), (40, 150, 80), (120, 60, 140)]
    for i in range(9):
        x0, y0 = int(rng.integers(0, w - 100)), int(rng.integers(45, h - 130))
        x1, y1 = x0 + int(rng.integers(40, 100)), y0 + int(rng.integers(40, 100))
        colour = palette[i % len(palette)]
        if i % 3 == 0:
            d.ellipse((x0, y0, x1, y1), fill=colour, outline=(20, 20, 20), width=2)
        elif i % 3 == 1:
            d.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            d.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
    for i in range(0, w, 16):
        d.line((i, h - 30, i + 8, h - 4), fill=(30, 30, 30), width=1)
    d.text((12, 10), "coldpress sample", fill=(10, 10, 10), font_size=14)
    d.text((12, 28), "edges, flat fills, 1px lines", fill=(60, 60, 60))
    return img


def terrain(w: int = 384, h: int = 384) -> Image.Image:
    """Aerial-looking terrain: fractal noise through a land-cover colour ramp, a river, fields, a road."""
    rng = np.random.default_rng(5)
    height = _value_noise(rng, h, w, octaves=6)
    stops = np.array([0.0, 0.3, 0.45, 0.7, 1.0], np.float32)
    colours = np.array([[30, 60, 110], [70, 120, 70], [110, 140, 70], [140, 120, 90], [230, 230, 225]], np.float32)
    rgb = np.stack([np.interp(height, stops, colours[:, c]) for c in range(3)], axis=2)
    detail = _value_noise(np.random.default_rng(6), h, w, octaves=7)
    rgb *= 0.85 + 0.3 * detail[:, :, None]
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    river = [(0.0, 0.15), (0.23, 0.35), (0.43, 0.31), (0.66, 0.59), (1.0, 0.66)]
    d.line([(int(x * w), int(y * h)) for x, y in river], fill=(40, 80, 140), width=6)
    for i, colour in enumerate([(180, 170, 90), (120, 160, 60), (200, 190, 120)]):
        x = int(0.58 * w) + 44 * i
        d.rectangle((x, 30, x + 38, 105), fill=colour, outline=(90, 80, 60))
    d.line([(0, int(0.86 * h)), (w, int(0.78 * h))], fill=(200, 200, 200), width=3)  # a road
    return img


def document(w: int = 384, h: int = 288) -> Image.Image:
    """A grayscale page: text-like strokes, a heading, a rule and a shaded figure."""
    img = Image.new("L", (w, h), 245)
    d = ImageDraw.Draw(img)
    rng = np.random.default_rng(7)
    d.text((16, 12), "ARCHIVE RECORD 0004", fill=20, font_size=16)
    d.line((16, 36, w - 16, 36), fill=60, width=1)
    col = int(0.55 * w)
    for row in range(10):
        y = 52 + row * 20
        x = 16
        while x < col:
            word = int(rng.integers(8, 34))
            d.rectangle((x, y, min(x + word, col), y + 6), fill=60)
            x += word + 6
    fx, fy, fw, fh = col + 16, 50, w - col - 32, 150
    yy, xx = np.mgrid[0:fh, 0:fw].astype(np.float32)
    shade = 140 + 90 * np.sin(xx / 11.0) * np.cos(yy / 17.0) - 40 * yy / fh
    img.paste(Image.fromarray(np.clip(shade, 0, 255).astype(np.uint8), "L"), (fx, fy))
    d.rectangle((fx - 1, fy - 1, fx + fw, fy + fh), outline=40)
    d.text((16, h - 26), "page 1 / 1", fill=90)
    return img


SAMPLES = {
    "landscape.jpg": (landscape, {"format": "JPEG", "quality": 92, "subsampling": 0}),
    "shapes.png": (shapes, {"format": "PNG", "optimize": True}),
    "terrain.jpg": (terrain, {"format": "JPEG", "quality": 92, "subsampling": 0}),
    "document.png": (document, {"format": "PNG", "optimize": True}),
}


def render() -> dict[str, bytes]:
    out = {}
    for name, (make, save) in SAMPLES.items():
        buf = io.BytesIO()
        make().save(buf, **save)
        out[name] = buf.getvalue()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped files instead of writing")
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        stale = [n for n, data in files.items() if not (OUT_DIR / n).is_file() or (OUT_DIR / n).read_bytes() != data]
        for n in stale:
            print(f"{OUT_DIR / n} differs from what tools/make_samples.py makes", file=sys.stderr)
        return 1 if stale else 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (OUT_DIR / name).write_bytes(data)
        print(f"{OUT_DIR / name}: {len(data)} bytes")
    print(f"total {sum(map(len, files.values()))} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
