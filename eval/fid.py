"""Fréchet distance (FID) and kernel distance (KID) over a pluggable feature extractor.

Both wrap torchmetrics' metrics and add: one input convention (uint8 in [0, 255] or float in
[0, 1], told apart by dtype), Inception-v3 features only when torch-fidelity is installed, and
reference statistics (mean, covariance, count) cached as safetensors keyed by the reference
set's hash and the extractor's fingerprint. `frechet_distance` is the NumPy/SciPy reference.

A custom extractor is an `nn.Module` mapping float32 images in [0, 1] to (N, num_features); give
it a `num_features` attribute (torchmetrics otherwise probes it with a random image of
`input_img_size`) and optionally a `name`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

logger = logging.getLogger(__name__)

INCEPTION_EXTRACTOR = "inception-v3-compat-2048"  # torch-fidelity's FID weights, pool3 features
_STATS_FORMAT = "scissorhands-fid-reference-v1"


def _inception_or_raise(feature: nn.Module | None) -> int | nn.Module:
    if feature is not None:
        return feature.eval()
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ImportError(
            "Inception-v3 FID features need torch-fidelity: pip install scissorhands[fid-inception] "
            "(it pulls torchvision), or pass `feature=` an nn.Module extractor with a `num_features` attribute"
        )
    return 2048


def _canonical_images(imgs: Tensor, to_uint8: bool) -> Tensor:
    """uint8 [0, 255] or float [0, 1] -> uint8 (Inception) or float32 [0, 1] (custom extractors)."""
    if imgs.dtype == torch.uint8:
        return imgs if to_uint8 else imgs.float() / 255.0
    if not imgs.is_floating_point():
        raise ValueError(f"Images must be uint8 in [0, 255] or float in [0, 1], got dtype {imgs.dtype}")
    low, high = float(imgs.min()), float(imgs.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"Float images must lie in [0, 1] (map [-1, 1] with (x + 1) / 2), got [{low}, {high}]")
    return (imgs * 255.0).round().to(torch.uint8) if to_uint8 else imgs.float()


def extractor_fingerprint(feature: nn.Module) -> str:
    """`name` (or class name) plus a hash of the state dict: equal only for equal weights."""
    digest = hashlib.sha256()
    for key, value in sorted(feature.state_dict().items()):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return f"{getattr(feature, 'name', type(feature).__name__)}-{digest.hexdigest()[:16]}"


def reference_set_hash(paths: Iterable[str | os.PathLike]) -> str:
    """Content hash of a set of files, independent of their names and order (as FID is).

    Args:
        paths: the reference image files.

    Returns:
        Hex SHA-256 over the sorted per-file SHA-256 digests.
    """
    digests = sorted(hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


@dataclass
class ReferenceStats:
    """Gaussian statistics of a reference set's features (float64)."""

    mean: Tensor
    cov: Tensor
    num_samples: int
    extractor: str
    reference_id: str

    def __post_init__(self) -> None:
        dim = self.mean.shape[0]
        if self.mean.ndim != 1 or tuple(self.cov.shape) != (dim, dim):
            shapes = f"{tuple(self.mean.shape)} and {tuple(self.cov.shape)}"
            raise ValueError(f"mean must be (d,) and cov (d, d), got {shapes}")
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {self.num_samples}")

    def save(self, path: str | Path) -> Path:
        """Write mean, cov and num_samples as safetensors, with extractor and reference id in metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"mean": self.mean.double().contiguous(), "cov": self.cov.double().contiguous()}
        tensors["num_samples"] = torch.tensor([self.num_samples], dtype=torch.int64)
        metadata = {"format": _STATS_FORMAT, "extractor": self.extractor, "reference_id": self.reference_id}
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceStats:
        """Read statistics written by `save`.

        Raises:
            ValueError: the file is not a scissorhands FID reference.
        """
        from erasure.tensor_files import read_tensor_metadata, read_tensors

        _, metadata = read_tensor_metadata(path, "FID reference statistics")
        if metadata.get("format") != _STATS_FORMAT:
            raise ValueError(f"{path} is not a {_STATS_FORMAT} file (metadata: {metadata})")
        tensors = read_tensors(path, "FID reference statistics")
        num_samples = int(tensors["num_samples"][0])
        return cls(tensors["mean"], tensors["cov"], num_samples, metadata["extractor"], metadata["reference_id"])


def reference_cache_path(cache_dir: str | Path, reference_id: str, extractor: str) -> Path:
    """Cache file of a reference set's statistics under one extractor."""
    key = hashlib.sha256(f"{reference_id}\0{extractor}".encode()).hexdigest()[:20]
    return Path(cache_dir) / f"fid-reference-{key}.safetensors"


class FrechetDistance(FrechetInceptionDistance):
    """FID between real (reference) and generated images over any feature extractor.

    `update(imgs, real)` takes (N, C, H, W) images, uint8 in [0, 255] or float in [0, 1]; both
    give the same features. Custom extractors receive float32 [0, 1]; Inception receives uint8.

    Args:
        feature: extractor module; None uses torchmetrics' Inception-v3 (needs torch-fidelity).
        reset_real_features: whether `reset()` also clears the reference statistics.
        input_img_size: probe shape when the extractor has no `num_features`.
        **kwargs: torchmetrics `Metric` options.

    Raises:
        ImportError: `feature=None` without torch-fidelity.
    """

    def __init__(
        self,
        feature: nn.Module | None = None,
        reset_real_features: bool = True,
        input_img_size: tuple[int, int, int] = (3, 299, 299),
        **kwargs: Any,
    ) -> None:
        extractor = _inception_or_raise(feature)
        # normalize=True makes torchmetrics probe a custom extractor with float [0, 1] images.
        super().__init__(
            extractor, reset_real_features, normalize=feature is not None, input_img_size=input_img_size, **kwargs
        )
        self.extractor_name = INCEPTION_EXTRACTOR if feature is None else extractor_fingerprint(feature)

    def update(self, imgs: Tensor, real: bool) -> None:
        """Add a batch of real (reference) or generated images."""
        super().update(_canonical_images(imgs, to_uint8=not self.used_custom_model), real)

    def reference_stats(self, reference_id: str) -> ReferenceStats:
        """Mean and covariance of the real features seen so far (unbiased covariance, as torchmetrics)."""
        n = int(self.real_features_num_samples)
        if n < 2:
            raise RuntimeError(f"Need at least 2 real images for reference statistics, got {n}")
        mean = self.real_features_sum / n
        cov = (self.real_features_cov_sum - n * torch.outer(mean, mean)) / (n - 1)
        return ReferenceStats(mean.cpu(), cov.cpu(), n, self.extractor_name, reference_id)

    def set_reference_stats(self, stats: ReferenceStats) -> None:
        """Use saved statistics as the real side; they then survive `reset()`.

        Raises:
            ValueError: statistics from another extractor or feature size.
        """
        if stats.extractor != self.extractor_name:
            raise ValueError(
                f"Reference stats are for extractor {stats.extractor!r}, this metric uses {self.extractor_name!r}"
            )
        if stats.mean.shape != self.real_features_sum.shape:
            raise ValueError(
                f"Reference stats have {stats.mean.shape[0]} features, expected {self.real_features_sum.shape[0]}"
            )
        n, device = stats.num_samples, self.real_features_sum.device
        mean, cov = stats.mean.double().to(device), stats.cov.double().to(device)
        # Invert `reference_stats`: sums the torchmetrics state accumulates.
        self.real_features_sum = mean * n
        self.real_features_cov_sum = cov * (n - 1) + n * torch.outer(mean, mean)
        self.real_features_num_samples = torch.tensor(n, dtype=torch.long, device=device)
        self.reset_real_features = False
        self._computed = None  # torchmetrics' cached `compute()` result is stale now

    def prepare_reference(
        self, reference_id: str, images: Iterable[Tensor], cache_dir: str | Path | None = None
    ) -> ReferenceStats:
        """Load the reference statistics from the cache, or compute them from `images` and cache them.

        Args:
            reference_id: identifies the reference set, e.g. `reference_set_hash(paths)`.
            images: batches of reference images; only iterated on a cache miss.
            cache_dir: where statistics are cached; None computes without caching.

        Returns:
            The statistics now used as the real side of this metric.
        """
        path = None if cache_dir is None else reference_cache_path(cache_dir, reference_id, self.extractor_name)
        if path is not None and path.is_file():
            logger.info("Loading FID reference statistics from %s", path)
            stats = ReferenceStats.load(path)
        else:
            for batch in images:
                self.update(batch, real=True)
            stats = self.reference_stats(reference_id)
            if path is not None:
                logger.info("Caching FID reference statistics (%d images) at %s", stats.num_samples, path)
                stats.save(path)
        self.set_reference_stats(stats)
        return stats


class KernelDistance(KernelInceptionDistance):
    """KID with the same extractor contract and input convention as `FrechetDistance`.

    Args:
        feature: extractor module; None uses Inception-v3 (needs torch-fidelity).
        **kwargs: torchmetrics `KernelInceptionDistance` options (subsets, subset_size, ...).
    """

    def __init__(self, feature: nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(feature=_inception_or_raise(feature), normalize=False, **kwargs)
        self.extractor_name = INCEPTION_EXTRACTOR if feature is None else extractor_fingerprint(feature)

    def update(self, imgs: Tensor, real: bool) -> None:
        """Add a batch of real (reference) or generated images."""
        super().update(_canonical_images(imgs, to_uint8=not self.used_custom_model), real)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) with SciPy's sqrtm (pytorch-fid's recipe).

    Raises:
        ValueError: mismatched shapes, or a covariance product with a large imaginary square root.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"Shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # Singular product: add eps to the diagonals, as pytorch-fid does.
        logger.warning("Singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(mu1.size) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(sigma1 @ sigma2)")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
