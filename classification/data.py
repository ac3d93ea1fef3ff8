"""Datasets and forget/retain splits for classifier unlearning.

Every dataset loads into memory as normalised float32 tensors of shape (N, C, H, W) with
int64 labels. Files are only read, never downloaded: CIFAR from its *binary* distribution
(parsed with numpy, never with pickle), SVHN from its ``.mat`` files, and scikit-learn's
digits from the copy bundled with scikit-learn (offline, for tests and quick runs).

Example:
    >>> splits = load_dataset("digits", seed=0)
    >>> forget_idx, retain_idx = split_forget(splits.train_y, mode="class", classes=[3])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

# Standard per-channel statistics of the training sets (on pixels scaled to [0, 1]).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)

CIFAR_PIXELS = 3 * 32 * 32


@dataclass
class DatasetSplits:
    """A dataset's train and test tensors.

    Attributes:
        train_x: Normalised float32 images, shape (N_train, C, H, W).
        train_y: int64 labels, shape (N_train,).
        test_x: Normalised float32 images, shape (N_test, C, H, W).
        test_y: int64 labels, shape (N_test,).
        num_classes: Number of classes.
        in_channels: Image channels (C).
        name: The registry name of the dataset.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    in_channels: int
    name: str

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.ndim != 4 or len(x) != len(y):
                raise ValueError(
                    f"{split}_x must be (N, C, H, W) with N = len({split}_y); "
                    f"got shapes {tuple(x.shape)} and {tuple(y.shape)}"
                )


class IndexedTensorDataset(Dataset):
    """Tensors as a dataset of dicts ``{"x", "y", "index"}``.

    The index lets a method attach per-sample state, e.g. a fixed random label.

    Args:
        x: Inputs, first dimension indexes samples.
        y: Labels, same length as ``x``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length; got {len(x)} and {len(y)}")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        return {"x": self.x[i], "y": self.y[i], "index": i}


def _normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float32 tensor scaled to [0, 1] and standardised per channel."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def _require(root: str | None, relative: str, source: str, dataset: str) -> Path:
    """Path of an expected data file, or an error that says how to get it (``source``)."""
    hint = f"{source} and pass that folder as --data_dir (nothing is downloaded automatically)"
    if root is None:
        raise ValueError(f"root=None: dataset {dataset!r} is read from disk; {hint}")
    path = Path(root) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: expected file {path} is missing; {hint}")
    return path


def _read_cifar_binary(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR binary file: records of ``label_bytes`` label bytes + 3072 pixel bytes.

    Returns the last label byte of each record (the fine label for CIFAR-100) and the
    images as uint8 (N, 3, 32, 32).
    """
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + CIFAR_PIXELS
    if raw.size == 0 or raw.size % record:
        raise ValueError(f"{path}: size {raw.size} bytes is not a multiple of the {record}-byte record")
    records = raw.reshape(-1, record)
    labels = records[:, label_bytes - 1].astype(np.int64)
    return labels, records[:, label_bytes:].reshape(-1, 3, 32, 32)


def _cifar_splits(
    root: str | None, name: str, files: dict[str, list[str]], label_bytes: int,
    num_classes: int, stats: tuple[Sequence[float], Sequence[float]], source: str,
) -> DatasetSplits:
    """Read the CIFAR binary files listed per split and normalise them with ``stats``."""
    arrays = {}
    for split, relatives in files.items():
        parts = [_read_cifar_binary(_require(root, rel, source, name), label_bytes) for rel in relatives]
        labels = np.concatenate([p[0] for p in parts])
        arrays[split] = (_normalise(np.concatenate([p[1] for p in parts]), *stats), torch.from_numpy(labels))
    logger.info("Loaded %s: %d train, %d test", name, len(arrays["train"][1]), len(arrays["test"][1]))
    return DatasetSplits(*arrays["train"], *arrays["test"], num_classes=num_classes, in_channels=3, name=name)


def load_cifar10(root: str | None, seed: int = 0) -> DatasetSplits:
    """CIFAR-10 from ``root/cifar-10-batches-bin`` (the binary version). ``seed`` is unused."""
    folder = "cifar-10-batches-bin"
    files = {
        "train": [f"{folder}/data_batch_{i}.bin" for i in range(1, 6)],
        "test": [f"{folder}/test_batch.bin"],
    }
    source = "download https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz, unpack it into a folder"
    return _cifar_splits(root, "cifar10", files, 1, 10, (CIFAR10_MEAN, CIFAR10_STD), source)


def load_cifar100(root: str | None, seed: int = 0) -> DatasetSplits:
    """CIFAR-100 (fine labels) from ``root/cifar-100-binary``. ``seed`` is unused."""
    files = {"train": ["cifar-100-binary/train.bin"], "test": ["cifar-100-binary/test.bin"]}
    source = "download https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz, unpack it into a folder"
    # Records hold a coarse then a fine label byte; the fine label is the 100-way one.
    return _cifar_splits(root, "cifar100", files, 2, 100, (CIFAR100_MEAN, CIFAR100_STD), source)


def load_svhn(root: str | None, seed: int = 0) -> DatasetSplits:
    """SVHN (cropped digits) from ``root/{train,test}_32x32.mat``. ``seed`` is unused."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    source = (
        "download train_32x32.mat and test_32x32.mat (format 2) from "
        "http://ufldl.stanford.edu/housenumbers/ into a folder"
    )
    arrays = {}
    for split in ("train", "test"):
        path = _require(root, f"{split}_32x32.mat", source, "svhn")
        try:
            mat = loadmat(path)
            images = np.transpose(mat["X"], (3, 2, 0, 1))  # H, W, C, N -> N, C, H, W
        except (MatReadError, ValueError, KeyError, NotImplementedError, TypeError) as err:
            raise ValueError(f"{path}: not SVHN's {split}_32x32.mat (format 2) with 'X' [32, 32, 3, N] and 'y' "
                             f"({type(err).__name__}: {' '.join(str(err).split())[:120]}); {source}") from None
        labels = mat["y"].reshape(-1).astype(np.int64)
        labels[labels == 10] = 0  # SVHN stores the digit 0 as label 10
        arrays[split] = (_normalise(images, SVHN_MEAN, SVHN_STD), torch.from_numpy(labels))
    return DatasetSplits(*arrays["train"], *arrays["test"], num_classes=10, in_channels=3, name="svhn")


def load_digits(root: str | None = None, seed: int = 0) -> DatasetSplits:
    """scikit-learn's 1797 8x8 digits, stratified 75/25 split from ``seed``. ``root`` is unused.

    Pixels are scaled to [0, 1], then standardised with the train split's mean and std.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = bunch.data.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0
    train_x, test_x, train_y, test_y = train_test_split(
        images, bunch.target.astype(np.int64), test_size=0.25, stratify=bunch.target, random_state=seed
    )
    mean, std = train_x.mean(), train_x.std()
    return DatasetSplits(
        torch.from_numpy((train_x - mean) / std), torch.from_numpy(train_y),
        torch.from_numpy((test_x - mean) / std), torch.from_numpy(test_y),
        num_classes=10, in_channels=1, name="digits",
    )


DATASETS: dict[str, Callable[[str | None, int], DatasetSplits]] = {
    "digits": load_digits,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
}


def load_dataset(name: str, root: str | None = None, seed: int = 0) -> DatasetSplits:
    """Load a registered dataset into memory.

    Args:
        name: A key of ``DATASETS``.
        root: Folder holding the dataset's files (unused for ``digits``).
        seed: Seed of the train/test split where the dataset has none of its own.

    Returns:
        The dataset's ``DatasetSplits``.

    Raises:
        ValueError: If ``name`` is unknown, or ``root`` is None for an on-disk dataset.
        FileNotFoundError: If an expected file is missing (the message names it).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is unknown; choose one of {sorted(DATASETS)}")
    return DATASETS[name](root, seed)


def _random_forget(train_y: torch.Tensor, fraction: float, classes: Sequence[int], seed: int) -> torch.Tensor:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction} must lie strictly between 0 and 1 for mode='random'")
    count = round(fraction * len(train_y))
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(len(train_y), generator=generator)[:count]


def _class_forget(train_y: torch.Tensor, fraction: float, classes: Sequence[int], seed: int) -> torch.Tensor:
    num_classes = int(train_y.max()) + 1
    for label in classes:
        if not 0 <= label < num_classes:
            raise ValueError(f"classes contains {label}; class ids must lie in [0, {num_classes - 1}]")
    return torch.isin(train_y, torch.as_tensor(list(classes), dtype=train_y.dtype)).nonzero().flatten()


FORGET_MODES: dict[str, Callable[[torch.Tensor, float, Sequence[int], int], torch.Tensor]] = {
    "random": _random_forget,
    "class": _class_forget,
}


def split_forget(
    train_y: torch.Tensor,
    mode: str,
    fraction: float = 0.1,
    classes: Sequence[int] = (),
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the training set into a forget set D_f and a retain set D_r.

    Args:
        train_y: Training labels, shape (N,).
        mode: ``"random"`` (a random ``fraction`` of all samples, the random-data forgetting
            of papers 000/004) or ``"class"`` (every sample of ``classes``).
        fraction: Share of the training set to forget in ``"random"`` mode, in (0, 1).
        classes: Class ids to forget in ``"class"`` mode.
        seed: Seed of the random selection.

    Returns:
        ``(forget_idx, retain_idx)``: sorted int64 indices into the training set.

    Raises:
        ValueError: On an unknown mode, a fraction outside (0, 1), a class id out of range,
            or a forget set that is empty or the whole training set.
    """
    if mode not in FORGET_MODES:
        raise ValueError(f"mode={mode!r} is unknown; choose one of {sorted(FORGET_MODES)}")
    forget_idx = FORGET_MODES[mode](train_y, fraction, classes, seed)
    request = f"mode={mode!r} (fraction={fraction}, classes={list(classes)})"
    if len(forget_idx) == 0:
        raise ValueError(f"{request} selects no sample to forget")
    if len(forget_idx) == len(train_y):
        raise ValueError(
            f"{request} selects the whole training set ({len(train_y)} samples); leave something to retain"
        )
    is_forget = torch.zeros(len(train_y), dtype=torch.bool)
    is_forget[forget_idx] = True
    return is_forget.nonzero().flatten(), (~is_forget).nonzero().flatten()
