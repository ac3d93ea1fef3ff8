import pytest
from torch import nn

from erasure.scope import scope_parameters


def _model():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2), nn.LayerNorm(2))


def test_default_scope_is_conv_and_linear():
    names = list(scope_parameters(_model()))
    assert names == ["0.weight", "0.bias", "3.weight", "3.bias"]


def test_patterns_narrow_the_scope():
    assert list(scope_parameters(_model(), include=("*weight",))) == ["0.weight", "3.weight"]
    assert list(scope_parameters(_model(), exclude=("0.*",))) == ["3.weight", "3.bias"]
    assert "1.weight" in scope_parameters(_model(), module_types=None)


def test_frozen_parameters_are_skipped():
    model = _model()
    model[0].weight.requires_grad_(False)
    assert "0.weight" not in scope_parameters(model)


def test_empty_scope_names_the_patterns():
    with pytest.raises(ValueError, match=r"include=\['\*attn2\*'\]"):
        scope_parameters(_model(), include=("*attn2*",))
