import pytest
import torch
from torch import nn

from classification.data import IndexedTensorDataset, load_dataset
from classification.metrics import accuracy
from classification.models import MODELS, build_model


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "in_channels", "size", "low", "high"),
    [
        ("resnet18", 3, 32, 11.0e6, 11.3e6),
        ("resnet20", 3, 32, 0.26e6, 0.28e6),
        ("resnet32", 3, 32, 0.45e6, 0.48e6),
        ("digits_cnn", 1, 8, 0.1e6, 0.2e6),
    ],
)
def test_output_shape_and_parameter_count(name, in_channels, size, low, high):
    model = build_model(name, num_classes=7, in_channels=in_channels)
    logits = model(torch.randn(2, in_channels, size, size))
    assert logits.shape == (2, 7)
    assert low < num_parameters(model) < high


def test_resnet_accepts_other_input_channels():
    model = build_model("resnet20", num_classes=10, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_weights_live_in_plain_conv_linear_batchnorm(name):
    model = build_model(name, num_classes=10)
    plain = (nn.Conv2d, nn.Linear, nn.BatchNorm2d)
    scoped = {id(p) for m in model.modules() if isinstance(m, plain) for p in m.parameters(recurse=False)}
    assert scoped == {id(p) for p in model.parameters()}


def test_resnet20_shortcuts_are_option_b():
    model = build_model("resnet20", num_classes=10)
    projections = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    shapes = [(p.in_channels, p.out_channels, p.stride) for p in projections]
    assert shapes == [(16, 32, (2, 2)), (32, 64, (2, 2))]


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError, match=r"model='vgg'.*digits_cnn.*resnet18.*resnet20.*resnet32"):
        build_model("vgg", num_classes=10)


def test_non_positive_num_classes_is_rejected():
    with pytest.raises(ValueError, match="num_classes=0"):
        build_model("resnet20", num_classes=0)


@pytest.fixture
def single_thread():
    # Small convs on a shared 2-core machine run several times faster on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_digits_cnn_learns_sklearn_digits(single_thread):
    torch.manual_seed(0)
    splits = load_dataset("digits", seed=0)
    model = build_model("digits_cnn", splits.num_classes, splits.in_channels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train_set = IndexedTensorDataset(splits.train_x, splits.train_y)
    loader = torch.utils.data.DataLoader(train_set, batch_size=128, shuffle=True)
    for _ in range(6):
        for batch in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(batch["x"]), batch["y"]).backward()
            optimizer.step()
    test_set = IndexedTensorDataset(splits.test_x, splits.test_y)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=450)
    assert accuracy(model, test_loader) > 0.95
