"""SiftFunnel's funnel CNN `pv4_classifier_4` and the unprotected `Classifier_4` (Liu et al.,
arXiv 2501.00824; code `GOERAHG214/SiftFunnel` `InfoDR_package.py`; siftfunnel.md).

Each block of the reference is one named layer, so every block's output is a tap and a cut (the
reference's `feat[block_idx − 1]`):

    pv4_classifier_4 (64×64×nc, ndf = width = 64)
      edge:  block1  Conv3×3(nc→64)+BN → MaxPool → ReLU → SE(64, r 32) → triplet attention    64×32×32
             funnel  Conv1×1(64→16)+BN → ReLU → MaxPool → Conv1×1(16→12) → Conv3×3(12→12) → SiLU
                     → Conv1×1(12→12) → Conv3×3(12→12) → Conv5×5(12→12) → ReLU → SE(12, r 4)
                     → CBAM(12, r 6)                                                   z: 12×16×16
      cloud: up      Conv3×3(12→128) → Conv3×3(128→128)+BN → ReLU → triplet attention  (no bias; channel
                     up-projection, "cloud-based upsampling"; still 16×16)
             block3  Conv3×3(128→256)+BN → MaxPool → ReLU;  block4  Conv3×3(256→512)+BN → MaxPool → ReLU
             fc1 (8192 → 5K) → dropout (0.5) → fc2 (5K → K)

    classifier_4: block1..block4 = [Conv3×3 → BN → MaxPool → ReLU] × (64, 128, 256, 512), fc1, dropout, fc2.

`block_idx` of the reference is the cut: 1 = "block1", 2 = "funnel" (the default: the paper's
design; the training script's default is block 1) for the funnel CNN, 2 = "block2" for Classifier_4.
`width` scales the reference's ndf = 64 (and the 2·ndf, 4·ndf, 8·ndf blocks) for cheap CPU runs; the
funnel's 16 and 12 channels are fixed.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from mijax.data.transforms import CIFAR10, Normalization
from mijax.models.attention import CBAM, SE, TripletAttention
from mijax.models.vgg import dropout_layer
from mijax.nn import BatchNorm, Conv2d, Layer, Linear, Sequential, max_pool, pure
from mijax.split import SplitModel

#: The normalisation of the reference's RGB runs (CIFAR-10 and FaceScrub; siftfunnel.md, update of
#: 12-01): CIFAR-10's channel means with the widely copied std (0.2023, 0.1994, 0.2010), not
#: CIFAR-10's own (0.247, 0.243, 0.261) of `mijax.data.transforms.CIFAR10`.
SIFTFUNNEL_RGB = Normalization(mean=CIFAR10.mean, std=(0.2023, 0.1994, 0.2010))

FUNNEL_CHANNELS = 12


def _conv(cin, cout, k, rngs):
    return Conv2d(cin, cout, k, padding=k // 2, rngs=rngs)


class ConvBlock(nnx.Module):
    """Conv3×3 → BN → MaxPool2 → ReLU (the reference's plain block)."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.conv, self.bn = _conv(cin, cout, 3, rngs), BatchNorm(cout, rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        return jax.nn.relu(max_pool(self.bn(self.conv(x), train=train)))


class AttentionBlock(nnx.Module):
    """`block` (C output channels) → SE(C, r `reduction`) → triplet attention: block_idx 1 of the
    funnel CNN (a `ConvBlock`, r 32) and of its ResNet variant (the conv1 stem, r 16)."""

    def __init__(self, block: nnx.Module, channels: int, *, reduction: int, rngs: nnx.Rngs):
        self.block = block
        self.se, self.triplet = SE(channels, reduction, rngs=rngs), TripletAttention(rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        return self.triplet(self.se(self.block(x, train=train)), train=train)


class Funnel(nnx.Module):
    """The funnel block `block2_mix`: Conv(cin→hidden)+BN → ReLU [→ MaxPool2] → Conv1×1(hidden→C)
    → Conv3×3 → SiLU → Conv1×1 → Conv3×3 → Conv5×5 → ReLU → SE(C) → CBAM(C).

    The defaults are the funnel CNN's (64 → 16 → 12 channels, one 2× pooling, SE r 4, CBAM r 6); the
    ResNet and VGG variants (`mijax.models.funnel_variants`) use hidden 32, no pooling and their own
    C, squeeze kernel and reductions.
    """

    def __init__(self, cin: int, *, channels: int = FUNNEL_CHANNELS, hidden: int = 16, squeeze_kernel: int = 1,
                 squeeze_bias: bool = True, pool: bool = True, se_reduction: int = 4, cbam_reduction: int = 6,
                 rngs: nnx.Rngs):
        self.squeeze = Conv2d(cin, hidden, squeeze_kernel, padding=squeeze_kernel // 2, use_bias=squeeze_bias,
                              rngs=rngs)
        self.bn, self.pool = BatchNorm(hidden, rngs=rngs), pool
        self.reduce = _conv(hidden, channels, 1, rngs)
        self.mix1 = _conv(channels, channels, 3, rngs)
        self.point = _conv(channels, channels, 1, rngs)
        self.mix2 = _conv(channels, channels, 3, rngs)
        self.mix3 = _conv(channels, channels, 5, rngs)
        self.se = SE(channels, se_reduction, rngs=rngs)
        self.cbam = CBAM(channels, cbam_reduction, rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        x = jax.nn.relu(self.bn(self.squeeze(x), train=train))
        x = max_pool(x) if self.pool else x
        x = jax.nn.silu(self.mix1(self.reduce(x)))
        x = jax.nn.relu(self.mix3(self.mix2(self.point(x))))
        return self.cbam(self.se(x))


class UpBlock(nnx.Module):
    """The cloud's channel up-projection: Conv3×3(C→c) → Conv3×3(c→c) → BN → ReLU → triplet attention."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        # the reference's Up convolutions have no bias (bias=False), unlike the edge's
        self.conv1 = Conv2d(cin, cout, 3, padding=1, use_bias=False, rngs=rngs)
        self.conv2 = Conv2d(cout, cout, 3, padding=1, use_bias=False, rngs=rngs)
        self.bn, self.triplet = BatchNorm(cout, rngs=rngs), TripletAttention(rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        return self.triplet(jax.nn.relu(self.bn(self.conv2(self.conv1(x)), train=train)), train=train)


def _head(features: int, num_classes: int) -> list[Layer]:
    return [Layer("fc1", pure(lambda rngs: Linear(features, 5 * num_classes, rngs=rngs))),
            Layer("dropout", dropout_layer(0.5)),
            Layer("fc2", pure(lambda rngs: Linear(5 * num_classes, num_classes, rngs=rngs)))]


def _check(image_size: int, width: int, channels: int) -> None:
    if image_size < 16 or image_size % 16:
        raise ValueError(f"expected image_size to be a multiple of 16 (four 2×2 poolings), got {image_size}")
    if width < 1 or channels not in (1, 3):
        raise ValueError(f"expected width >= 1 and channels 1 or 3, got width={width}, channels={channels}")


@functools.cache
def _funnel_network(num_classes: int, image_size: int, channels: int, width: int) -> Sequential:
    side = image_size // 16
    return Sequential((
        Layer("block1", pure(lambda rngs: AttentionBlock(ConvBlock(channels, width, rngs=rngs), width, reduction=32,
                                                       rngs=rngs))),
        Layer("funnel", pure(lambda rngs: Funnel(width, rngs=rngs))),
        Layer("up", pure(lambda rngs: UpBlock(FUNNEL_CHANNELS, 2 * width, rngs=rngs))),
        Layer("block3", pure(lambda rngs: ConvBlock(2 * width, 4 * width, rngs=rngs))),
        Layer("block4", pure(lambda rngs: ConvBlock(4 * width, 8 * width, rngs=rngs))),
        *_head(8 * width * side * side, num_classes),
    ))


@functools.cache
def _plain_network(num_classes: int, image_size: int, channels: int, width: int) -> Sequential:
    side = image_size // 16
    widths = (channels, width, 2 * width, 4 * width, 8 * width)
    return Sequential((
        *(Layer(f"block{i + 1}", pure(lambda rngs, a=widths[i], b=widths[i + 1]: ConvBlock(a, b, rngs=rngs)))
          for i in range(4)),
        *_head(8 * width * side * side, num_classes),
    ))


def pv4_classifier_4(*, cut: str = "funnel", num_classes: int = 10, image_size: int = 64, channels: int = 3,
                     width: int = 64, normalization: Normalization = SIFTFUNNEL_RGB) -> SplitModel:
    """SiftFunnel's funnel CNN (`pv4_classifier_4`); at 64×64 the edge transmits z of 12×16×16.

    Args:
        cut: the last edge block: "funnel" (block_idx 2, default) or "block1" (block_idx 1, the
            training script's default), or any later block.
        num_classes: output classes K.
        image_size: input height and width (a multiple of 16; the reference uses 64).
        channels: image channels (3 RGB; 1 for the chest X-rays, with `normalization` 0.5/0.5).
        width: ndf (64 in the reference).
        normalization: input normalisation (CIFAR-10 statistics, the reference's RGB values).

    Raises:
        ValueError: for an image size that is not a multiple of 16, a bad width or channel count,
            or an unknown cut.

    Example:
        >>> model = pv4_classifier_4()
        >>> model.feature_shape()          # (16, 16, 12)
    """
    _check(image_size, width, channels)
    return SplitModel(_funnel_network(num_classes, image_size, channels, width), cut, normalization,
                      (image_size, image_size, channels), num_classes, cuts=("block1", "funnel"))


def classifier_4(*, cut: str = "block2", num_classes: int = 10, image_size: int = 64, channels: int = 3,
                 width: int = 64, normalization: Normalization = SIFTFUNNEL_RGB) -> SplitModel:
    """The unprotected baseline `Classifier_4` the funnel replaces; at block 2 (the default cut) it
    sends 128×16×16 = 32,768 values at 64×64 input (the funnel sends 3,072).

    Args and Raises: as `pv4_classifier_4`; cuts "block1" … "block4".
    """
    _check(image_size, width, channels)
    return SplitModel(_plain_network(num_classes, image_size, channels, width), cut, normalization,
                      (image_size, image_size, channels), num_classes, cuts=("block1", "block2"))
