"""CEM's ResNet-20 variant for TinyImageNet, `resnet20_cem` (Xia et al., CVPR 2025, cem.md §1).

Reference: `xiasong0501/CEM` `model_architectures/resnet_cifar.py` (`CifarResNet`, `ResNet20`). Not the
textbook CIFAR ResNet-20: a 5×5 stem, stage widths 32/64/128 and every stage (the first included)
starting with stride 2. The layer list [stem, block1_1 .. block1_3, block2_1 .. block2_3,
block3_1 .. block3_3] is cut after its first `cut` entries; a bottleneck convolution and a sigmoid end
the client and an expansion convolution starts the server:

    client: stem block1_1 block1_2 block1_3 block2_1 bottleneck bottleneck_sigmoid     (cut = 5)
    server: expand block2_2 block2_3 block3_1 block3_2 block3_3 pool fc
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mijax.data.transforms import Normalization
from mijax.models.vgg import bottleneck_layers, check_bottleneck
from mijax.nn import BatchNorm, Conv2d, Layer, Linear, Sequential, pure
from mijax.split import SplitModel

#: TinyImageNet statistics used by the CEM code (`datasets_torch.py`).
TINYIMAGENET = Normalization((0.5141, 0.5775, 0.3985), (0.2927, 0.2570, 0.1434))

#: Stage widths; each stage has `BLOCKS_PER_STAGE` blocks and starts with stride 2.
WIDTHS = (32, 64, 128)
BLOCKS_PER_STAGE = 3

#: The reference's `init_weights`: N(0, 2 / (k·k·out)), He normal over the fan-out, not truncated.
he_normal_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
zeros = nnx.initializers.zeros_init()


class Stem(nnx.Module):
    """Conv5×5 (3→16, no bias, padding 2) → BatchNorm → ReLU (the reference's `conv5x5`)."""

    def __init__(self, *, kernel_init=None, rngs: nnx.Rngs):
        self.conv = Conv2d(3, 16, 5, padding=2, use_bias=False, kernel_init=kernel_init, rngs=rngs)
        self.bn = BatchNorm(16, rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        return jax.nn.relu(self.bn(self.conv(x), train=train))


class BasicBlock(nnx.Module):
    """A post-activation basic block with the "option A" shortcut (He et al., CVPR 2016, §4.2).

    y = ReLU(BN(conv3×3(ReLU(BN(conv3×3_stride(x))))) + shortcut(x)); when the shape changes the
    shortcut subsamples x by the stride (the reference's 1×1 average pool) and appends zero channels.
    Convolutions have no bias.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, kernel_init=None,
                 rngs: nnx.Rngs):
        self.stride, self.extra = stride, out_channels - in_channels
        self.conv_a = Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, use_bias=False,
                             kernel_init=kernel_init, rngs=rngs)
        self.bn_a = BatchNorm(out_channels, rngs=rngs)
        self.conv_b = Conv2d(out_channels, out_channels, 3, padding=1, use_bias=False,
                             kernel_init=kernel_init, rngs=rngs)
        self.bn_b = BatchNorm(out_channels, rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        y = jax.nn.relu(self.bn_a(self.conv_a(x), train=train))
        y = self.bn_b(self.conv_b(y), train=train)
        shortcut = x[:, ::self.stride, ::self.stride]
        if self.extra:
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (0, self.extra)))
        return jax.nn.relu(y + shortcut)


def _block_specs(image_size: int):
    """(name, in_channels, out_channels, stride, input map size) of the ten body layers."""
    specs, width, size = [("stem", 3, 16, 1, image_size)], 16, image_size
    for stage, out in enumerate(WIDTHS, start=1):
        for block in range(1, BLOCKS_PER_STAGE + 1):
            stride = 2 if block == 1 else 1
            specs.append((f"block{stage}_{block}", width, out, stride, size))
            width, size = out, size // stride
    return specs


@functools.cache
def _network(cut: int, num_classes: int, image_size: int, channels: int, stride: int, kernel: int,
             relu: bool, sigmoid: bool) -> tuple[Sequential, str]:
    specs = _block_specs(image_size)
    # The reference initialises the client recursively (stem, blocks, bottleneck kernel) and only the
    # top-level convolutions of the server (the expansion: He normal, zero bias); the server's blocks
    # and the classifier keep PyTorch's defaults.
    layers, width, size = [], 16, image_size
    for index, (name, cin, cout, block_stride, in_size) in enumerate(specs, start=1):
        init = he_normal_fan_out if index <= cut else None
        size = in_size // block_stride
        if name == "stem":
            layers.append(Layer(name, pure(lambda rngs: Stem(kernel_init=he_normal_fan_out, rngs=rngs))))
        else:
            layers.append(Layer(name, pure(lambda rngs, cin=cin, cout=cout, s=block_stride, init=init:
                                           BasicBlock(cin, cout, s, kernel_init=init, rngs=rngs))))
        width = cout
        if index == cut:
            check_bottleneck(channels=channels, stride=stride, kernel=kernel, size=size)
            client, server = bottleneck_layers(
                width, channels=channels, stride=stride, kernel=kernel, relu=relu, sigmoid=sigmoid,
                client_init={"kernel_init": he_normal_fan_out},
                expand_init={"kernel_init": he_normal_fan_out, "bias_init": zeros})
            layers += client + server
    if size < 1:
        raise ValueError(f"expected image_size >= 8 (three stride-2 stages), got {image_size}")
    layers += [Layer("pool", lambda x: jnp.mean(x, axis=(1, 2))),
               Layer("fc", pure(lambda rngs: Linear(width, num_classes, rngs=rngs)))]
    return Sequential(tuple(layers)), "bottleneck_sigmoid" if sigmoid else "bottleneck_bn"


def resnet20_cem(*, cut: int | str = 5, num_classes: int = 200, image_size: int = 64,
                 bottleneck_channels: int = 8, bottleneck_stride: int = 1, bottleneck_kernel: int = 3,
                 bottleneck_relu: bool = False, sigmoid: bool = True,
                 normalization: Normalization = TINYIMAGENET) -> SplitModel:
    """CEM's ResNet-20 variant (`resnet20`, TinyImageNet), inputs `image_size`²×3.

    At 64 px with the defaults:

        client: stem Conv5×5(3→16)+BN+ReLU (64²) → 3 blocks of width 32 (32²) → 1 block of width 64
                (16²) → bottleneck Conv3×3(64→8, bias) → Sigmoid             z ∈ (0,1)^{8×16×16}
        server: Conv3×3(8→64) (no ReLU) → 2 blocks of width 64 → 3 blocks of width 128 (8²)
                → global average pool → Linear(128, num_classes)

    Blocks are post-activation basic blocks, each stage starting with stride 2, with the "option A"
    shortcut (see `BasicBlock`). The reference pools with `avg_pool2d(x, 8)`, the global average at
    64 px; here the pool is global for every size. Initialisation as the reference: client
    convolutions He normal over the fan-out (N(0, 2/(9·out)), the bottleneck's bias PyTorch default),
    the server's expansion He normal with zero bias, BatchNorm (1, 0), server blocks and the
    classifier PyTorch defaults.

    Args:
        cut: an int k in [1, 10] is the reference's `cutting_layer`: the client holds the stem and the
            first k − 1 blocks, then the bottleneck, and the split is after `bottleneck_sigmoid`
            (the default, k = 5: z of 8×16×16 at 64 px). A string is a layer name of the default
            network (`model.with_cut(name)` does the same for any k).
        num_classes: output classes (200 for TinyImageNet).
        image_size: input height and width (64; any multiple of 8 works).
        bottleneck_channels, bottleneck_stride, bottleneck_kernel, bottleneck_relu, sigmoid: the
            bottleneck option fields, as in `mijax.models.vgg.vgg11_bn_sgm` (the reference always
            appends the sigmoid for ResNet).
        normalization: input normalisation applied by the edge (TinyImageNet statistics).

    Returns:
        The `SplitModel`.

    Raises:
        ValueError: for an unknown cut, a too small image, or unsupported bottleneck fields.

    Example:
        >>> model = resnet20_cem()
        >>> variables = model.init(jax.random.key(0))
        >>> z, _ = model.edge_apply(variables, jnp.zeros((2, 64, 64, 3)))     # z: [2, 16, 16, 8]
    """
    index, name = (cut, None) if isinstance(cut, int) else (5, cut)
    layers = 1 + len(WIDTHS) * BLOCKS_PER_STAGE
    if not 1 <= index <= layers:
        raise ValueError(f"expected cut in [1, {layers}] or a layer name, got {cut!r}")
    network, default = _network(index, num_classes, image_size, bottleneck_channels, bottleneck_stride,
                                bottleneck_kernel, bottleneck_relu, sigmoid)
    return SplitModel(network, name or default, normalization, (image_size, image_size, 3), num_classes,
                      cuts=(default,))
