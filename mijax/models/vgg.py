"""CEM's VGG-11-BN target with a sigmoid bottleneck, `vgg11_bn_sgm` (Xia et al., CVPR 2025, cem.md §1).

Reference: `xiasong0501/CEM` `model_architectures/vgg.py` (`make_layers`, `VGG`, `vgg11_bn_sgm`), itself
from ResSFL. The VGG-11 configuration [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M] is cut
after its first `cut` entries; a bottleneck convolution (→ 8 channels) and a sigmoid end the client,
and the server starts with the expansion convolution back to the cut's width:

    client: conv1 bn1 relu1 pool2 conv3 bn3 relu3 pool4 bottleneck bottleneck_sigmoid   (cut = 4)
    server: expand conv5 bn5 relu5 conv6 bn6 relu6 pool7 conv8 ... relu12 pool13
            dropout1 fc1 fc1_relu dropout2 fc2 fc2_relu fc3

Layer names carry the 1-based index of their configuration entry, so the reference's integer
`cutting_layer = k` is the layer named `pool{k}` / `relu{k}` followed by the bottleneck.

The bottleneck string of the reference (`noRELU_C8S1`, `K3`) becomes typed fields here, shared with
`mijax.models.resnet` through `bottleneck_layers`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from mijax.data.transforms import CIFAR10, Normalization
from mijax.models.decoders import ConvTranspose2d
from mijax.nn import BatchNorm, Conv2d, Layer, Linear, Pure, Sequential, max_pool, pure
from mijax.split import SplitModel

#: VGG-11 ("A") configuration: output channels of 3×3 convolutions, "M" = 2×2 max pooling.
VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

xavier_uniform = nnx.initializers.xavier_uniform()
zeros = nnx.initializers.zeros_init()


# --- layers ------------------------------------------------------------------------------------------


def dropout_layer(rate: float) -> Pure:
    """Inverted dropout (PyTorch `nn.Dropout`) as a parameter-free `Pure`.

    Active only with `train=True`, where it needs the `key` passed to `apply`; identity in eval mode.
    """

    def init(key):
        return {"params": {}, "batch_stats": {}}

    def apply(variables, x, *, train=False, key=None):
        if not train:
            return x, variables
        if key is None:
            raise ValueError("dropout in train mode needs a PRNG key: pass key= to apply")
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)), variables

    return Pure(init, apply)


def conv_layer(name: str, cin: int, cout: int, k: int, *, stride: int = 1, use_bias: bool = True,
               kernel_init=None, bias_init=None) -> Layer:
    """A 'same'-padded (k // 2) `Conv2d` as a named layer."""
    return Layer(name, pure(lambda rngs: Conv2d(
        cin, cout, k, stride=stride, padding=k // 2, use_bias=use_bias, kernel_init=kernel_init,
        bias_init=bias_init, rngs=rngs)))


def _conv_transpose(name: str, cin: int, cout: int) -> Layer:
    return Layer(name, pure(lambda rngs: ConvTranspose2d(cin, cout, 3, stride=2, padding=1,
                                                         output_padding=1, rngs=rngs)))


def bottleneck_layers(in_channels: int, *, channels: int, stride: int, kernel: int, relu: bool,
                      sigmoid: bool, client_init: dict, expand_init: dict) -> tuple[list[Layer], list[Layer]]:
    """The reference's client bottleneck and server expansion (`noRELU_C{channels}S{stride}K{kernel}`).

    stride 1: client `bottleneck` Conv k×k (in→C) [+ `bottleneck_relu`]; server `expand` Conv k×k (C→in)
    [+ `expand_relu`]. stride 2^m: client Conv3×3 s2 (in→C) then m−1 × ([ReLU] Conv3×3 s2 (C→C)); server
    m−1 × (ConvTranspose3×3 s2 (C→C) [ReLU]) then ConvTranspose3×3 s2 (C→in) (the reference ignores the
    kernel size here). `sigmoid` appends `bottleneck_sigmoid` to the client, otherwise `bottleneck_bn`
    (the reference's non-`sgm` VGG).

    Args:
        in_channels: channels of the map at the cut.
        channels, stride, kernel, relu, sigmoid: the bottleneck option fields.
        client_init / expand_init: `kernel_init`/`bias_init` keyword arguments for the client's and
            the server's stride-1 convolutions.

    Returns:
        `(client_layers, server_layers)`.
    """
    client, server = [], []
    if stride == 1:
        client.append(conv_layer("bottleneck", in_channels, channels, kernel, **client_init))
    else:
        steps = int(math.log2(stride))
        client.append(conv_layer("bottleneck", in_channels, channels, 3, stride=2, **client_init))
        for j in range(2, steps + 1):
            if relu:
                client.append(Layer(f"bottleneck_relu{j - 1}", jax.nn.relu))
            client.append(conv_layer(f"bottleneck{j}", channels, channels, 3, stride=2, **client_init))
    if relu:
        client.append(Layer("bottleneck_relu", jax.nn.relu))
    if sigmoid:
        client.append(Layer("bottleneck_sigmoid", jax.nn.sigmoid))
    else:
        client.append(Layer("bottleneck_bn", pure(lambda rngs: BatchNorm(channels, rngs=rngs))))

    if stride == 1:
        server.append(conv_layer("expand", channels, in_channels, kernel, **expand_init))
    else:
        for j in range(1, int(math.log2(stride))):
            server.append(_conv_transpose(f"expand{j}", channels, channels))
            if relu:
                server.append(Layer(f"expand_relu{j}", jax.nn.relu))
        server.append(_conv_transpose("expand", channels, in_channels))
    if relu:
        server.append(Layer("expand_relu", jax.nn.relu))
    return client, server


def check_bottleneck(*, channels: int, stride: int, kernel: int, size: int) -> None:
    """Raises `ValueError` for bottleneck fields the networks cannot build at a cut map of `size`²."""
    if channels < 1:
        raise ValueError(f"expected bottleneck_channels >= 1, got {channels}")
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"expected an odd bottleneck_kernel >= 1, got {kernel}")
    if stride < 1 or stride & (stride - 1):
        raise ValueError(f"expected bottleneck_stride to be a power of two (1, 2, 4, ...), got {stride}")
    if size % stride:
        raise ValueError(f"expected bottleneck_stride {stride} to divide the cut's map size {size}")


# --- the network -------------------------------------------------------------------------------------


@functools.cache
def _network(cut: int, num_classes: int, image_size: int, channels: int, stride: int, kernel: int,
             relu: bool, sigmoid: bool, width_multiplier: float = 1.0) -> tuple[Sequential, str]:
    client_init = {"kernel_init": xavier_uniform, "bias_init": zeros}
    layers, size, width = [], image_size, 3
    server = None
    scaled = lambda c: max(1, round(c * width_multiplier))
    hidden = scaled(512)
    for index, entry in enumerate(VGG11, start=1):
        in_client = index <= cut
        if entry == "M":
            layers.append(Layer(f"pool{index}", max_pool))
            size //= 2
        else:
            entry = scaled(entry)
            init = client_init if in_client else {}
            layers += [conv_layer(f"conv{index}", width, entry, 3, **init),
                       Layer(f"bn{index}", pure(lambda rngs, c=entry: BatchNorm(c, rngs=rngs))),
                       Layer(f"relu{index}", jax.nn.relu)]
            width = entry
        if index == cut:
            check_bottleneck(channels=channels, stride=stride, kernel=kernel, size=size)
            client, server = bottleneck_layers(
                width, channels=channels, stride=stride, kernel=kernel, relu=relu, sigmoid=sigmoid,
                client_init=client_init, expand_init={})
            layers += client + server
    if size < 1:
        raise ValueError(f"expected image_size >= 32 (five 2×2 poolings), got {image_size}")
    features = width * size * size
    layers += [
        Layer("dropout1", dropout_layer(0.5)),
        Layer("fc1", pure(lambda rngs: Linear(features, hidden, rngs=rngs))),
        Layer("fc1_relu", jax.nn.relu),
        Layer("dropout2", dropout_layer(0.5)),
        Layer("fc2", pure(lambda rngs: Linear(hidden, hidden, rngs=rngs))),
        Layer("fc2_relu", jax.nn.relu),
        Layer("fc3", pure(lambda rngs: Linear(hidden, num_classes, rngs=rngs))),
    ]
    return Sequential(tuple(layers)), "bottleneck_sigmoid" if sigmoid else "bottleneck_bn"


def vgg11_bn_sgm(*, cut: int | str = 4, num_classes: int = 10, image_size: int = 32,
                 bottleneck_channels: int = 8, bottleneck_stride: int = 1, bottleneck_kernel: int = 3,
                 bottleneck_relu: bool = False, sigmoid: bool = True,
                 normalization: Normalization = CIFAR10, width_multiplier: float = 1.0) -> SplitModel:
    """CEM's VGG-11-BN with a sigmoid bottleneck (`vgg11_bn_sgm`, cem.md §1), inputs `image_size`²×3.

    At 32 px with the defaults:

        client: Conv3×3(3→64)+BN+ReLU → MaxPool → Conv3×3(64→128)+BN+ReLU → MaxPool
                → bottleneck Conv3×3(128→8, bias) → Sigmoid                  z ∈ (0,1)^{8×8×8}
        server: Conv3×3(8→128) (no ReLU) → [Conv+BN+ReLU](256, 256) → MaxPool → (512, 512) → MaxPool
                → (512, 512) → MaxPool → flatten 512
                → Dropout 0.5 → Linear(512,512) → ReLU → Dropout 0.5 → Linear(512,512) → ReLU
                → Linear(512, num_classes)

    At 48 px (FaceScrub) z is 8×12×12 and the flattened map 512 (3 → 1 by the last pooling); at 64 px
    z is 8×16×16 and the first Linear 2048 → 512 (the reference's `upsize`). Initialisation as the
    reference: client convolutions Xavier-uniform with zero bias, BatchNorm (1, 0); server and
    classifier PyTorch defaults. Dropout is active in train mode only and uses the `key` given to
    `apply`.

    Args:
        cut: an int k in [1, 13] is the reference's `cutting_layer`: the client holds the first k
            configuration entries, then the bottleneck, and the split is after `bottleneck_sigmoid`
            (the default cut, k = 4). A string is a layer name of the default (k = 4) network, to
            split elsewhere without changing the architecture; `model.with_cut(name)` does the same
            for any k.
        num_classes: output classes (10 CIFAR-10, 100 CIFAR-100, 530 FaceScrub).
        image_size: input height and width (32, 48, 64; >= 32).
        bottleneck_channels: channels of z (`C8`).
        bottleneck_stride: `S1`; a power of two ≥ 2 gives strided client convolutions and server
            transposed convolutions (PyTorch semantics, `mijax.models.decoders.ConvTranspose2d`).
        bottleneck_kernel: `K<k>` (odd; stride 1 only, as in the reference).
        bottleneck_relu: ReLU after the bottleneck and the expansion (the reference's default
            without `noRELU`; CEM uses `noRELU`).
        sigmoid: end the client with a sigmoid (`sgm`); False puts a BatchNorm there (`vgg11_bn`
            with a bottleneck) and the default cut becomes `bottleneck_bn`.
        normalization: input normalisation applied by the edge (CIFAR-10 statistics by default).
        width_multiplier: scales every convolution's channels and the classifier's hidden units
            (512) by this factor, rounded, at least 1; the bottleneck (`bottleneck_channels`) and the
            classes are unchanged. 1 is the reference network; smaller values give cheap CPU checks.

    Returns:
        The `SplitModel`.

    Raises:
        ValueError: for an unknown cut, an image size below 32, unsupported bottleneck fields, or a
            width_multiplier that is not positive.

    Example:
        >>> model = vgg11_bn_sgm()
        >>> variables = model.init(jax.random.key(0))
        >>> z, _ = model.edge_apply(variables, jnp.zeros((2, 32, 32, 3)))     # z: [2, 8, 8, 8]
        >>> logits, _ = model.cloud_apply(variables, z)                       # [2, 10]
    """
    index, name = (cut, None) if isinstance(cut, int) else (4, cut)
    if not 1 <= index <= len(VGG11):
        raise ValueError(f"expected cut in [1, {len(VGG11)}] or a layer name, got {cut!r}")
    if not width_multiplier > 0:
        raise ValueError(f"expected width_multiplier > 0, got {width_multiplier}")
    network, default = _network(index, num_classes, image_size, bottleneck_channels, bottleneck_stride,
                                bottleneck_kernel, bottleneck_relu, sigmoid, float(width_multiplier))
    return SplitModel(network, name or default, normalization, (image_size, image_size, 3), num_classes,
                      cuts=(default,))
