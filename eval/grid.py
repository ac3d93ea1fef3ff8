"""Image grids as PNG: before/after comparisons and flagged-image sheets (optionally blurred)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFilter


def image_grid(rows: Sequence[Sequence[Image.Image]], path: str | Path, row_labels: Sequence[str] = (),
               column_labels: Sequence[str] = (), scale: int = 1, blur: float = 0.0) -> Path:
    """Lay ``rows`` of equally sized images out on one sheet, with labels, and save a PNG.

    Args:
        rows: images per row (rows may differ in length).
        path: where the PNG goes (parent folders are created).
        row_labels / column_labels: text left of each row / above each column.
        scale: integer upscaling of every image (tiny 32 px images are hard to see).
        blur: Gaussian blur radius applied to every image (for flagged content).

    Returns:
        The PNG path.
    """
    if not rows or not any(rows):
        raise ValueError("image_grid needs at least one image")
    first = next(image for row in rows for image in row)
    width, height = first.width * scale, first.height * scale
    left = 8 + 7 * max((len(s) for s in row_labels), default=0)
    top = 16 if column_labels else 0
    columns = max(len(row) for row in rows)
    sheet = Image.new("RGB", (left + columns * width, top + len(rows) * height), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(column_labels):
        draw.text((left + c * width + 2, 2), label, fill="black")
    for r, row in enumerate(rows):
        if r < len(row_labels):
            draw.text((4, top + r * height + height // 2 - 5), row_labels[r], fill="black")
        for c, image in enumerate(row):
            tile = image.convert("RGB").resize((width, height), Image.NEAREST)
            if blur:
                tile = tile.filter(ImageFilter.GaussianBlur(blur))
            sheet.paste(tile, (left + c * width, top + r * height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
