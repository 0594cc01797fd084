"""Builders and loading: real files (skipped when absent), tfds mocks, bad files, splits."""

import gzip
import hashlib
import io
import shutil
import sys
import tarfile

import jax
import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

from mijax import data
from mijax.data import builders

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1), "cifar10": (32, 32, 3),
          "olivetti_faces": (64, 64, 1)}


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pixels(dataset):
    """uint8 values back from [0, 1] floats (exact: they were v / 255)."""
    return np.round(dataset.images * 255).astype(np.uint8)


def _check_dataset(dataset, name, size):
    assert dataset.images.shape == (size, *SHAPES[name])
    assert dataset.images.dtype == np.float32 and dataset.labels.dtype == np.int32
    assert dataset.labels.shape == (size,) and dataset.name == name
    assert 0.0 <= dataset.images.min() and dataset.images.max() <= 1.0
    assert 0 <= dataset.labels.min() and dataset.labels.max() < dataset.num_classes


# ------------------------------------------------------------------ real files

@pytest.fixture(scope="module")
def cifar(data_dir):
    """Both CIFAR-10 splits, prepared once per session (the slow part: ~15 s)."""
    return data.load("cifar10", "train", data_dir=data_dir), data.load("cifar10", "test")


@pytest.fixture(scope="module")
def mnist(data_dir):
    return data.load("mnist", "train", data_dir=data_dir), data.load("mnist", "test")


def test_digits():
    train, test = data.load("digits", "train"), data.load("digits", "test")
    _check_dataset(train, "digits", 1437)
    _check_dataset(test, "digits", 360)
    from sklearn.datasets import load_digits
    digits = load_digits()
    # The two splits together are exactly sklearn's images (scaled 0..16 -> 0..255) and labels.
    expected = np.round(digits.images * 255 / 16).astype(np.uint8)
    key = lambda x, y: sorted(zip(map(bytes, x.reshape(len(x), -1)), y.tolist()))
    assert key(np.concatenate([_pixels(train), _pixels(test)]),
               np.concatenate([train.labels, test.labels])) == key(expected, digits.target)
    # Stratified 80/20: each class has floor or ceil of 20% of its images in test.
    share = np.bincount(digits.target) * 0.2
    assert np.all(np.abs(np.bincount(test.labels, minlength=10) - share) < 1)
    again = data.load("digits", "test")
    np.testing.assert_array_equal(again.images, test.images)
    assert "tensorflow" not in sys.modules


def test_first_preparation_prints_one_line(monkeypatch, tmp_path, capfd):
    monkeypatch.setenv("MIJAX_TFDS_DIR", str(tmp_path))
    data.load("digits", "test")
    out, err = capfd.readouterr()
    assert out == "" and err.splitlines() == [f"mijax: preparing digits (first run only) in "
                                              f"{tmp_path / 'mijax_digits' / '1.0.0'}"], (out, err)
    data.load("digits", "train")                      # prepared: silent
    assert capfd.readouterr() == ("", "")


def test_processes_sharing_a_fresh_cache_prepare_it_once(tmp_path):
    import os
    import subprocess
    env = {**os.environ, "MIJAX_TFDS_DIR": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    code = "from mijax import data; print(len(data.load('digits', 'train').labels))"
    runs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == ["1437", "1437"]
    assert sum(err.count("mijax: preparing digits") for _, err in outputs) == 1, outputs


def test_mnist(mnist, data_dir):
    train, test = mnist
    _check_dataset(train, "mnist", 60000)
    _check_dataset(test, "mnist", 10000)
    assert train.labels[0] == 5 and test.labels[0] == 7
    assert np.bincount(train.labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(test.labels).tolist() == MNIST_TEST_COUNTS
    with gzip.open(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(10000, 28, 28)
    np.testing.assert_array_equal(_pixels(test)[..., 0], raw)


def test_cifar10(cifar):
    train, test = cifar
    _check_dataset(train, "cifar10", 50000)
    _check_dataset(test, "cifar10", 10000)
    assert np.bincount(train.labels).tolist() == [5000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert builders.CIFAR10_CLASSES[train.labels[0]] == "frog"
    assert builders.CIFAR10_CLASSES[test.labels[0]] == "cat"
    # Known first pixels of the first training image (R, G, B): CHW -> HWC done right.
    assert np.round(train.images[0, 0, :2] * 255).tolist() == [[59, 62, 63], [43, 46, 45]]


def test_olivetti_faces(data_dir):
    train, test = data.load("olivetti_faces", "train", data_dir=data_dir), data.load(
        "olivetti_faces", "test")
    _check_dataset(train, "olivetti_faces", 320)
    _check_dataset(test, "olivetti_faces", 80)
    assert train.num_classes == 40
    assert np.bincount(train.labels).tolist() == [8] * 40
    assert np.bincount(test.labels).tolist() == [2] * 40
    faces = scipy.io.loadmat(data_dir / "olivetti" / "olivettifaces.mat")["faces"]
    column_major = lambda i: faces[:, i].reshape(64, 64, order="F")
    np.testing.assert_array_equal(_pixels(train)[9, ..., 0], column_major(11))  # identity 1, #1
    np.testing.assert_array_equal(_pixels(test)[1, ..., 0], column_major(9))
    # Upright faces: nearly symmetric left-right, not top-bottom.
    mean = train.images.mean(0)[..., 0]
    assert np.abs(mean - mean[:, ::-1]).mean() < 0.5 * np.abs(mean - mean[::-1]).mean()


def test_data_source_reads_prepared(cifar):
    source = tfds.data_source("mijax_cifar10", split="test[:5]", data_dir=builders.cache_dir())
    assert len(source) == 5
    record = source[0]
    assert record["image"].dtype == np.uint8 and record["image"].shape == (32, 32, 3)
    assert record["label"] == 3


def test_papers_splits(cifar):
    _, test = cifar
    aux, targets = data.load("cifar10", "test[:90%]"), data.load("cifar10", "test[90%:]")
    assert (len(aux.labels), len(targets.labels)) == (9000, 1000)
    np.testing.assert_array_equal(np.concatenate([aux.labels, targets.labels]), test.labels)
    first = data.eval_subset_one_per_class(test)
    assert test.labels[first].tolist() == list(range(10))
    assert first[[0, 1, 3, 6, 8]].tolist() == [3, 6, 0, 4, 1]  # from the first ten test labels


# ------------------------------------------------------------------ tfds mocks (no files)

@pytest.mark.parametrize("name", sorted(builders.BUILDERS))
def test_mock_data(name, monkeypatch, tmp_path):
    monkeypatch.setenv("MIJAX_TFDS_DIR", str(tmp_path))
    with tfds.testing.mock_data(num_examples=5):
        dataset = data.load(name, "train")
        source = tfds.data_source(builders.BUILDERS[name].name, split="test")
        record = source[0]
    _check_dataset(dataset, name, 5)
    assert dataset.num_classes == (40 if name == "olivetti_faces" else 10)
    assert record["image"].shape == SHAPES[name] and record["image"].dtype == np.uint8
    assert not any(tmp_path.iterdir())  # nothing prepared for real


# ------------------------------------------------------------------ missing and corrupt files

@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Fresh cache, and a download that fails at once (and records what it was asked for)."""
    monkeypatch.setenv("MIJAX_TFDS_DIR", str(tmp_path / "tfds"))
    urls = []

    def fail(dl_manager, url):
        urls.append(url)
        raise OSError("offline (test)")

    monkeypatch.setattr(builders, "_download", fail)
    return urls


@pytest.mark.parametrize("name, missing", [("mnist", "train-images-idx3-ubyte.gz"),
                                           ("cifar10", "cifar-10-python.tar.gz"),
                                           ("olivetti_faces", "olivettifaces.mat")])
def test_missing_file(name, missing, offline, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(FileNotFoundError, match=missing) as info:
        data.load(name, "test", data_dir=root)
    message = str(info.value)
    assert str(root) in message and "MIJAX_DATA_DIR" in message and "data_dir=" in message
    assert all(url in message for url in offline) and offline
    assert not (tmp_path / "tfds" / builders.BUILDERS[name].name / "1.0.0").exists()


def test_missing_one_mnist_file(offline, tmp_path, data_dir):
    shutil.copytree(data_dir / "mnist", tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\.gz not found in .*mnist"):
        data.load("mnist", "train", data_dir=tmp_path)


def test_no_manual_dir(offline, monkeypatch):
    monkeypatch.delenv("MIJAX_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="olivettifaces.mat .*no manual directory"):
        data.load("olivetti_faces")


@pytest.mark.parametrize("folder, file, expected", [
    ("mnist", "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ("olivetti", "olivettifaces.mat", "7be4afc20ba95152afb4c6b4b5d45c5b"),
    ("cifar10", "cifar-10-batches-py.tar.xz", "a5a2dda36a5444a9fa6b421f49440edb"),
])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_file(folder, file, expected, damage, offline, tmp_path, data_dir):
    shutil.copytree(data_dir / folder, tmp_path / folder)
    path = tmp_path / folder / file
    path.chmod(0o644)
    content = bytearray(path.read_bytes())
    if damage == "flip":
        content[len(content) // 2] ^= 0xFF
    else:
        content = content[: len(content) // 2]
    path.write_bytes(bytes(content))
    name = {"mnist": "mnist", "olivetti": "olivetti_faces", "cifar10": "cifar10"}[folder]
    with pytest.raises(ValueError, match=file) as info:
        data.load(name, "test", data_dir=tmp_path)
    assert expected in str(info.value) and _md5(path) in str(info.value)
    assert not offline  # a corrupt local file is an error, not a reason to download


def _tar(members, path, mode="w:gz"):
    with tarfile.open(path, mode) as tar:
        for name, payload in members.items():
            entry = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            entry.size = len(payload)
            tar.addfile(entry, io.BytesIO(payload))
    return path


def test_cifar_member_md5_checked_before_unpickling(tmp_path):
    path = _tar({"data_batch_1": b"not the official pickle"}, tmp_path / "c.tar.gz")
    with pytest.raises(ValueError, match="data_batch_1.*expected md5 c99cafc152244af7"):
        builders.read_cifar10(path)


def test_cifar_truncated_archive(tmp_path):
    path = _tar({"batches.meta": bytes(range(256)) * 400}, tmp_path / "c.tar.gz")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="c.tar.gz is corrupt or truncated"):
        builders.read_cifar10(path)


def test_download_path(monkeypatch, tmp_path, data_dir):
    """Absent locally -> the download manager's file is verified and used."""
    monkeypatch.setenv("MIJAX_TFDS_DIR", str(tmp_path / "tfds"))
    urls = []
    served = {"good": data_dir / "olivetti" / "olivettifaces.mat", "bad": tmp_path / "bad.mat"}
    served["bad"].write_bytes(b"corrupt")
    kind = "bad"

    def fake_download(dl_manager, url):
        urls.append(url)
        return served[kind]

    monkeypatch.setattr(builders, "_download", fake_download)
    with pytest.raises(ValueError, match=r"bad\.mat \(downloaded from https://ndownloader"):
        data.load("olivetti_faces", "test", data_dir=tmp_path / "empty")
    kind = "good"
    test = data.load("olivetti_faces", "test", data_dir=tmp_path / "empty")
    assert test.images.shape == (80, 64, 64, 1)
    assert urls == list(builders.OLIVETTI_FILE.urls) * 2


# ------------------------------------------------------------------ names, splits, batching

def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="valid names: digits, mnist, cifar10, olivetti_faces"):
        data.load("cifar100")
    with pytest.raises(ValueError, match="unknown split 'validation'.*valid splits: train, test"):
        data.load("digits", "validation")
    with pytest.raises(ValueError, match="invalid split 'train\\[:abc\\]'"):
        data.load("digits", "train[:abc]")


def test_slices():
    test = data.load("digits", "test")
    head, tail = data.load("digits", "test[:90%]"), data.load("digits", "test[90%:]")
    assert (len(head.labels), len(tail.labels)) == (324, 36)
    np.testing.assert_array_equal(np.concatenate([head.images, tail.images]), test.images)
    np.testing.assert_array_equal(data.load("digits", "train[:10]").labels,
                                  data.load("digits", "train").labels[:10])
    assert len(data.load("digits", "train+test").labels) == 1797


def test_batches():
    dataset = data.load("digits", "test")  # 360 examples
    ordered = list(data.batches(dataset, 100))
    assert [len(y) for _, y in ordered] == [100, 100, 100]
    np.testing.assert_array_equal(ordered[1][1], dataset.labels[100:200])
    assert [len(y) for _, y in data.batches(dataset, 100, drop_remainder=False)] == [100] * 3 + [60]
    shuffled = list(data.batches(dataset, 120, key=jax.random.key(1)))
    again = list(data.batches(dataset, 120, key=jax.random.key(1)))
    other = list(data.batches(dataset, 120, key=jax.random.key(2)))
    labels = np.concatenate([y for _, y in shuffled])
    np.testing.assert_array_equal(labels, np.concatenate([y for _, y in again]))
    assert not np.array_equal(labels, np.concatenate([y for _, y in other]))
    assert sorted(labels.tolist()) == sorted(dataset.labels.tolist())  # a permutation
    images = np.concatenate([x for x, _ in shuffled])
    order = np.asarray(jax.random.permutation(jax.random.key(1), 360))
    np.testing.assert_array_equal(images, dataset.images[order])
    with pytest.raises(ValueError, match="batch_size > 0, got 0"):
        next(data.batches(dataset, 0))


def test_eval_subset_one_per_class():
    dataset = data.Dataset(np.zeros((7, 1, 1, 1), np.float32), np.array([2, 0, 2, 1, 0, 1, 3]),
                           4, "toy")
    assert data.eval_subset_one_per_class(dataset).tolist() == [1, 3, 0, 6]
