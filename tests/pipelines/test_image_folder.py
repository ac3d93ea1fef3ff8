"""Image folders: one resolver keeps every metadata path inside its folder; concurrent jobs never
collide on temporary names."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipelines.image_folder import FILE_KEY, METADATA_FILE, ImageFolderWriter, read_metadata, resolve_inside
from pipelines.sampling import SampleItem
from prompts.base import Prompt

REPO = Path(__file__).resolve().parents[2]
WRITER = """
import sys, time
from pathlib import Path

import torch
from pipelines.image_folder import replace_atomic

path, end = Path(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    replace_atomic(path, lambda tmp: tmp.write_bytes(sys.argv[3].encode() * 4096))
"""


def test_two_processes_replacing_one_file_never_collide(tmp_path):
    """E.g. two erase jobs caching the latents of one --forget_dir at the same moment."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "latents.safetensors"), "1.5", str(k)],
                              env=env, stderr=subprocess.PIPE, text=True) for k in range(2)]
    results = [(proc.wait(timeout=120), proc.stderr.read()) for proc in procs]
    assert [code for code, _ in results] == [0, 0], "".join(err[-1000:] for _, err in results)
    assert (tmp_path / "latents.safetensors").read_bytes() in (b"0" * 4096, b"1" * 4096)
    assert [p.name for p in tmp_path.iterdir()] == ["latents.safetensors"]


def test_finalize_after_a_kill_mid_write_removes_the_temporary_files(tmp_path):
    """A kill inside `replace_atomic` leaves hidden temporary files, also in latents-parts/;
    the next run's finalize must not trip over them (rmdir of latents-parts/) and removes them."""
    from PIL import Image

    from pipelines.image_folder import LATENT_PARTS, ImageFolderWriter
    from pipelines.sampling import SampleItem
    from prompts.base import Prompt

    writer = ImageFolderWriter(tmp_path, run_info={"model": "m"}, with_latents=True)
    for index in range(2):
        item = SampleItem(index, Prompt(f"prompt {index}"), seed=index, guidance_scale=7.5)
        writer.write(item, Image.new("RGB", (4, 4)), torch.zeros(4, 2, 2))
    (tmp_path / LATENT_PARTS / ".000002.safetensors.99999.tmp").write_bytes(b"half")
    (tmp_path / ".000002.png.99999.tmp").write_bytes(b"half")
    rows = ImageFolderWriter(tmp_path, run_info={"model": "m"}, with_latents=True).finalize()
    assert [row["index"] for row in rows] == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000.png", "000001.png", "latents.safetensors",
                                                          "metadata.jsonl"]

def test_names_inside_the_folder_resolve(tmp_path):
    (tmp_path / "cats").mkdir()
    assert resolve_inside(tmp_path, "000001.png", "row 1") == tmp_path / "000001.png"
    assert resolve_inside(tmp_path, "cats/1.png", "row 1") == tmp_path / "cats" / "1.png"


@pytest.mark.parametrize("name,message", [
    ("/etc/passwd", "is an absolute path"),
    ("\\\\server\\share\\x.png", "is an absolute path"),
    ("C:/images/x.png", "is an absolute path"),
    ("../secret.png", "has a '..' component"),
    ("cats/../../secret.png", "has a '..' component"),
    ("..\\secret.png", "has a '..' component"),
    ("", "must be a non-empty relative path"),
    (3, "must be a non-empty relative path"),
])
def test_names_that_leave_the_folder_are_refused(tmp_path, name, message):
    with pytest.raises(ValueError, match=f"row 1: image name .* {message}"):
        resolve_inside(tmp_path, name, "row 1")


def test_a_symlink_leading_out_is_refused(tmp_path):
    folder, outside = tmp_path / "images", tmp_path / "outside.png"
    folder.mkdir()
    Image.new("RGB", (4, 4)).save(outside)
    os.symlink(outside, folder / "link.png")
    with pytest.raises(ValueError, match=r"row 1: image 'link.png' resolves to .*outside.png, outside .*images"):
        resolve_inside(folder, "link.png", "row 1")


def test_read_metadata_takes_file_name_then_the_older_file_key(tmp_path):
    rows = [{"file_name": "a.png", "index": 0}, {"file": "b.png", "index": 1}]
    (tmp_path / METADATA_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [row[FILE_KEY] for row in read_metadata(tmp_path / METADATA_FILE)] == ["a.png", "b.png"]
    assert all("file" not in row for row in read_metadata(tmp_path / METADATA_FILE))
    (tmp_path / METADATA_FILE).write_text(json.dumps({"file_name": "../x.png"}) + "\n")
    with pytest.raises(ValueError, match=r"metadata.jsonl: row 1: image name '../x.png' has a '..' component"):
        read_metadata(tmp_path / METADATA_FILE)


def test_the_writer_writes_file_name_and_refuses_to_resume_a_folder_with_an_escaping_row(tmp_path):
    folder = tmp_path / "images"
    writer = ImageFolderWriter(folder)
    writer.write(SampleItem(0, Prompt("a cat"), seed=0, guidance_scale=7.5), Image.new("RGB", (4, 4)))
    (row,) = writer.finalize()
    assert json.loads((folder / METADATA_FILE).read_text()) == row and row[FILE_KEY] == "000000.png"
    assert "file" not in row
    Image.new("RGB", (4, 4)).save(tmp_path / "elsewhere.png")
    with open(folder / METADATA_FILE, "a") as handle:
        handle.write(json.dumps({"file": "../elsewhere.png", "index": 1}) + "\n")
    with pytest.raises(ValueError, match=r"row 2: image name '../elsewhere.png' has a '..' component"):
        ImageFolderWriter(folder).done()  # eval.sample resuming would have kept index 1 as done


def test_the_writer_still_resumes_an_older_folder_with_file_keys(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "000000.png")
    (tmp_path / METADATA_FILE).write_text(json.dumps({"file": "000000.png", "index": 0, "prompt": "p"}) + "\n")
    writer = ImageFolderWriter(tmp_path)
    assert writer.done() == {0}
    writer.write(SampleItem(1, Prompt("b"), seed=1, guidance_scale=7.5), Image.new("RGB", (4, 4)))
    assert [(row[FILE_KEY], "file" in row) for row in writer.finalize()] == [("000000.png", False),
                                                                              ("000001.png", False)]
