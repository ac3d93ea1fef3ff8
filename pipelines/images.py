"""Opening image files that users supply, with one-line errors naming the file.

PIL refuses images above ``Image.MAX_IMAGE_PIXELS`` pixels (about 89 megapixels) only with a
warning, and above twice that with a ``DecompressionBombError``; a tiny PNG can declare a
gigapixel canvas. Every job opens images through `open_rgb` or `image_size`, which turn
both into a ``ValueError`` naming the file, its size and the limit, before pixels are decoded.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

__all__ = ["image_size", "open_rgb"]


def _bomb(path: Path, err: Exception) -> ValueError:
    return ValueError(f"{path}: refused as a possible decompression bomb (more pixels than PIL's limit "
                      f"Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS}): {err}")


def _open(path: Path) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise _bomb(path, err) from None


def open_rgb(path: str | Path) -> Image.Image:
    """The image in ``path``, decoded to RGB (the file is closed).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a decompression bomb or a file that is no (whole) image, naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with _open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError) as err:  # PIL's ways of saying "not a (whole) image"
        raise ValueError(f"{path}: not a readable image ({err})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, checked whole with PIL's ``verify`` (no full decode).

    Raises:
        FileNotFoundError / ValueError: as `open_rgb`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with _open(path) as image:
            width, height = image.size
            image.verify()
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None
    return height, width
