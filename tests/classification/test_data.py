import numpy as np
import pytest
import torch

from classification.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    SVHN_MEAN,
    SVHN_STD,
    DatasetSplits,
    IndexedTensorDataset,
    load_dataset,
    split_forget,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_digits_shapes_and_dtypes(digits):
    assert digits.train_x.shape == (1347, 1, 8, 8) and digits.test_x.shape == (450, 1, 8, 8)
    assert digits.train_x.dtype == torch.float32 and digits.train_y.dtype == torch.int64
    assert (digits.num_classes, digits.in_channels, digits.name) == (10, 1, "digits")


def test_digits_standardised_with_train_statistics(digits):
    assert abs(digits.train_x.mean().item()) < 1e-5
    assert digits.train_x.std().item() == pytest.approx(1.0, abs=1e-3)
    # The test split reuses the train statistics, so it is only roughly standardised.
    assert abs(digits.test_x.mean().item()) < 0.1


def test_digits_split_is_stratified_and_seeded(digits):
    per_class = torch.bincount(digits.train_y) + torch.bincount(digits.test_y)
    assert (torch.bincount(digits.test_y) - 0.25 * per_class).abs().max() <= 1.0  # 25% of every class
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(again.train_x, digits.train_x) and torch.equal(again.test_y, digits.test_y)
    assert not torch.equal(other.train_y, digits.train_y)


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match=r"dataset='mnist'.*cifar10.*cifar100.*digits.*svhn"):
        load_dataset("mnist")


def test_on_disk_dataset_without_root_asks_for_data_dir():
    with pytest.raises(ValueError, match="--data_dir"):
        load_dataset("cifar10", root=None)


def write_cifar_file(path, labels, label_bytes, first_pixels):
    """Records of ``label_bytes`` label bytes and 3072 pixels, all equal to the record's pixel value."""
    records = np.zeros((len(labels), label_bytes + 3072), dtype=np.uint8)
    for row, (label, pixel) in enumerate(zip(labels, first_pixels)):
        records[row, :label_bytes] = label
        records[row, label_bytes:] = pixel
    path.parent.mkdir(parents=True, exist_ok=True)
    records.tofile(path)


def test_cifar10_binary_reader(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    for batch in range(1, 6):
        write_cifar_file(folder / f"data_batch_{batch}.bin", [batch, 9], 1, [0, 255])
    records = np.zeros((1, 3073), dtype=np.uint8)
    records[0, 0] = 4
    records[0, 1:] = np.repeat([10, 20, 30], 1024)  # red, green, blue planes
    records.tofile(folder / "test_batch.bin")

    splits = load_dataset("cifar10", root=str(tmp_path))
    assert splits.train_y.tolist() == [1, 9, 2, 9, 3, 9, 4, 9, 5, 9]
    assert splits.train_x.shape == (10, 3, 32, 32) and splits.test_y.tolist() == [4]
    mean, std = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
    expected_test = (torch.tensor([10, 20, 30]) / 255.0 - mean) / std
    assert torch.allclose(splits.test_x[0, :, 31, 0], expected_test)
    assert torch.allclose(splits.train_x[0, :, 5, 7], -mean / std)  # pixel value 0
    assert torch.allclose(splits.train_x[1, :, 5, 7], (1 - mean) / std)  # pixel value 255


def test_cifar100_reader_uses_fine_label(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    write_cifar_file(folder / "train.bin", [3, 7], 2, [0, 0])
    records = np.zeros((2, 3074), dtype=np.uint8)
    records[:, 0], records[:, 1] = [1, 2], [42, 99]  # coarse, fine
    records.tofile(folder / "test.bin")
    splits = load_dataset("cifar100", root=str(tmp_path))
    assert splits.test_y.tolist() == [42, 99] and splits.num_classes == 100


def test_cifar_truncated_file_is_rejected(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    np.zeros(3074 + 5, dtype=np.uint8).tofile(folder / "train.bin")
    with pytest.raises(ValueError, match="not a multiple of the 3074-byte record"):
        load_dataset("cifar100", root=str(tmp_path))


def test_missing_cifar_file_names_path_and_archive(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("cifar10", root=str(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in message and "--data_dir" in message


def test_svhn_mat_reader_maps_label_10_to_0(tmp_path):
    from scipy.io import savemat

    images = np.zeros((32, 32, 3, 3), dtype=np.uint8)  # H, W, C, N as in the .mat files
    images[4, 6, 2, 1] = 255  # sample 1, blue channel, row 4, column 6
    savemat(tmp_path / "train_32x32.mat", {"X": images, "y": np.array([[10], [1], [3]], dtype=np.uint8)})
    savemat(tmp_path / "test_32x32.mat", {"X": images[..., :1], "y": np.array([[10]], dtype=np.uint8)})

    splits = load_dataset("svhn", root=str(tmp_path))
    assert splits.train_y.tolist() == [0, 1, 3] and splits.test_y.tolist() == [0]
    assert splits.train_x.shape == (3, 3, 32, 32)
    white_blue = (1.0 - SVHN_MEAN[2]) / SVHN_STD[2]
    assert splits.train_x[1, 2, 4, 6].item() == pytest.approx(white_blue)
    assert splits.train_x[1, 2, 6, 4].item() == pytest.approx(-SVHN_MEAN[2] / SVHN_STD[2])


def test_missing_svhn_file_names_path_and_source(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("svhn", root=str(tmp_path))
    assert str(tmp_path / "train_32x32.mat") in str(error.value)
    assert "http://ufldl.stanford.edu/housenumbers/" in str(error.value)


def test_dataset_splits_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="train_x must be"):
        DatasetSplits(torch.zeros(3, 1, 2, 2), torch.zeros(2), torch.zeros(1, 1, 2, 2), torch.zeros(1),
                      num_classes=2, in_channels=1, name="toy")


LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2] * 10)


def test_random_split_takes_exact_fraction_and_is_seeded():
    forget, retain = split_forget(LABELS, "random", fraction=0.23, seed=3)
    assert len(forget) == 23 and len(retain) == 77
    assert forget.dtype == torch.int64 and torch.equal(forget, forget.sort().values)
    assert torch.equal(torch.cat([forget, retain]).sort().values, torch.arange(100))
    assert torch.equal(split_forget(LABELS, "random", fraction=0.23, seed=3)[0], forget)
    assert not torch.equal(split_forget(LABELS, "random", fraction=0.23, seed=4)[0], forget)


def test_class_split_takes_every_sample_of_the_classes():
    forget, retain = split_forget(LABELS, "class", classes=[2])
    assert len(forget) == 40 and bool((LABELS[forget] == 2).all())
    assert not bool((LABELS[retain] == 2).any()) and len(retain) == 60
    both, _ = split_forget(LABELS, "class", classes=[0, 2])
    assert len(both) == 70


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "sample"}, r"mode='sample'.*\['class', 'random'\]"),
        ({"mode": "random", "fraction": 0.0}, "fraction=0.0 must lie strictly between 0 and 1"),
        ({"mode": "random", "fraction": 1.0}, "fraction=1.0 must lie strictly between 0 and 1"),
        ({"mode": "random", "fraction": 0.001}, "selects no sample"),
        ({"mode": "class", "classes": [3]}, r"classes contains 3; class ids must lie in \[0, 2\]"),
        ({"mode": "class", "classes": [-1]}, "classes contains -1"),
        ({"mode": "class", "classes": []}, "selects no sample"),
        ({"mode": "class", "classes": [0, 1, 2]}, "selects the whole training set"),
    ],
)
def test_split_forget_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_forget(LABELS, **kwargs)


def test_indexed_dataset_returns_index_and_collates():
    dataset = IndexedTensorDataset(torch.arange(12.0).view(6, 2), torch.arange(6) % 2)
    assert len(dataset) == 6
    item = dataset[4]
    assert item["index"] == 4 and item["y"].item() == 0 and item["x"].tolist() == [8.0, 9.0]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert batch["index"].tolist() == [0, 1, 2] and batch["x"].shape == (3, 2)
    with pytest.raises(ValueError, match="same length"):
        IndexedTensorDataset(torch.zeros(3), torch.zeros(2))
