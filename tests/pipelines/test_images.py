"""Decompression bombs and broken images: one ValueError naming the file, wherever jobs open images."""

import numpy as np
import pytest
from PIL import Image

from eval.audit_metrics import load_image_tensor
from eval.image_folders import check_image
from pipelines.data import ConceptImageSet
from pipelines.images import image_size, open_rgb


@pytest.fixture
def bomb(tmp_path, monkeypatch):
    """A 64x64 PNG under a pixel limit of 1000: a bomb by PIL's rule (more than twice the limit)."""
    path = tmp_path / "images" / "bomb.png"
    path.parent.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    return path


@pytest.mark.parametrize("limit", [1000, 3000])  # above twice the limit (PIL's error), above it (its warning)
def test_a_bomb_is_one_line_naming_the_file(bomb, monkeypatch, limit):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    for read in (open_rgb, image_size):
        with pytest.raises(ValueError, match=rf"{bomb}: refused as a possible decompression bomb") as info:
            read(bomb)
        assert "\n" not in str(info.value)


def test_every_job_reader_refuses_the_bomb(bomb):
    with pytest.raises(ValueError, match=rf"images: cannot read image file '{bomb}'.*decompression bomb"):
        check_image(bomb, "images")
    with pytest.raises(ValueError, match=rf"{bomb}: refused as a possible decompression bomb"):
        load_image_tensor(bomb)
    with pytest.raises(ValueError, match=rf"{bomb}: refused as a possible decompression bomb"):
        ConceptImageSet.load(bomb.parent, vae=object(), prompt="a cat")  # fails before the VAE is used


def test_small_images_still_open(tmp_path):
    path = tmp_path / "ok.png"
    Image.fromarray(np.full((3, 5, 3), 7, dtype=np.uint8)).save(path)
    assert image_size(path) == (3, 5) and open_rgb(path).size == (5, 3)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png: not a readable image"):
        open_rgb(tmp_path / "broken.png")
