"""ClassificationJobConfig bounds and --original_model checks, before any work."""

import pytest
import torch
from safetensors.torch import save_file

from classification.unlearn import ClassificationJobConfig


@pytest.mark.parametrize("changes,message", [
    ({"max_grad_norm": -0.5}, r"max_grad_norm=-0.5 is out of range; allowed: \[0, inf\]"),
    ({"checkpoints_total_limit": -2}, r"checkpoints_total_limit=-2 is out of range"),
    ({"checkpointing_steps": 0}, r"checkpointing_steps=0 is out of range"),
    ({"seed": -1}, r"seed=-1 is out of range"),
    ({"forget_fraction": float("nan")}, r"forget_fraction=nan must be a finite number"),
    ({"pretrain_lr": 0.0}, r"pretrain_lr=0.0 is out of range; allowed: \(0, inf\]"),
    ({"mixed_precision": "fp8"}, r"mixed_precision='fp8' must be one of \['no', 'fp16', 'bf16'\]"),
])
def test_out_of_bounds_options_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        ClassificationJobConfig(**changes)


def test_a_truncated_or_pickled_original_model_is_refused(tmp_path):
    path = tmp_path / "original.safetensors"
    save_file({"w": torch.ones(100)}, str(path))
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(ValueError, match=rf"original_model {path}: not a readable safetensors file"):
        ClassificationJobConfig(original_model=str(path))
    pickled = tmp_path / "original.pt"
    torch.save({"w": torch.ones(1)}, pickled)
    with pytest.raises(ValueError, match=rf"original_model={pickled}: only .safetensors weights are loaded"):
        ClassificationJobConfig(original_model=str(pickled))
