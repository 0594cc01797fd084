"""Datasets as NumPy arrays (images in [0, 1]), batching, and the papers' evaluation subsets.

Datasets and splits (records keep the official order, so slices are reproducible):

| name             | train  | test   | image   | classes | split                            |
|------------------|--------|--------|---------|---------|----------------------------------|
| `digits`         | 1,437  | 360    | 8×8×1   | 10      | stratified 80/20, seed 0         |
| `mnist`          | 60,000 | 10,000 | 28×28×1 | 10      | official                         |
| `cifar10`        | 50,000 | 10,000 | 32×32×3 | 10      | official                         |
| `olivetti_faces` | 320    | 80     | 64×64×1 | 40      | per identity: images 0..7 / 8..9 |

`split` is a tfds split string: `"train"`, `"test[:90%]"`, `"train[:1000]"`, `"test[-10%:]"`,
`"train+test"`. Percent slices round to whole examples (tfds rules).

The attacker's auxiliary data, as the papers set it up:
- He et al. (2019/2020), black-box inverse network and query-free shadow model with data of the
  "same distribution": a part of the *test* set disjoint from the evaluated targets; the targets are
  the first test image of each class (`eval_subset_one_per_class`), e.g.
  `targets = eval_subset_one_per_class(test)`, `aux = np.delete(test.images, targets, axis=0)`.
- CEM (Xia et al., 2025), inference-time setting: the attacker holds `test[:90%]` and the images to
  reconstruct are `test[90%:]`.

Example:
    >>> train = load("digits", "train")
    >>> train.images.shape, train.images.dtype, train.num_classes
    ((1437, 8, 8, 1), dtype('float32'), 10)
    >>> for x, y in batches(train, 128, key=jax.random.key(0)):
    ...     pass
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import pathlib
import sys
from collections.abc import Iterator
from typing import NamedTuple

import jax
import numpy as np


_READ_CHUNK = 8192  # records per `__getitems__` call: one batched read, bounded memory


class Dataset(NamedTuple):
    """A whole split in memory.

    Attributes:
        images: float32 `[num_examples, height, width, channels]` in [0, 1].
        labels: int32 `[num_examples]`.
        num_classes: number of classes of the dataset (not only those present in this split).
        name: dataset name, as passed to `load`.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str


def _check_split(split: str, name: str, valid: tuple[str, ...]) -> None:
    for part in split.split("+"):
        base = part.strip().split("[", 1)[0]
        if base not in valid:
            raise ValueError(f"unknown split {split!r} for dataset {name!r}; valid splits: "
                             f"{', '.join(valid)} (with tfds slices such as 'test[:90%]')")


def _read_records(source, keys: list[int]) -> list[dict]:
    try:
        return source.__getitems__(keys)  # one batched read
    except TypeError:  # tfds.testing.mock_data's source has a broken __getitems__, a working [i]
        return [source[k] for k in keys]


@contextlib.contextmanager
def _exclusive(lock_path: pathlib.Path):
    """Holds an exclusive lock on `lock_path` (POSIX `flock`; no lock where `fcntl` is missing)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_prepared(builder) -> bool:
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # "Variant folder ... has no dataset_info.json" on a first run
    try:
        return builder.is_prepared()
    finally:
        absl.setLevel(level)


def _prepare_quietly(builder, name: str) -> None:
    """Prepares a dataset unless it is, with one line of output instead of tfds's progress bars and
    size lines; what tfds printed is shown if preparation fails. Processes that share a cache (two
    runs, parallel test workers) prepare it once: the second waits for the first."""
    import tensorflow_datasets as tfds

    with _exclusive(pathlib.Path(builder.data_dir_root) / f".{name}.lock"):
        if _is_prepared(builder):  # by another process while this one waited
            return
        print(f"mijax: preparing {name} (first run only) in {builder.data_dir}", file=sys.stderr, flush=True)
        chatter = io.StringIO()
        tfds.display_progress_bar(False)
        try:
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                builder.download_and_prepare()
        except BaseException:
            sys.stderr.write(chatter.getvalue())
            raise
        finally:
            tfds.display_progress_bar(True)


def load(name: str, split: str = "train", *, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Loads one split of a dataset, preparing it first if needed (once; cached).

    Args:
        name: one of `digits`, `mnist`, `cifar10`, `olivetti_faces`.
        split: tfds split string, e.g. `"train"`, `"test[:90%]"`, `"train[:1000]"`.
        data_dir: folder with the official files laid out as `<data_dir>/mnist/...`,
            `<data_dir>/cifar10/...`, `<data_dir>/olivetti/...`; defaults to `$MIJAX_DATA_DIR`.
            Only needed the first time (the prepared data is cached in `$MIJAX_TFDS_DIR`).

    Returns:
        A `Dataset` with float32 images `[num_examples, height, width, channels]` in [0, 1] and
        int32 labels `[num_examples]`.

    Raises:
        ValueError: unknown dataset or split; an official file does not match its md5; the
            prepared cache is corrupted (the message names the folder to delete).
        FileNotFoundError: an official file is neither in `data_dir` nor downloadable.
    """
    builders = importlib.import_module("mijax.data.builders")  # tensorflow-datasets, on first use
    builder = builders.get_builder(name, manual_root=data_dir)
    _check_split(split, name, builder.SPLITS)
    if not _is_prepared(builder):
        _prepare_quietly(builder, name)
        builder = builders.get_builder(name, manual_root=data_dir)  # reads what was just written
    try:
        source = builder.as_data_source(split=split)
    except (ValueError, KeyError, AssertionError) as e:
        raise ValueError(f"invalid split {split!r} for dataset {name!r}: {e}") from e
    n = len(source)
    images = np.empty((n, *builder.SHAPE), np.uint8)
    labels = np.empty((n,), np.int32)
    try:
        for start in range(0, n, _READ_CHUNK):
            records = _read_records(source, list(range(start, min(n, start + _READ_CHUNK))))
            images[start:start + len(records)] = np.stack([r["image"] for r in records])
            labels[start:start + len(records)] = [r["label"] for r in records]
    except (RuntimeError, ValueError, TypeError) as e:  # a truncated or corrupted record file: ArrayRecord
        # raises, or returns empty records that tfds then fails to decode
        raise ValueError(f"the prepared {name!r} data in {builder.data_dir} cannot be read ({e}); delete "
                         "that folder and load again to prepare it anew") from e
    pixels = np.divide(images, np.float32(255), dtype=np.float32)  # one pass, no float64 copy
    return Dataset(pixels, labels, int(builder.info.features["label"].num_classes), name)


def batches(dataset: Dataset, batch_size: int, *, key: jax.Array | None = None,
            drop_remainder: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of `(images [batch_size, ...], labels [batch_size])` NumPy batches.

    Args:
        dataset: a `Dataset` (anything with `images` and `labels` of equal length).
        batch_size: examples per batch (> 0).
        key: `jax.random` key to shuffle with (same key, same order); `None` keeps the order.
        drop_remainder: drop the last, smaller batch (keeps shapes static for `jax.jit`).

    Raises:
        ValueError: `batch_size` <= 0, or images and labels of different lengths.
    """
    n = len(dataset.labels)
    if batch_size <= 0:
        raise ValueError(f"expected batch_size > 0, got {batch_size}")
    if len(dataset.images) != n:
        raise ValueError(f"expected as many images as labels, got {len(dataset.images)} and {n}")
    order = None if key is None else np.asarray(jax.random.permutation(key, n))
    stop = n - n % batch_size if drop_remainder else n
    for start in range(0, stop, batch_size):
        index = slice(start, start + batch_size)
        if order is not None:
            index = order[index]
        yield dataset.images[index], dataset.labels[index]


def eval_subset_one_per_class(dataset: Dataset) -> np.ndarray:
    """Indices of the first image of each class present, ordered by class.

    He et al. (2019) evaluate their attacks on the first test image of each class.

    Returns:
        int `[num_classes_present]` indices into `dataset`.
    """
    _, first = np.unique(np.asarray(dataset.labels), return_index=True)
    return first
