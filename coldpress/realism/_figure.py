"""The crops figure: the same crops of several reconstructions side by side; see coldpress.realism."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ._inputs import colour_planes

def crops_figure(
    path,
    crops_by_name: Mapping[str, Sequence[np.ndarray]],
    *,
    zoom: int = 1,
    gap: int = 4,
    label_height: int = 20,
    title: str | None = None,
) -> tuple[int, int]:
    """Save a PNG grid of the same crops side by side and return its (width, height) in pixels.

    ``crops_by_name`` maps a column label (``"original"``, ``"avif-half 0.03 bpp"``, ...) to that
    column's crops, one per row, all columns the same length; the crops of one row must have the
    same shape (they are the same region). Crops are uint8 grey or colour arrays, drawn pixel for
    pixel, enlarged ``zoom`` times by pixel repetition. Each cell is as large as the largest crop
    (smaller ones sit at its top left, on white). Size: width ``cols * cell_w + (cols + 1) * gap``,
    height ``label_height [+ label_height for a title] + rows * cell_h + (rows + 1) * gap``."""
    if not crops_by_name:
        raise ValueError("no columns given; pass {'original': [crop, ...], 'codec name': [crop, ...], ...}")
    if zoom < 1 or gap < 0 or label_height < 8:
        raise ValueError(f"zoom must be >= 1, gap >= 0 and label_height >= 8, got {zoom}, {gap} and {label_height}")
    names = list(crops_by_name)
    columns = [list(crops_by_name[n]) for n in names]
    counts = {len(c) for c in columns}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(
            "every column needs the same, non-zero number of crops (one per row); got "
            + ", ".join(f"{n!r}: {len(c)}" for n, c in zip(names, columns))
        )
    rows = counts.pop()
    tiles: list[list[Image.Image]] = []
    for r in range(rows):
        row = []
        for n, c in zip(names, columns):
            planes = colour_planes(c[r], f"crop {r} of {n!r}")
            if planes.shape[:2] != colour_planes(columns[0][r]).shape[:2]:
                raise ValueError(
                    f"crop {r} of {n!r} is {planes.shape[1]}x{planes.shape[0]} px but that of {names[0]!r} is "
                    f"{columns[0][r].shape[1]}x{columns[0][r].shape[0]}; a row shows the same region of every image"
                )
            rgb = np.repeat(planes, 3, axis=2) if planes.shape[2] == 1 else planes
            tile = np.repeat(np.repeat(rgb.astype(np.uint8), zoom, axis=0), zoom, axis=1)
            row.append(Image.fromarray(tile))
        tiles.append(row)
    cell_w = max(t.width for row in tiles for t in row)
    cell_h = max(t.height for row in tiles for t in row)
    top = label_height * (2 if title else 1)
    width = len(names) * cell_w + (len(names) + 1) * gap
    height = top + rows * cell_h + (rows + 1) * gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)

    def text(s: str, x0: int, y0: int, room: int) -> None:
        size = label_height - 6
        font = ImageFont.load_default(size=size)
        while size > 6 and draw.textlength(s, font=font) > room:
            size -= 1
            font = ImageFont.load_default(size=size)
        draw.text((x0, y0 + 2), s, fill=(0, 0, 0), font=font)

    if title:
        text(title, gap, 0, width - 2 * gap)
    for j, name in enumerate(names):
        x = gap + j * (cell_w + gap)
        text(name, x, top - label_height, cell_w)
        for r in range(rows):
            canvas.paste(tiles[r][j], (x, top + gap + r * (cell_h + gap)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return width, height
