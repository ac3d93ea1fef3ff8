"""Image folders shared by concurrent jobs: temporary names never collide."""

import os
import subprocess
import sys
from pathlib import Path

import torch

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
