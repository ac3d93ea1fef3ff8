"""FID / KID over a tiny linear extractor, checked against the SciPy reference."""

import importlib.util
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

from eval.fid import (
    FrechetDistance,
    KernelDistance,
    ReferenceStats,
    extractor_fingerprint,
    frechet_distance,
    reference_cache_path,
    reference_set_hash,
)

NO_FIDELITY = importlib.util.find_spec("torch_fidelity") is None


class TinyFeatures(nn.Module):
    """Flatten (N, 3, 4, 4) images and project to 6 features."""

    num_features = 6

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.linear = nn.Linear(3 * 4 * 4, self.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def images(low: int, high: int, n: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, 3, 4, 4), generator=generator, dtype=torch.uint8)


def scipy_fid(extractor: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> float:
    with torch.no_grad():
        f_real = extractor(real.float() / 255).double().numpy()
        f_fake = extractor(fake.float() / 255).double().numpy()
    return frechet_distance(f_real.mean(0), np.cov(f_real, rowvar=False), f_fake.mean(0), np.cov(f_fake, rowvar=False))


def fid(extractor: nn.Module, real: torch.Tensor, fake: torch.Tensor, batch: int = 16) -> float:
    metric = FrechetDistance(extractor)
    for start in range(0, len(real), batch):
        metric.update(real[start : start + batch], real=True)
    for start in range(0, len(fake), batch):
        metric.update(fake[start : start + batch], real=False)
    return float(metric.compute())


def test_frechet_distance_by_hand():
    # 1-D: (0 - 2)^2 + 1 + 4 - 2 * sqrt(1 * 4) = 5
    assert frechet_distance(np.zeros(1), np.eye(1), np.full(1, 2.0), 4 * np.eye(1)) == pytest.approx(5.0)
    # Diagonal covariances: sum of (sqrt(a) - sqrt(b))^2 plus the mean term.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 3.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(np.ones(3), np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="Shape"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_fid_matches_scipy_reference():
    extractor = TinyFeatures()
    real, fake = images(0, 200), images(60, 256, n=48, seed=1)
    expected = scipy_fid(extractor, real, fake)
    assert expected > 0.01
    assert fid(extractor, real, fake) == pytest.approx(expected, rel=1e-4)


def test_fid_of_a_set_with_itself_is_zero():
    real = images(0, 256)
    assert abs(fid(TinyFeatures(), real, real)) < 1e-4


def test_uint8_and_float_inputs_agree():
    extractor = TinyFeatures()
    real, fake = images(0, 200), images(60, 256, seed=1)
    from_uint8 = fid(extractor, real, fake)
    from_float = fid(extractor, real.float() / 255, fake.double() / 255)
    assert from_float == pytest.approx(from_uint8, rel=1e-6)


def test_bad_inputs_raise():
    metric = FrechetDistance(TinyFeatures())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric.update(torch.full((2, 3, 4, 4), -1.0), real=True)
    with pytest.raises(ValueError, match="dtype"):
        metric.update(torch.zeros((2, 3, 4, 4), dtype=torch.int32), real=True)


@pytest.mark.skipif(not NO_FIDELITY, reason="torch-fidelity is installed")
def test_default_inception_needs_torch_fidelity():
    with pytest.raises(ImportError, match=r"scissorhands\[fid-inception\]") as info:
        FrechetDistance()
    assert "feature=" in str(info.value)
    with pytest.raises(ImportError, match=r"scissorhands\[fid-inception\]"):
        KernelDistance()
    assert "torchvision" not in sys.modules


def test_extractor_fingerprint_follows_weights():
    assert extractor_fingerprint(TinyFeatures(0)) == extractor_fingerprint(TinyFeatures(0))
    assert extractor_fingerprint(TinyFeatures(0)) != extractor_fingerprint(TinyFeatures(1))
    assert extractor_fingerprint(TinyFeatures(0)).startswith("TinyFeatures-")


def test_reference_stats_round_trip(tmp_path):
    extractor = TinyFeatures()
    real, fake = images(0, 200), images(60, 256, seed=1)
    metric = FrechetDistance(extractor)
    metric.update(real, real=True)
    stats = metric.reference_stats("ref")
    loaded = ReferenceStats.load(stats.save(tmp_path / "ref.safetensors"))
    assert loaded.num_samples == 64 and loaded.extractor == metric.extractor_name and loaded.reference_id == "ref"
    torch.testing.assert_close(loaded.cov, stats.cov)
    fresh = FrechetDistance(extractor)
    fresh.set_reference_stats(loaded)
    fresh.update(fake, real=False)
    assert float(fresh.compute()) == pytest.approx(fid(extractor, real, fake), rel=1e-6)
    fresh.reset()  # loaded statistics survive a reset
    fresh.update(fake, real=False)
    assert float(fresh.compute()) == pytest.approx(fid(extractor, real, fake), rel=1e-6)


def test_reference_stats_reject_other_extractor():
    metric = FrechetDistance(TinyFeatures(0))
    metric.update(images(0, 256), real=True)
    with pytest.raises(ValueError, match="extractor"):
        FrechetDistance(TinyFeatures(1)).set_reference_stats(metric.reference_stats("ref"))


def test_prepare_reference_uses_the_cache(tmp_path):
    extractor, real, fake = TinyFeatures(), images(0, 200), images(60, 256, seed=1)
    consumed = []

    def batches():
        for start in range(0, 64, 16):
            consumed.append(start)
            yield real[start : start + 16]

    first = FrechetDistance(extractor)
    first.prepare_reference("coco-subset", batches(), cache_dir=tmp_path)
    assert consumed == [0, 16, 32, 48]
    assert reference_cache_path(tmp_path, "coco-subset", first.extractor_name).is_file()
    second = FrechetDistance(extractor)
    stats = second.prepare_reference("coco-subset", batches(), cache_dir=tmp_path)
    assert consumed == [0, 16, 32, 48] and stats.num_samples == 64  # served from the cache
    for metric in (first, second):
        metric.update(fake, real=False)
    assert float(second.compute()) == pytest.approx(float(first.compute()), rel=1e-6)
    assert reference_cache_path(tmp_path, "coco-subset", "other") != reference_cache_path(tmp_path, "coco-subset", "x")


def test_reference_set_hash_ignores_order_and_names(tmp_path):
    paths = []
    for i, content in enumerate([b"a", b"b", b"c"]):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(content)
    renamed = tmp_path / "renamed.png"
    renamed.write_bytes(b"a")
    assert reference_set_hash(paths) == reference_set_hash([paths[2], paths[1], renamed])
    paths[0].write_bytes(b"changed")
    assert reference_set_hash(paths) != reference_set_hash([paths[2], paths[1], renamed])


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_with_custom_extractor():
    extractor = TinyFeatures()
    real, fake = images(0, 200), images(60, 256, seed=1)

    def kid(real_batch, fake_batch):
        metric = KernelDistance(extractor, subsets=4, subset_size=32)
        metric.update(real_batch, real=True)
        metric.update(fake_batch, real=False)
        torch.manual_seed(0)
        return float(metric.compute()[0])

    different, same = kid(real, fake), kid(real, real)
    assert math.isfinite(different) and different > same
    assert kid(real.float() / 255, fake.float() / 255) == pytest.approx(different, rel=1e-6)
