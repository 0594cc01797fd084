"""Target networks of He, Zhang & Lee (ACSAC 2019; IEEE IoT-J 2020), and the demo's digits network.

Layer names are the split-point names of the papers and of the authors' code
(`zechenghe/Inverse_Collaborative_Inference`, `net.py`): "convXY" is the pre-activation output of a
convolution, "reluXY" its activation, "poolX" the max-pooled map.
"""

from __future__ import annotations

import functools

import jax

from mijax.data.transforms import IMAGENET, MNIST_HALF, Normalization
from mijax.nn import Conv2d, Layer, Linear, Sequential, max_pool, pure
from mijax.split import SplitModel


def _conv(name, cin, cout, k, padding):
    return Layer(name, pure(lambda rngs: Conv2d(cin, cout, k, padding=padding, rngs=rngs)))


def _linear(name, fin, fout):
    return Layer(name, pure(lambda rngs: Linear(fin, fout, rngs=rngs)))


def _relu(name):
    return Layer(name, jax.nn.relu)


def _pool(name):
    return Layer(name, max_pool)


@functools.cache
def _cifar10cnn_network(num_classes: int) -> Sequential:
    return Sequential((
        _conv("conv11", 3, 64, 3, 1), _relu("relu11"), _conv("conv12", 64, 64, 3, 1), _relu("relu12"),
        _pool("pool1"),
        _conv("conv21", 64, 128, 3, 1), _relu("relu21"), _conv("conv22", 128, 128, 3, 1),
        _relu("relu22"), _pool("pool2"),
        _conv("conv31", 128, 128, 3, 1), _relu("relu31"), _conv("conv32", 128, 128, 3, 1),
        _relu("relu32"), _pool("pool3"),
        _linear("fc1", 4 * 4 * 128, 512), Layer("fc1_sigmoid", jax.nn.sigmoid),
        _linear("fc2", 512, num_classes),
    ))


def cifar10cnn(*, cut: str = "relu22", num_classes: int = 10,
               normalization: Normalization = IMAGENET) -> SplitModel:
    """He et al.'s CIFAR10CNN (ACSAC 2019 §6; `net.py`), inputs 32×32×3 normalised with ImageNet stats.

    Six 3×3 convolutions (64, 64 | 128, 128 | 128, 128) with ReLU and 2×2 max pooling, then
    fc1 (2048→512) → sigmoid → fc2 (512→10).

    Args:
        cut: the last edge layer; the papers use "conv11", "relu22", "relu32" (ACSAC) and
            "conv12"/"relu12", "pool1", "conv22", "relu22", "pool2" (IoT-J).
        num_classes: output classes.
        normalization: input normalisation applied by the edge.

    Returns:
        The `SplitModel`.
    """
    return SplitModel(_cifar10cnn_network(num_classes), cut, normalization, (32, 32, 3), num_classes,
                      cuts=("conv11", "relu22", "relu32"))


@functools.cache
def _lenet_network(num_classes: int) -> Sequential:
    return Sequential((
        _conv("conv1", 1, 8, 5, 0), _relu("relu1"), _pool("pool1"),
        _conv("conv2", 8, 16, 5, 0), _relu("relu2"), _pool("pool2"),
        _linear("fc1", 4 * 4 * 16, 120), _relu("relu3"), _linear("fc2", 120, 84), _relu("relu4"),
        _linear("fc3", 84, num_classes),
    ))


def lenet(*, cut: str = "relu2", num_classes: int = 10,
          normalization: Normalization = MNIST_HALF) -> SplitModel:
    """He et al.'s MNIST LeNet: conv1 (1→8, 5×5) → ReLU → pool → conv2 (8→16, 5×5) → ReLU → pool →
    fc1 (256→120) → ReLU → fc2 (120→84) → ReLU → fc3 (84→10); inputs 28×28×1, normalised (0.5, 0.5).

    Args:
        cut: the last edge layer; the papers use "conv1", "relu2" (ACSAC) and "relu1", "pool1",
            "conv2", "relu2", "pool2" (IoT-J).
        num_classes: output classes.
        normalization: input normalisation applied by the edge.
    """
    return SplitModel(_lenet_network(num_classes), cut, normalization, (28, 28, 1), num_classes,
                      cuts=("conv1", "relu2"))


@functools.cache
def _digits_network(num_classes: int, image_size: int) -> Sequential:
    side = image_size // 4
    return Sequential((
        _conv("conv1", 1, 16, 3, 1), _relu("relu1"), _pool("pool1"),
        _conv("conv2", 16, 8, 3, 1), Layer("sigmoid", jax.nn.sigmoid),
        _conv("conv3", 8, 32, 3, 1), _relu("relu3"), _pool("pool3"),
        _linear("fc1", side * side * 32, 128), _relu("relu4"), _linear("fc2", 128, num_classes),
    ))


def digits_cnn(*, cut: str = "sigmoid", num_classes: int = 10, image_size: int = 32,
               normalization: Normalization = MNIST_HALF) -> SplitModel:
    """A small CNN for scikit-learn's 8×8 digits upsampled to `image_size` (the `mijax demo` target).

    Edge: conv1 (1→16) → ReLU → pool → conv2 (16→8) → sigmoid, so `z ∈ (0,1)^{16×16×8}` is bounded
    like CEM's sigmoid bottleneck and training-time noise of std σ cannot be outgrown by scaling `z`.
    Cloud: conv3 (8→32) → ReLU → pool → fc1 (→128) → ReLU → fc2.

    Args:
        cut: the last edge layer (default: the sigmoid bottleneck).
        num_classes: output classes.
        image_size: input height and width (a multiple of 4).
        normalization: input normalisation applied by the edge.
    """
    if image_size % 4:
        raise ValueError(f"expected image_size to be a multiple of 4, got {image_size}")
    return SplitModel(_digits_network(num_classes, image_size), cut, normalization, (image_size, image_size, 1), num_classes,
                      cuts=("relu1", "sigmoid"))

