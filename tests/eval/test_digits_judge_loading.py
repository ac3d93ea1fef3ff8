"""load_digits_judge on damaged judge folders: one line naming the file."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from eval.digits_classifier import JUDGE_CONFIG_NAME, JUDGE_WEIGHTS_NAME, DigitsJudge, load_digits_judge


@pytest.fixture
def judge_dir(tmp_path):
    torch.manual_seed(0)
    judge = DigitsJudge().eval()
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, tmp_path / JUDGE_WEIGHTS_NAME)
    (tmp_path / JUDGE_CONFIG_NAME).write_text(json.dumps({"architecture": dataclasses.asdict(judge.config)}))
    return tmp_path


@pytest.mark.parametrize("damage,file,message", [
    ("truncate", JUDGE_WEIGHTS_NAME, "not a readable safetensors file"),
    ("empty", JUDGE_WEIGHTS_NAME, "not a readable safetensors file"),
    ("garbage", JUDGE_CONFIG_NAME, "not a build_digits_judge config"),
    ("no_architecture", JUDGE_CONFIG_NAME, "not a build_digits_judge config"),
])
def test_a_damaged_judge_is_one_line_naming_the_file(judge_dir, damage, file, message):
    assert isinstance(load_digits_judge(judge_dir), DigitsJudge)  # sound before the damage
    path = judge_dir / file
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"{nope",
                      "no_architecture": b"{}"}[damage])
    with pytest.raises(ValueError, match=message) as info:
        load_digits_judge(judge_dir)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
