"""CIFAR ResNet-18 laid out for Ensembler (Liu et al., arXiv 2401.10859 v1): the client keeps conv1 and fc.

The CIFAR variant of ResNet-18 (He et al., CVPR 2016, as the usual CIFAR code writes it): a 3×3 stem
without max pool, four stages of two basic blocks (widths w, 2w, 4w, 8w with w = 64; strides 1, 2,
2, 2), a projection shortcut (1×1 conv + BN) where the shape changes, global average pool and a
linear classifier. The v1 reviews say the client holds "the first and last few layers"; here the
edge is `conv1` (conv + BN + ReLU, the smallest client the abstract mentions), the server runs the
eight blocks and the pool, and the client's tail is the classifier `fc` (with a `combine` layer in
front of it when the cloud is a stack of members):

    edge:   conv1                                  z ∈ R^{32×32×w} (ReLU output)
    cloud:  layer1_1 … layer4_2, pool              ([members,] batch, 8w)
    tail:   [combine] fc                           logits
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mijax.data.transforms import CIFAR10, Normalization
from mijax.nn import BatchNorm, Conv2d, Layer, Linear, Pure, Sequential, pure
from mijax.split import SplitModel

#: Blocks per stage of ResNet-18.
RESNET18_BLOCKS = (2, 2, 2, 2)


class Stem(nnx.Module):
    """conv3×3(3→w, stride 1, no bias) → BN → ReLU (the CIFAR ResNet's `conv1`)."""

    def __init__(self, channels: int, width: int, *, rngs: nnx.Rngs):
        self.conv = Conv2d(channels, width, 3, padding=1, use_bias=False, rngs=rngs)
        self.bn = BatchNorm(width, rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        return jax.nn.relu(self.bn(self.conv(x), train=train))


class BasicBlock(nnx.Module):
    """y = ReLU(BN(conv3×3(ReLU(BN(conv3×3_s(x))))) + shortcut(x)); the shortcut is the identity or,
    when stride or width change, conv1×1_s + BN ("option B")."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv_a = Conv2d(cin, cout, 3, stride=stride, padding=1, use_bias=False, rngs=rngs)
        self.bn_a = BatchNorm(cout, rngs=rngs)
        self.conv_b = Conv2d(cout, cout, 3, padding=1, use_bias=False, rngs=rngs)
        self.bn_b = BatchNorm(cout, rngs=rngs)
        self.project = stride != 1 or cin != cout
        if self.project:
            self.conv_s = Conv2d(cin, cout, 1, stride=stride, use_bias=False, rngs=rngs)
            self.bn_s = BatchNorm(cout, rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        y = jax.nn.relu(self.bn_a(self.conv_a(x), train=train))
        y = self.bn_b(self.conv_b(y), train=train)
        shortcut = self.bn_s(self.conv_s(x), train=train) if self.project else x
        return jax.nn.relu(y + shortcut)


@functools.cache
def _network(width: int, num_classes: int, channels: int, blocks: tuple[int, ...],
             selector: Pure | None) -> Sequential:
    layers = [Layer("conv1", pure(lambda rngs: Stem(channels, width, rngs=rngs)))]
    cin = width
    for stage, count in enumerate(blocks, start=1):
        cout = width * 2 ** (stage - 1)
        for block in range(1, count + 1):
            stride = 2 if stage > 1 and block == 1 else 1
            layers.append(Layer(f"layer{stage}_{block}", pure(
                lambda rngs, cin=cin, cout=cout, stride=stride: BasicBlock(cin, cout, stride, rngs=rngs))))
            cin = cout
    layers.append(Layer("pool", lambda x: jnp.mean(x, axis=(1, 2))))
    if selector is not None:
        layers.append(Layer("combine", selector))
    layers.append(Layer("fc", pure(lambda rngs: Linear(cin, num_classes, rngs=rngs))))
    return Sequential(tuple(layers))


def resnet18(*, width: int = 64, num_classes: int = 10, image_size: int = 32, channels: int = 3,
             members: int = 1, selector: Pure | None = None, blocks: tuple[int, ...] = RESNET18_BLOCKS,
             normalization: Normalization = CIFAR10) -> SplitModel:
    """CIFAR ResNet-18 cut after `conv1`, with the classifier on the client (Ensembler's layout).

    Args:
        width: channels of the stem and the first stage (64 in ResNet-18; smaller for CPU presets).
        num_classes: outputs of `fc`.
        image_size: input height and width (32 for CIFAR; any size >= 8).
        channels: input channels.
        members: server members with stacked variables (`SplitModel.members`); > 1 needs `selector`.
        selector: the client's combiner of the members' outputs `[members, batch, 8w] -> [batch, 8w]`
            (e.g. `mijax.defenses.ensembler.sparse_selector(members, selected)`), the tail's first
            layer `combine`; None: no combine layer, the tail is `fc`.
        blocks: basic blocks per stage ((2, 2, 2, 2) is ResNet-18).
        normalization: input normalisation applied by the edge (CIFAR-10 statistics).

    Returns:
        The `SplitModel` (cut "conv1", tail "combine" or "fc").

    Raises:
        ValueError: on non-positive sizes, or members > 1 without a selector.

    Example:
        >>> model = resnet18(width=16)
        >>> variables = model.init(jax.random.key(0))
        >>> logits, _ = model.forward(variables, jnp.zeros((2, 32, 32, 3)))
    """
    if min(width, num_classes, image_size, channels, members) < 1 or not blocks or min(blocks) < 1:
        raise ValueError(f"expected positive width, num_classes, image_size, channels, members and blocks, "
                         f"got {width}, {num_classes}, {image_size}, {channels}, {members}, {blocks}")
    if image_size < 2 ** (len(blocks) - 1):
        raise ValueError(f"expected image_size >= {2 ** (len(blocks) - 1)}, got {image_size}")
    if members > 1 and selector is None:
        raise ValueError("expected a selector to combine members > 1 (the client's combine layer)")
    network = _network(width, num_classes, channels, tuple(blocks), selector)
    return SplitModel(network, "conv1", normalization, (image_size, image_size, channels), num_classes,
                      cuts=("conv1",), tail="fc" if selector is None else "combine", members=members)
