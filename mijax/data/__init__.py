"""Datasets (TensorFlow-free tfds builders), normalisation, augmentation and batching.

    >>> from mijax import data
    >>> train = data.load("digits", "train")                 # no file needed
    >>> test = data.load("cifar10", "test[:90%]", data_dir="../shared/data")
    >>> x = data.IMAGENET.normalize(data.random_flip(key, train.images[:128]))

See `mijax.data.loading` for the splits and the papers' attacker-data conventions and
`mijax.data.builders` for where the official files come from.
"""

import importlib

from mijax.data.loading import Dataset, batches, eval_subset_one_per_class, load
from mijax.data.transforms import (
    CIFAR10,
    IMAGENET,
    MNIST_HALF,
    Normalization,
    from_data,
    random_crop,
    random_flip,
    random_rotation,
    resize,
    rotate,
)



def __getattr__(name):  # tensorflow-datasets is imported on first use, not by `import mijax`
    if name in ("BUILDERS", "get_builder", "builders"):
        builders = importlib.import_module("mijax.data.builders")
        return builders if name == "builders" else getattr(builders, name)
    raise AttributeError(f"module 'mijax.data' has no attribute {name!r}")


__all__ = [
    "BUILDERS", "CIFAR10", "Dataset", "IMAGENET", "MNIST_HALF", "Normalization", "batches",
    "eval_subset_one_per_class", "from_data", "get_builder", "load", "random_crop", "random_flip",
    "random_rotation", "resize", "rotate",
]
