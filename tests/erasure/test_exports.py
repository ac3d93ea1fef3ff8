"""An export is replaced as a whole: old or new, never mixed; a killed swap is finished next run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from erasure.exports import MANIFEST, publish_export, read_manifest, recover_export, staging_folder

REPO = Path(__file__).resolve().parents[2]


def write_export(folder: Path, version: str, components=("unet", "vae")) -> None:
    """A fake diffusers export: model_index.json, component folders, a card and a config."""
    for name in components:
        (folder / name).mkdir(parents=True)
        (folder / name / "weights.bin").write_text(f"{name} {version}")
    (folder / "model_index.json").write_text(json.dumps({"version": version, "components": list(components)}))
    (folder / "README.md").write_text(f"card {version}")
    (folder / "erase_config.json").write_text(json.dumps({"version": version}))


def export_version(folder: Path) -> set[str]:
    """The version each export file says it belongs to (one element when consistent)."""
    texts = [(folder / "README.md").read_text(), (folder / "model_index.json").read_text(),
             (folder / "erase_config.json").read_text()]
    texts += [p.read_text() for p in folder.glob("*/weights.bin") if not p.parent.name.startswith(("checkpoint", "."))]
    return {word for text in texts for word in ("old", "new") if word in text}


def published(out: Path, version: str, components=("unet", "vae")) -> None:
    staging = staging_folder(out)
    write_export(staging, version, components)
    publish_export(out, staging)


def test_new_export_replaces_the_old_one_and_keeps_checkpoints(tmp_path):
    out = tmp_path / "run"
    published(out, "old", ("unet", "vae", "safety_checker"))
    (out / "checkpoint-4").mkdir()
    (out / "checkpoint-4" / "model.safetensors").write_text("state")
    (out / "logs").mkdir()
    published(out, "new")
    assert export_version(out) == {"new"}
    assert not (out / "safety_checker").exists()  # an entry only the old export had goes too
    assert (out / "checkpoint-4" / "model.safetensors").read_text() == "state" and (out / "logs").is_dir()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [MANIFEST]
    assert read_manifest(out) == {"state": "complete", "entries": sorted(
        ["README.md", "erase_config.json", "model_index.json", "unet", "vae"])}


SWAP_KILLED = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import erasure.exports as exports
from test_exports import write_export

out = Path(sys.argv[1])
staging = exports.staging_folder(out)
write_export(staging, "new")
real_replace, moved_in = os.replace, []

def replace(src, dst):
    if Path(src).parent == staging:
        moved_in.append(src)
        if len(moved_in) == 2:
            print("swapping", flush=True)
            time.sleep(60)
    real_replace(src, dst)

exports.os.replace = replace
exports.publish_export(out, staging)
"""


def test_kill_during_the_swap_is_finished_by_the_next_run(tmp_path):
    out = tmp_path / "run"
    published(out, "old")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SWAP_KILLED, str(out), str(Path(__file__).parent)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "swapping"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model_index.json").exists()  # half swapped: not loadable, never mixed
    assert read_manifest(out)["state"] == "swapping"
    recover_export(out)
    assert export_version(out) == {"new"}
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [MANIFEST]


def test_incomplete_staging_is_removed_and_the_old_export_stays(tmp_path):
    out = tmp_path / "run"
    published(out, "old")
    killed = out / ".export-999999"  # a run killed while writing its export
    write_export(killed, "new")
    (out / ".export-old-999998").mkdir()
    recover_export(out)
    assert export_version(out) == {"old"}
    assert not killed.exists() and not (out / ".export-old-999998").exists()


def test_first_export_into_a_folder_with_an_unmanaged_export_replaces_it(tmp_path):
    """A folder exported by an older version (no manifest): same-named entries are replaced."""
    out = tmp_path / "run"
    write_export(out, "old")
    published(out, "new")
    assert export_version(out) == {"new"}
