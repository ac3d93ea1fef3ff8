import pytest
import torch
from torch import nn

from erasure.scope import scope_parameters
from erasure.sensitivity import connection_sensitivity, resolve_num_batches


class ThreeWeights(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))

    def forward(self, x):
        return self.lin(x).squeeze(1)


def loss_fn(model, batch):
    x, y = batch
    return (model(x) - y) ** 2


def test_matches_hand_computed_scores():
    model = ThreeWeights()
    x1, x2 = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.0, 1.0, 1.0]])
    batches = [(x1, torch.tensor([0.0])), (x2, torch.tensor([1.0]))]
    # batch 1: pred = 1 + 1 = 2, grad = 2*2*x1 = (4, 0, 8); batch 2: pred = -1.5, grad = 2*(-2.5)*x2 = (0, -5, -5)
    # sum = (4, -5, 3); score = |w * sum| = (4, 10, 1.5)
    params = scope_parameters(model)
    scores = connection_sensitivity(model, loss_fn, batches, params)
    torch.testing.assert_close(scores["lin.weight"], torch.tensor([[4.0, 10.0, 1.5]]))
    assert model.lin.weight.grad is None  # leaves no gradient behind


def test_num_batches_limits_scoring():
    model = ThreeWeights()
    batches = [(torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([0.0]))] * 3
    one = connection_sensitivity(model, loss_fn, batches, scope_parameters(model), num_batches=1)
    torch.testing.assert_close(one["lin.weight"], torch.tensor([[4.0, 0.0, 4.0]]))


def test_empty_loader_is_an_error():
    model = ThreeWeights()
    with pytest.raises(ValueError, match="empty"):
        connection_sensitivity(model, loss_fn, [], scope_parameters(model))


def test_resolve_num_batches():
    assert resolve_num_batches(None, 0.25, 10) == 2  # round(2.5) -> 2 (banker's)
    assert resolve_num_batches(None, 0.01, 10) == 1
    assert resolve_num_batches(5, None, 10) == 5
    with pytest.raises(ValueError, match="sensitivity_fraction"):
        resolve_num_batches(None, 1.5, 10)
