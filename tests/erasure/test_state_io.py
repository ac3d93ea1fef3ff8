"""Method state files: a damaged one is refused naming the file."""

import pytest
import torch

from erasure.state_io import load_state, save_state


def test_round_trip_keeps_tensors_dicts_and_plain_values(tmp_path):
    state = {"mask": {"w": torch.tensor([True, False])}, "reference": torch.arange(3.0), "step": 4, "name": None}
    save_state(state, tmp_path)
    loaded = load_state(tmp_path)
    assert torch.equal(loaded["mask"]["w"], state["mask"]["w"]) and torch.equal(loaded["reference"], torch.arange(3.0))
    assert (loaded["step"], loaded["name"]) == (4, None)


@pytest.mark.parametrize("name", ["method_state.safetensors", "method_state.json"])
def test_truncated_state_file_is_refused_naming_it(tmp_path, name):
    save_state({"mask": {"w": torch.ones(100)}, "step": 4}, tmp_path)
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ValueError, match=str(path)):
        load_state(tmp_path)


def test_missing_json_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="method_state.json"):
        load_state(tmp_path)
