"""ConceptImageSet: generated folders (stored latents) and users' image folders (encoded once)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pipelines.data import ConceptImageSet, concept_pair
from pipelines.image_folder import LATENTS_FILE, METADATA_FILE, ImageFolderWriter
from pipelines.sampling import SampleItem
from pipelines.tiny import build_tiny_pipeline
from prompts.base import Prompt


@pytest.fixture(scope="module")
def vae():
    return build_tiny_pipeline(seed=0).vae


def write_generated(folder, prompts):
    """A folder as `pipelines.generate` leaves it; latents of image i are all i."""
    writer = ImageFolderWriter(folder, with_latents=True)
    for index, text in enumerate(prompts):
        item = SampleItem(index, Prompt(text), seed=index, guidance_scale=7.5)
        writer.write(item, Image.new("RGB", (8, 8)), torch.full((4, 4, 4), float(index)))
    writer.finalize()


def random_image(path, width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def test_generated_folders_load_their_latents(tmp_path):
    write_generated(tmp_path / "forget", ["naked", "nudity", "naked"])
    write_generated(tmp_path / "retain", ["a person wearing clothes"] * 2)
    forget, retain = concept_pair(tmp_path)  # no VAE needed
    assert forget.latents.shape == (3, 4, 4, 4) and len(retain) == 2
    assert [float(x[0, 0, 0]) for x in forget.latents] == [0.0, 1.0, 2.0]  # metadata order
    assert forget.prompts == ["naked", "nudity", "naked"]
    assert forget.files == ["000000.png", "000001.png", "000002.png"]
    assert forget.metadata[1]["seed"] == 1


def test_user_folder_is_encoded_once_and_cached(tmp_path, vae):
    tall = random_image(tmp_path / "a.png", 32, 48, seed=0)
    random_image(tmp_path / "b.jpg", 64, 40, seed=1)
    images = ConceptImageSet.load(tmp_path, vae=vae, resolution=32, prompt="an image of a church")
    assert images.latents.shape == (2, 4, 16, 16)
    assert images.files == ["a.png", "b.jpg"] and images.prompts == ["an image of a church"] * 2
    # a.png is 32 wide: no resize, only the center crop of rows 8..40; mean * scaling factor.
    crop = torch.from_numpy(tall[8:40].astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        expected = vae.encode(crop).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(images.latents[0], expected[0], atol=1e-5, rtol=1e-5)

    assert sorted(load_file(str(tmp_path / LATENTS_FILE))) == ["a.png", "b.jpg"]
    cached = ConceptImageSet.load(tmp_path, prompt="an image of a church")  # no VAE: the cache
    assert torch.equal(cached.latents, images.latents)
    with pytest.raises(ValueError, match="encoded at resolution 32, asked for 64"):
        ConceptImageSet.load(tmp_path, vae=vae, resolution=64, prompt="x")


def test_user_folder_prompts_from_metadata(tmp_path, vae):
    for i, name in enumerate(("x.png", "y.png")):
        random_image(tmp_path / name, 16, 16, seed=i)
    rows = [{"file": "y.png", "prompt": "naked"}, {"file": "x.png"}]
    (tmp_path / METADATA_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    images = ConceptImageSet.load(tmp_path, vae=vae, prompt="nudity")  # fills rows without a prompt
    assert images.files == ["y.png", "x.png"] and images.prompts == ["naked", "nudity"]
    (tmp_path / LATENTS_FILE).unlink()
    with pytest.raises(ValueError, match=f"{METADATA_FILE}:2: no prompt for x.png"):
        ConceptImageSet.load(tmp_path, vae=vae)


def test_errors_name_the_file(tmp_path, vae):
    with pytest.raises(FileNotFoundError, match="missing: no such image folder"):
        ConceptImageSet.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: empty image folder"):
        ConceptImageSet.load(tmp_path / "empty")

    broken = tmp_path / "broken"
    broken.mkdir()
    random_image(broken / "a.png", 16, 16, seed=0)
    (broken / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="b.png: not a readable image"):
        ConceptImageSet.load(broken, vae=vae, prompt="p")

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    random_image(mixed / "a.png", 16, 16, seed=0)
    random_image(mixed / "b.png", 24, 16, seed=1)
    with pytest.raises(ValueError, match=r"b.png: size \(16, 24\) differs from a.png's \(16, 16\); pass resolution="):
        ConceptImageSet.load(mixed, vae=vae, prompt="p")
    with pytest.raises(ValueError, match="mixed: no latents.safetensors; pass vae= to encode its 2 images"):
        ConceptImageSet.load(mixed, prompt="p")
    with pytest.raises(ValueError, match="a.png: no prompt for a.png"):
        ConceptImageSet.load(mixed, vae=vae, resolution=16)
    assert not (mixed / LATENTS_FILE).exists()  # nothing cached by a failed load

    (mixed / METADATA_FILE).write_text(json.dumps({"file": "gone.png", "prompt": "p"}) + "\n")
    with pytest.raises(ValueError, match="gone.png: listed in metadata.jsonl but missing"):
        ConceptImageSet.load(mixed, vae=vae)


def test_unfinished_runs_are_refused(tmp_path):
    writer = ImageFolderWriter(tmp_path, rank=1, with_latents=True)
    writer.write(SampleItem(0, Prompt("naked"), 0, 7.5), Image.new("RGB", (8, 8)), torch.zeros(4, 4, 4))
    with pytest.raises(ValueError, match="unfinished generation run .metadata-1.jsonl not merged yet"):
        ConceptImageSet.load(tmp_path)
    writer.finalize()
    assert ConceptImageSet.load(tmp_path).prompts == ["naked"]


def test_latents_must_match_the_metadata(tmp_path):
    write_generated(tmp_path, ["a", "b", "c"])
    stored = load_file(str(tmp_path / LATENTS_FILE))
    del stored["000002.png"]
    save_file(stored, str(tmp_path / LATENTS_FILE))
    with pytest.raises(ValueError, match=r"latents.safetensors: holds latents of 2 images but the metadata lists 3 "
                                         r"\(without latents: \['000002.png'\]\)"):
        ConceptImageSet.load(tmp_path)


@pytest.mark.parametrize("key,name", [("file", "../outside.png"), ("file_name", "OUTSIDE"), ("file", "link.png")])
def test_metadata_names_outside_the_folder_are_refused(tmp_path, vae, key, name):
    folder = tmp_path / "images"
    folder.mkdir()
    random_image(tmp_path / "outside.png", 8, 8, seed=0)
    os.symlink(tmp_path / "outside.png", folder / "link.png")
    name = str(tmp_path / "outside.png") if name == "OUTSIDE" else name
    (folder / METADATA_FILE).write_text(json.dumps({key: name, "prompt": "naked"}) + "\n")
    with pytest.raises(ValueError, match=r"metadata.jsonl: row 1: image .*(component|absolute path|outside)"):
        ConceptImageSet.load(folder, vae)
    assert not (folder / LATENTS_FILE).exists()


def test_a_listed_symlink_leading_out_is_refused_without_metadata(tmp_path, vae):
    folder = tmp_path / "images"
    folder.mkdir()
    random_image(folder / "inside.png", 8, 8, seed=0)
    random_image(tmp_path / "outside.png", 8, 8, seed=1)
    os.symlink(tmp_path / "outside.png", folder / "link.png")
    with pytest.raises(ValueError, match=r"link.png: image 'link.png' resolves to .*outside"):
        ConceptImageSet.load(folder, vae, prompt="naked")


def test_file_name_rows_are_read(tmp_path, vae):
    random_image(tmp_path / "x.png", 8, 8, seed=0)
    (tmp_path / METADATA_FILE).write_text(json.dumps({"file_name": "x.png", "prompt": "naked"}) + "\n")
    data = ConceptImageSet.load(tmp_path, vae)
    assert data.files == ["x.png"] and data.prompts == ["naked"]


@pytest.mark.parametrize("keep", [0, 40])
def test_truncated_cached_latents_are_one_line_naming_the_file(tmp_path, keep):
    write_generated(tmp_path, ["a", "b"])
    path = tmp_path / LATENTS_FILE
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ValueError, match=rf"cached latents {path}: not a readable safetensors file") as info:
        ConceptImageSet.load(tmp_path)
    assert "\n" not in str(info.value)


def test_latents_scaled_by_another_vae_are_refused(tmp_path, vae):
    """The cache records the scaling factor it was made with (header here, info.json for
    pipelines.generate folders); a VAE with another factor gets a clear error, not wrong latents."""
    random_image(tmp_path / "a.png", 32, 32, seed=0)
    ConceptImageSet.load(tmp_path, vae=vae, prompt="x")
    other = build_tiny_pipeline(seed=0).vae
    other.register_to_config(scaling_factor=vae.config.scaling_factor * 2)
    with pytest.raises(ValueError, match=r"latents scaled by .* but this model's VAE scales by"):
        ConceptImageSet.load(tmp_path, vae=other, prompt="x")
    assert ConceptImageSet.load(tmp_path, vae=vae, prompt="x").latents.shape[0] == 1  # same VAE: fine

    generated = tmp_path / "generated"
    write_generated(generated, ["naked"])
    (generated / "info.json").write_text(json.dumps({"latents": {"scaling_factor": 0.18215}}))
    with pytest.raises(ValueError, match="latents scaled by 0.18215"):
        ConceptImageSet.load(generated, vae=other)
