"""The attacker's data in the papers' settings: He et al.'s query images (train / auxiliary / noise)
and CEM's auxiliary/target splits. Helpers for experiments and notebooks, not attacks themselves."""

from __future__ import annotations

import jax
import numpy as np

from mijax.data.loading import Dataset
from mijax.data.transforms import Normalization

ATTACKER_DATA = ("train", "auxiliary", "noise")
SETTINGS = ("training-time", "inference-time")


def noise_images(num: int, input_shape, *, key: jax.Array,
                 normalization: Normalization | None = None) -> np.ndarray:
    """N(0,1) query images in the model's input space (He et al.'s "random noise" attacker).

    The authors feed N(0,1) draws straight to the network, whose inputs are normalised images, so
    the draws live in the edge's normalised space: they are returned de-normalised with
    `normalization` (the edge normalises them back to exactly the draws) and *not* clipped — with
    MNIST's normalisation 31.7 % of them fall outside [0,1]. With `normalization=None` the draws
    are the pixel values themselves.

    Returns:
        float32 `[num, *input_shape]` pixel values, unbounded.
    """
    if num < 1 or len(tuple(input_shape)) != 3:
        raise ValueError(f"expected num >= 1 and input_shape (height, width, channels), got {num}, "
                         f"{tuple(input_shape)}")
    u = jax.random.normal(key, (num, *input_shape))
    return np.asarray(u if normalization is None else normalization.denormalize(u), np.float32)


def attacker_images(setting: str, *, train_images=None, auxiliary_images=None, num: int | None = None,
                    input_shape=None, normalization: Normalization | None = None,
                    key: jax.Array | None = None) -> np.ndarray:
    """The attacker's query images in one of He et al.'s three settings (ACSAC 2019 Table 4).

    Args:
        setting: "train" (the victim's training set: `train_images`), "auxiliary" (other data of the
            same distribution: `auxiliary_images`, e.g. the test set without the targets; see
            `mijax.data.loading`) or "noise" (`num` N(0,1) images, see `noise_images`).
        train_images, auxiliary_images: `[num, height, width, channels]` in [0,1].
        num: how many images to use (default: all; required for "noise").
        input_shape: `(height, width, channels)` for "noise".
        normalization: the space of the noise draws (see `noise_images`).
        key: PRNG key for "noise".

    Returns:
        float32 `[num, height, width, channels]`, in [0,1] except the unbounded noise draws.

    Raises:
        ValueError: unknown setting, or the images/arguments the setting needs are missing.
    """
    if setting not in ATTACKER_DATA:
        raise ValueError(f"expected setting in {ATTACKER_DATA}, got {setting!r}")
    if setting == "noise":
        if num is None or input_shape is None or key is None:
            raise ValueError("the 'noise' setting needs num, input_shape and key")
        return noise_images(num, input_shape, key=key, normalization=normalization)
    name = "train_images" if setting == "train" else "auxiliary_images"
    images = train_images if setting == "train" else auxiliary_images
    if images is None:
        raise ValueError(f"the {setting!r} setting needs {name}")
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"expected {name} of shape [num, height, width, channels], got {images.shape}")
    return images[:num]


def cem_attack_data(setting: str, *, train: Dataset | None = None, test: Dataset) -> tuple[Dataset, Dataset]:
    """The attacker's auxiliary data and the targets in CEM's two settings (`cem.md` §3).

    - "training-time": auxiliary = the whole private training set; targets = the whole test set.
    - "inference-time": auxiliary = the first 90% of the test set; targets = the last 10%
      (test images 0–8999 / 9000–9999 on CIFAR; the boundary rounds as tfds's `test[:90%]` does).

    Args:
        setting: "training-time" or "inference-time".
        train: the training split (needed for "training-time").
        test: the test split.

    Returns:
        `(auxiliary, targets)` as `mijax.data.Dataset`s (labels kept, for attack accuracy).

    Raises:
        ValueError: on an unknown setting or a missing split.
    """
    if setting not in SETTINGS:
        raise ValueError(f"expected setting in {SETTINGS}, got {setting!r}")
    if setting == "training-time":
        if train is None:
            raise ValueError("the 'training-time' setting needs train (the auxiliary data)")
        return train, test
    cut = round(len(test.labels) * 90 / 100)  # tfds: round(percent · n / 100)
    split = lambda s: test._replace(images=test.images[s], labels=test.labels[s])
    return split(slice(None, cut)), split(slice(cut, None))
