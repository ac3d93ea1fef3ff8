import math

import pytest
import torch
from torch import nn

from erasure.reinit import INITIALIZERS, reinitialize_


def _params():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    return {"w.weight": layer.weight, "w.bias": layer.bias}


@pytest.mark.parametrize("init", sorted(INITIALIZERS))
def test_only_selected_entries_change(init):
    params = _params()
    before = {k: v.detach().clone() for k, v in params.items()}
    masks = {k: torch.rand(v.shape, generator=torch.Generator().manual_seed(1)) < 0.3 for k, v in params.items()}
    changed = reinitialize_(params, masks, init=init, value=0.5)
    assert changed == sum(int(m.sum()) for m in masks.values())
    for k in params:
        assert torch.equal(params[k][~masks[k]], before[k][~masks[k]])
    assert torch.equal(params["w.bias"][masks["w.bias"]], torch.zeros(int(masks["w.bias"].sum())))


def test_kaiming_uniform_bound_and_determinism():
    a, b = _params(), _params()
    full = {k: torch.ones_like(v, dtype=torch.bool) for k, v in a.items()}
    reinitialize_(a, full, seed=3)
    reinitialize_(b, full, seed=3)
    assert torch.equal(a["w.weight"], b["w.weight"])
    assert a["w.weight"].abs().max() <= 1 / math.sqrt(16)
    c = _params()
    reinitialize_(c, full, seed=4)
    assert not torch.equal(a["w.weight"], c["w.weight"])


def test_constant_and_keep_bias():
    params = _params()
    bias_before = params["w.bias"].detach().clone()
    full = {k: torch.ones_like(v, dtype=torch.bool) for k, v in params.items()}
    reinitialize_(params, full, init="constant", bias_init="keep", value=1.0)
    assert torch.equal(params["w.weight"], torch.ones(8, 16))
    assert torch.equal(params["w.bias"], bias_before)


def test_unknown_scheme():
    with pytest.raises(ValueError, match="init='xavier'"):
        reinitialize_(_params(), {}, init="xavier")
