"""Make the sample photographs shipped in coldpress/samples/ (run once by a maintainer).

The samples are small real photographs whose licence allows redistribution without conditions
(public domain or CC0). They come from the sample data bundled inside the scikit-image package,
so nothing is downloaded: install scikit-image into any environment (it is not a coldpress
dependency), then::

    .venv/bin/pip install scikit-image
    .venv/bin/python tools/make_samples.py          # writes coldpress/samples/photos/*.jpg and samples/SOURCES.md
    .venv/bin/python tools/make_samples.py --check  # exit 1 if the shipped files differ

Each picture is resized (Lanczos) so that its long side is at most LONG_SIDE pixels and saved as a
JPEG of quality 92 without chroma subsampling. SOURCES.md lists where each one comes from and
its licence, quoted from the scikit-image function that ships it.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "coldpress" / "samples"
OUT_DIR = SAMPLES_DIR / "photos"  # coldpress.samples_path(): only images, so encoding it rejects nothing
LONG_SIDE = 480
SAVE = {"format": "JPEG", "quality": 92, "subsampling": 0, "optimize": True}

#: file name -> (scikit-image data function, what it shows, original source, licence)
SAMPLES: dict[str, tuple[str, str, str, str]] = {
    "astronaut.jpg": (
        "astronaut",
        "Portrait of the astronaut Eileen Collins",
        "NASA Great Images database, https://flic.kr/p/r9qvLn",
        "Public domain (NASA): \"No known copyright restrictions, released into the public domain.\"",
    ),
    "coffee.jpg": (
        "coffee",
        "A cup of coffee on a wooden table (courtesy of Pikolo Espresso Bar)",
        "Photograph by Rachel Michetti",
        "CC0 1.0: \"No copyright restrictions. CC0 by the photographer (Rachel Michetti).\"",
    ),
    "chelsea.jpg": (
        "chelsea",
        "Chelsea the cat",
        "Photograph by Stefan van der Walt",
        "CC0 1.0: \"No copyright restrictions. CC0 by the photographer (Stefan van der Walt).\"",
    ),
    "rocket.jpg": (
        "rocket",
        "Launch of DSCOVR on a Falcon 9 from Cape Canaveral",
        "SpaceX Photos, https://www.flickr.com/photos/spacexphotos/16511594820/",
        "Public domain: \"The image was captured by SpaceX and released in the public domain\" "
        "(http://arstechnica.com/tech-policy/2015/03/elon-musk-puts-spacex-photos-into-the-public-domain/)",
    ),
}
SOURCES_NAME = "SOURCES.md"


def make(name: str) -> bytes:
    """The JPEG bytes of sample ``name``."""
    import skimage.data
    from PIL import Image

    function = SAMPLES[name][0]
    img = Image.fromarray(getattr(skimage.data, function)()).convert("RGB")
    scale = LONG_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, **SAVE)
    return buf.getvalue()


def sources_text() -> str:
    import skimage

    lines = [
        "# Sample photographs",
        "",
        "Small real photographs in `photos/` (`coldpress.samples_path()`), for the first run",
        "(`bash scripts/demo.sh`) and for tests. Each one comes from the sample data shipped inside",
        f"scikit-image {skimage.__version__} (`skimage.data.<function>`), resized to at most {LONG_SIDE} pixels on the",
        "long side and saved as JPEG (quality 92) by `tools/make_samples.py`. The licences below are",
        "quoted from the docstring of each function.",
        "",
        "| file | picture | scikit-image function | source | licence |",
        "|------|---------|-----------------------|--------|---------|",
    ]
    for name, (function, what, source, licence) in SAMPLES.items():
        lines.append(f"| `{name}` | {what} | `skimage.data.{function}` | {source} | {licence} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped files instead of writing")
    args = parser.parse_args(argv)
    files = {OUT_DIR / name: make(name) for name in SAMPLES}
    files[SAMPLES_DIR / SOURCES_NAME] = sources_text().encode()
    if args.check:
        differ = [p for p, data in files.items() if not p.exists() or p.read_bytes() != data]
        for p in differ:
            print(f"{p} differs from what tools/make_samples.py makes", file=sys.stderr)
        return 1 if differ else 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for old in [*OUT_DIR.iterdir(), *(p for p in SAMPLES_DIR.iterdir() if p.is_file())]:
        if old not in files:
            old.unlink()
    for p, data in files.items():
        p.write_bytes(data)
        print(f"{p}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
