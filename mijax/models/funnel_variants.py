"""SiftFunnel's ResNet-18 and VGG-16-bn funnel variants `rn18_pv4` and `vgg16_bn_pv4` (Liu et al.,
arXiv 2501.00824; code `GOERAHG214/SiftFunnel` `InfoDR_package.py`, classes `ResNet` and `VGG_pv4`;
siftfunnel.md "Variants" and "Update (2026-12-01)").

As in `mijax.models.funnel`, each entry of the reference's feature list `feat` is the output of one
named layer, so every block is a tap and a cut; `RN18_PV4_TAPS[block_idx − 1]` and
`VGG16_BN_PV4_TAPS[block_idx − 1]` name the layer of the reference's `feat[block_idx − 1]`. Shapes at
the reference's 64×64 input with width w = 64 (H×W×C):

    rn18_pv4
      edge:  block1    Conv3×3(nc→w, no bias)+BN → ReLU → SE(w, r 16) → triplet attention     64×64×w
             funnel    layer2_mix: Conv3×3/2(w→2w)+BN → ReLU → Conv3×3(2w→2w)+BN → ReLU (no bias)
                       → SE(2w, r 32) → triplet attention
                       → block2_mix: Conv1×1(2w→32)+BN → ReLU → Conv1×1(32→6) → Conv3×3(6→6) → SiLU
                       → Conv1×1(6→6) → Conv3×3(6→6) → Conv5×5(6→6) → ReLU → SE(6, r 3) → CBAM(6, r 3)
                                                                                        z: 32×32×6
      cloud: up        Conv3×3(6→2w) → Conv3×3(2w→2w)+BN → ReLU (no bias) → triplet attention  32×32×2w
             layer3_1, layer3_2, layer4_1, layer4_2   basic blocks 2w→4w (stride 2), 4w, 4w→8w (stride 2), 8w
             pool      4×4 average pooling (stride 4), flattened                            8w·2·2
             fc        Linear(8w·2·2 → K)

    vgg16_bn_pv4
      edge:  block1    [Conv3×3(no bias)+BN → ReLU](nc→w, w→w) → MaxPool → SE(w, r 16) → triplet  32×32×w
             block2    [Conv3×3(no bias)+BN → ReLU](w→2w, 2w→2w) → MaxPool → SE(2w, r 32) → triplet 16×16×2w
             funnel    layer1: Conv3×3(2w→32, no bias)+BN → ReLU → Conv1×1(32→4) → Conv3×3(4→4) → SiLU
                       → Conv1×1(4→4) → Conv3×3(4→4) → Conv5×5(4→4) → ReLU → SE(4, r 4) → CBAM(4, r 4)
                                                                                        z: 16×16×4
      cloud: up        Conv3×3(4→4w) → Conv3×3(4w→4w)+BN → ReLU (no bias) → triplet attention  16×16×4w
             mix       Conv3×3(4w→4w)+BN → ReLU (the reference's `block2_mix`; not in its `feat`)
             conv1 … pool10   cfg [4w, M, 8w, 8w, 8w, M, 8w, 8w, 8w, M], each conv, BN, ReLU and
                       pool its own layer (each is an entry of the reference's `feat`)     2×2×8w
             flatten   → 8w·2·2
             fc1 (→ 64w) → ReLU → dropout 0.3 → fc2 (64w → 64w) → ReLU → dropout 0.2 → fc3 (→ K)

`block_idx` of the reference is the cut: the funnel output, the paper's design and the default cut,
is block_idx 2 ("funnel") for the ResNet and block_idx 3 ("funnel") for the VGG [unverified which
block the paper's runs transmit: the only checkpoint name in the code is a VGG at block 2, the
128×16×16 "block2"]; block_idx 1 ("block1") is the training script's default. `width` scales the reference's 64 (and every multiple
of it, the VGG classifier's 4096 = 64·64 included) for cheap CPU runs; the funnels' 32, 6 and 4
channels are fixed. Convolutions are 'same'-padded; biases as in the reference (no bias where it
says `bias=False`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from mijax.data.transforms import Normalization
from mijax.models.attention import SE, TripletAttention
from mijax.models.funnel import SIFTFUNNEL_RGB, AttentionBlock, Funnel, UpBlock
from mijax.models.resnet18 import BasicBlock, Stem
from mijax.models.vgg import conv_layer, dropout_layer
from mijax.nn import BatchNorm, Conv2d, Layer, Linear, Sequential, max_pool, pure
from mijax.split import SplitModel

#: Channels of z: the ResNet funnel's and the VGG funnel's.
RN18_FUNNEL_CHANNELS, VGG_FUNNEL_CHANNELS = 6, 4

#: The reference's `cfg['D']` of `vgg16_bn_pv4` in units of w/64 ("M" = 2×2 max pooling): 256 → 4w, 512 → 8w.
VGG16_PV4_CFG = (4, "M", 8, 8, 8, "M", 8, 8, 8, "M")

#: The layers whose outputs are the reference's `feat[0], feat[1], …` (block_idx 1, 2, …).
RN18_PV4_TAPS = ("block1", "funnel", "up", "layer3_1", "layer3_2", "layer4_1", "layer4_2", "pool")
VGG16_BN_PV4_TAPS = ("block1", "block2", "funnel", "up", *(
    name for i, entry in enumerate(VGG16_PV4_CFG, start=1)
    for name in ((f"pool{i}",) if entry == "M" else (f"conv{i}", f"bn{i}", f"relu{i}"))), "flatten")


class _ConvBNReLU(nnx.Module):
    """Conv3×3(cin→cout) → BN → ReLU."""

    def __init__(self, cin: int, cout: int, *, stride: int = 1, use_bias: bool = False, rngs: nnx.Rngs):
        self.conv = Conv2d(cin, cout, 3, stride=stride, padding=1, use_bias=use_bias, rngs=rngs)
        self.bn = BatchNorm(cout, rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        return jax.nn.relu(self.bn(self.conv(x), train=train))


class ResNetFunnel(nnx.Module):
    """The ResNet variant's block_idx 2: `layer2_mix` (w → 2w, stride 2), SE(2w, r 32), triplet
    attention, then the funnel `block2_mix` 2w → 32 → 6 without pooling, SE(6, r 3), CBAM(6, r 3)."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.conv_a = _ConvBNReLU(width, 2 * width, stride=2, rngs=rngs)
        self.conv_b = _ConvBNReLU(2 * width, 2 * width, rngs=rngs)
        self.se, self.triplet = SE(2 * width, 32, rngs=rngs), TripletAttention(rngs=rngs)
        self.funnel = Funnel(2 * width, channels=RN18_FUNNEL_CHANNELS, hidden=32, pool=False, se_reduction=3,
                             cbam_reduction=3, rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        x = self.conv_b(self.conv_a(x, train=train), train=train)
        return self.funnel(self.triplet(self.se(x), train=train), train=train)


class VGGBlock(nnx.Module):
    """A VGG variant edge block: [Conv3×3 (no bias) → BN → ReLU](cin→cout, cout→cout) → MaxPool2 →
    SE(cout, r) → triplet attention (the reference's `conv1`/`conv2` with `se_block`, `triplet`)."""

    def __init__(self, cin: int, cout: int, reduction: int, *, rngs: nnx.Rngs):
        self.conv_a, self.conv_b = _ConvBNReLU(cin, cout, rngs=rngs), _ConvBNReLU(cout, cout, rngs=rngs)
        self.se, self.triplet = SE(cout, reduction, rngs=rngs), TripletAttention(rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        x = max_pool(self.conv_b(self.conv_a(x, train=train), train=train))
        return self.triplet(self.se(x), train=train)


def _avg_pool4(x: jax.Array) -> jax.Array:
    """`F.avg_pool2d(x, 4)` (4×4 windows, stride 4, floor) and the flattening after it."""
    b, h, w, c = x.shape
    x = x[:, : h // 4 * 4, : w // 4 * 4].reshape(b, h // 4, 4, w // 4, 4, c)
    return jnp.mean(x, axis=(2, 4)).reshape(b, -1)


def _check(*, image_size: int, width: int, channels: int, num_classes: int) -> None:
    if image_size < 32 or image_size % 32:
        raise ValueError(f"expected image_size to be a positive multiple of 32 (five 2× reductions), got {image_size}")
    if width < 1:
        raise ValueError(f"expected width >= 1, got {width}")
    if channels not in (1, 3):
        raise ValueError(f"expected channels 1 or 3, got {channels}")
    if num_classes < 1:
        raise ValueError(f"expected num_classes >= 1, got {num_classes}")


@functools.cache
def _rn18_network(num_classes: int, image_size: int, channels: int, width: int) -> Sequential:
    blocks = []
    for stage, (cin, cout) in ((3, (2 * width, 4 * width)), (4, (4 * width, 8 * width))):
        blocks += [Layer(f"layer{stage}_1", pure(lambda rngs, a=cin, b=cout: BasicBlock(a, b, 2, rngs=rngs))),
                   Layer(f"layer{stage}_2", pure(lambda rngs, b=cout: BasicBlock(b, b, 1, rngs=rngs)))]
    features = 8 * width * (image_size // 32) ** 2
    return Sequential((
        # block_idx 1: the reference also runs `layer1` (two basic blocks) on conv1's output and
        # discards the result, which changes no output or gradient, so it is not built.
        Layer("block1", pure(lambda rngs: AttentionBlock(Stem(channels, width, rngs=rngs), width, reduction=16,
                                                         rngs=rngs))),
        Layer("funnel", pure(lambda rngs: ResNetFunnel(width, rngs=rngs))),
        Layer("up", pure(lambda rngs: UpBlock(RN18_FUNNEL_CHANNELS, 2 * width, rngs=rngs))),
        *blocks,
        Layer("pool", _avg_pool4),
        Layer("fc", pure(lambda rngs: Linear(features, num_classes, rngs=rngs))),
    ))


@functools.cache
def _vgg16_network(num_classes: int, image_size: int, channels: int, width: int) -> Sequential:
    layers = [
        Layer("block1", pure(lambda rngs: VGGBlock(channels, width, 16, rngs=rngs))),
        Layer("block2", pure(lambda rngs: VGGBlock(width, 2 * width, 32, rngs=rngs))),
        Layer("funnel", pure(lambda rngs: Funnel(
            2 * width, channels=VGG_FUNNEL_CHANNELS, hidden=32, squeeze_kernel=3, squeeze_bias=False, pool=False,
            se_reduction=4, cbam_reduction=4, rngs=rngs))),
        Layer("up", pure(lambda rngs: UpBlock(VGG_FUNNEL_CHANNELS, 4 * width, rngs=rngs))),
        Layer("mix", pure(lambda rngs: _ConvBNReLU(4 * width, 4 * width, use_bias=True, rngs=rngs))),
    ]
    cin = 4 * width
    for i, entry in enumerate(VGG16_PV4_CFG, start=1):
        if entry == "M":
            layers.append(Layer(f"pool{i}", max_pool))
            continue
        cout = entry * width
        layers += [conv_layer(f"conv{i}", cin, cout, 3),
                   Layer(f"bn{i}", pure(lambda rngs, c=cout: BatchNorm(c, rngs=rngs))),
                   Layer(f"relu{i}", jax.nn.relu)]
        cin = cout
    features, hidden = cin * (image_size // 32) ** 2, 64 * width
    layers += [
        Layer("flatten", lambda x: x.reshape(x.shape[0], -1)),
        Layer("fc1", pure(lambda rngs: Linear(features, hidden, rngs=rngs))),
        Layer("fc1_relu", jax.nn.relu),
        Layer("dropout1", dropout_layer(0.3)),
        Layer("fc2", pure(lambda rngs: Linear(hidden, hidden, rngs=rngs))),
        Layer("fc2_relu", jax.nn.relu),
        Layer("dropout2", dropout_layer(0.2)),
        Layer("fc3", pure(lambda rngs: Linear(hidden, num_classes, rngs=rngs))),
    ]
    return Sequential(tuple(layers))


def rn18_pv4(*, cut: str = "funnel", num_classes: int = 10, image_size: int = 64, channels: int = 3,
             width: int = 64, normalization: Normalization = SIFTFUNNEL_RGB) -> SplitModel:
    """SiftFunnel's ResNet-18 funnel variant (`rn18_pv4`, class `ResNet` of `InfoDR_package.py`); at
    64×64 the edge transmits z of 6×32×32 = 6,144 values (the unprotected ResNet-18's 32×32 map,
    after `layer2`, has 128×32×32 = 131,072).

    Differences from the reference, none of which changes the function it computes at its settings:
    - `layer1` (two basic blocks 64 → 64) is computed in the reference's forward on `conv1`'s output
      and its result discarded (siftfunnel.md: a bug); it affects no output and no gradient, so it
      is not built. Its 147,968 parameters (at width 64) are counted by the reference's model and
      not here.
    - The reference sets `conv1`'s channels to `img_size` (`self.inchannel = img_size`), which with
      the following SE(64) works only at 64×64; here they are `width`.
    - The reference's `fc` input is 512·(2·⌊img_size/64⌋)², equal to the pooled map only for
      multiples of 64; here it is the pooled map, 8w·(image_size/32)², so 32×32 inputs work too.
    - SE and CBAM hidden sizes are max(C // r, 1) (`mijax.models.attention`), which differs from
      the reference only below width 16 (SE(w, r 16)) or 32 (SE(2w, r 32)).

    Args:
        cut: the last edge layer: "funnel" (block_idx 2, the default), "block1" (block_idx 1), or any
            later layer (`RN18_PV4_TAPS[block_idx − 1]` is the reference's `feat[block_idx − 1]`).
        num_classes: output classes K.
        image_size: input height and width, a multiple of 32 (the reference uses 64).
        channels: image channels, 1 or 3.
        width: the base channel count (64 in the reference).
        normalization: input normalisation (CIFAR-10 statistics, the reference's RGB values).

    Raises:
        ValueError: for an image size that is not a multiple of 32, width < 1, channels not 1 or 3,
            num_classes < 1, or an unknown cut.

    Example:
        >>> model = rn18_pv4()
        >>> model.feature_shape()          # (32, 32, 6)
    """
    _check(image_size=image_size, width=width, channels=channels, num_classes=num_classes)
    return SplitModel(_rn18_network(num_classes, image_size, channels, width), cut, normalization,
                      (image_size, image_size, channels), num_classes, cuts=("block1", "funnel"))


def vgg16_bn_pv4(*, cut: str = "funnel", num_classes: int = 10, image_size: int = 64, channels: int = 3,
                 width: int = 64, normalization: Normalization = SIFTFUNNEL_RGB) -> SplitModel:
    """SiftFunnel's VGG-16-bn funnel variant (`vgg16_bn_pv4`, class `VGG_pv4` of `InfoDR_package.py`);
    at 64×64 the edge transmits z of 4×16×16 = 1,024 values at block_idx 3 (the default cut), against
    128×16×16 = 32,768 at block_idx 2 (the only checkpoint name in the code, siftfunnel.md).

    Notes on the reference:
    - Its `make_layers(nc, cfg['D'])` ignores `nc` and starts from 256 channels (the `mix` output);
      `cfg['D']` there is the shortened [256, M, 512, 512, 512, M, 512, 512, 512, M] (seven
      convolutions; with the edge's four, `up`'s two and `mix`, 14 besides the funnel's).
    - Its `avgpool` (adaptive 7×7) is defined and not used; the classifier's input is 512·(2·⌊img_size/64⌋)²,
      here the flattened map 8w·(image_size/32)² (equal at multiples of 64).
    - `mix` (`block2_mix`) is not an entry of its feature list, so `VGG16_BN_PV4_TAPS` skips it.
    - SE and CBAM hidden sizes are max(C // r, 1), as `rn18_pv4`; the classifier's hidden width is
      64·width (4096 in the reference).

    Args:
        cut: "funnel" (block_idx 3, the default), "block2" (block_idx 2), "block1" (block_idx 1), or any
            later layer (`VGG16_BN_PV4_TAPS[block_idx − 1]`).
        num_classes, image_size, channels, width, normalization: as `rn18_pv4`.

    Raises:
        ValueError: as `rn18_pv4`.

    Example:
        >>> model = vgg16_bn_pv4()
        >>> model.feature_shape()          # (16, 16, 4)
    """
    _check(image_size=image_size, width=width, channels=channels, num_classes=num_classes)
    return SplitModel(_vgg16_network(num_classes, image_size, channels, width), cut, normalization,
                      (image_size, image_size, channels), num_classes, cuts=("block1", "block2", "funnel"))
