"""Image folders shared by concurrent jobs: temporary names never collide."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WRITER = """
import sys, time
from pathlib import Path
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
