"""Reading safetensors files: a damaged file is one ValueError naming it, pickles are never read."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from erasure.output import load_model_weights
from erasure.tensor_files import check_tensor_file, read_tensor_metadata, read_tensors


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.ones(3, 4), "bias": torch.zeros(3)}, str(path), metadata={"resolution": "32"})
    return path


def test_a_sound_file_reads_back(weights):
    assert read_tensor_metadata(weights) == (["bias", "weight"], {"resolution": "32"})
    assert torch.equal(read_tensors(weights)["weight"], torch.ones(3, 4))


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_a_damaged_file_is_one_line_naming_it(weights, damage):
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) - 5], "empty": b"", "text": b"hello world, no tensors"}[damage])
    for read in (check_tensor_file, read_tensors):
        with pytest.raises(ValueError, match="not a readable safetensors file") as info:
            read(weights, "cached latents")
        assert f"cached latents {weights}:" in str(info.value) and "\n" not in str(info.value)


def test_pickled_and_missing_files_are_refused(tmp_path):
    pickled = tmp_path / "model.bin"
    torch.save({"w": torch.ones(1)}, pickled)
    with pytest.raises(ValueError, match=r"model.bin: pickled weights are not loaded"):
        read_tensors(pickled)
    with pytest.raises(FileNotFoundError, match="nope.safetensors: no such file"):
        read_tensors(tmp_path / "nope.safetensors")


def test_load_model_weights_names_a_truncated_or_misfit_file(weights):
    model = nn.Linear(4, 3)
    assert torch.equal(load_model_weights(model, weights).weight, torch.ones(3, 4))
    with pytest.raises(ValueError, match=rf"model weights {weights} do not fit Linear"):
        load_model_weights(nn.Linear(5, 3), weights)
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(ValueError, match=rf"model weights {weights}: not a readable safetensors file"):
        load_model_weights(model, weights)
