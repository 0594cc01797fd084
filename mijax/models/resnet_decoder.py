"""CEM's decoder: `res_normN_AE` of the ResSFL/CEM code (`architectures_torch.py`), sized from H/h.

Xia et al. (CVPR 2025) attack every defended encoder with this residual decoder (`cem.md` §11):

    z [h, w, c_z] → ResBlock(c_z→C) → ReLU → N × [ResBlock(C→C) → ReLU]
      → stage 1, stage 2, stages 3..n → ResBlock(C→channels) → Sigmoid → x̂ [H, W, channels] ∈ (0, 1)

with `n = log2(H/h)` ×2 upsampling stages, each upsample(C→C) → BatchNorm → ReLU. The reference
always has the first two stages: when `n < 2` it puts a ResBlock(C→C) → ReLU in place of each missing
one (so 8→16 has one upsampling and one extra ResBlock; equal sizes have two extra ResBlocks).

A ResBlock is pre-activation: BN → ReLU → Conv3×3 → BN → ReLU → Conv3×3, plus the input itself, or a
1×1 conv (no bias) → BN of it when the channel count changes; no activation after the sum.

Upsampling (`upsample`):
- "transpose" (the reference): ConvTranspose 3×3, stride 2, padding 1, output_padding 1 with
  PyTorch semantics and initialisation (`mijax.models.decoders.ConvTranspose2d`; `method` chooses how
  XLA computes it: "col2im" on CPU by default, XLA's native dilated form on GPU/TPU);
- "resize": nearest-neighbour ×2, then Conv3×3 (the CPU-friendly variant, not the same function);
- "subpixel": Conv3×3 to 4·C channels, then a pixel shuffle.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mijax.models.decoders import METHODS, ConvTranspose2d, ShiftAddConv2d
from mijax.nn import BatchNorm, Conv2d, Layer, Pure, Sequential, pure

UPSAMPLE = ("transpose", "resize", "subpixel")


def _upsample_nearest(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _pixel_shuffle(x: jax.Array, r: int = 2) -> jax.Array:
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, r, r, c // (r * r)).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * r, w * r, c // (r * r))


class ResBlock(nnx.Module):
    """The reference's pre-activation residual block (`ResBlock(in, out, bn=True, stride=1)`).

    `y = conv2(relu(bn1(conv1(relu(bn0(x)))))) + shortcut(x)`, shortcut = identity, or a 1×1 conv
    without bias followed by BN when `in_channels != out_channels`. Convs are 3×3, padding 1, with bias.
    `shift_add` computes the convs with few output channels as `ShiftAddConv2d` (same function, much
    faster on XLA-CPU).
    """

    def __init__(self, in_channels: int, out_channels: int, *, matmul: bool = False,
                 shift_add: bool = False, rngs: nnx.Rngs):
        conv = ShiftAddConv2d if shift_add else Conv2d
        self.bn0 = BatchNorm(in_channels, rngs=rngs)
        self.conv1 = conv(in_channels, out_channels, 3, padding=1, matmul=matmul, rngs=rngs)
        self.bn1 = BatchNorm(out_channels, rngs=rngs)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1, matmul=matmul, rngs=rngs)
        if in_channels != out_channels:
            self.shortcut = Conv2d(in_channels, out_channels, 1, use_bias=False, matmul=matmul, rngs=rngs)
            self.shortcut_bn = BatchNorm(out_channels, rngs=rngs)
        else:
            self.shortcut = self.shortcut_bn = None

    def __call__(self, x, *, train=False, key=None):
        out = jax.nn.relu(self.bn0(x, train=train))
        out = jax.nn.relu(self.bn1(self.conv1(out), train=train))
        out = self.conv2(out)
        if self.shortcut is None:
            return out + x
        return out + self.shortcut_bn(self.shortcut(x), train=train)


class Upsample2(nnx.Module):
    """One ×2 stage without its activation: upsample(C→C) → BatchNorm (see the module docstring)."""

    def __init__(self, channels: int, *, upsample: str, method: str = "auto", matmul: bool = False,
                 rngs: nnx.Rngs):
        self.upsample = upsample
        if upsample == "transpose":
            self.conv = ConvTranspose2d(channels, channels, 3, stride=2, padding=1, output_padding=1,
                                        method=method, matmul=matmul, rngs=rngs)
        else:
            out = channels * (4 if upsample == "subpixel" else 1)
            self.conv = Conv2d(channels, out, 3, padding=1, matmul=matmul, rngs=rngs)
        self.bn = BatchNorm(channels, rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        if self.upsample == "resize":
            y = self.conv(_upsample_nearest(x))
        elif self.upsample == "subpixel":
            y = _pixel_shuffle(self.conv(x))
        else:
            y = self.conv(x)
        return self.bn(y, train=train)


def _stages(feature_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> int:
    (h, w, _), (height, width, _) = feature_shape, image_shape
    if height % h or width % w or height // h != width // w:
        raise ValueError(f"expected the image size {height}×{width} to be the same integer multiple of the "
                         f"feature size {h}×{w}, got feature_shape={feature_shape}, image_shape={image_shape}")
    ratio = height // h
    n = int(math.log2(ratio))
    if 2 ** n != ratio:
        raise ValueError(f"expected a power-of-two ratio H/h (8→32, 12→48, 16→64), got H/h = {ratio} for "
                         f"feature_shape={feature_shape}, image_shape={image_shape}")
    return n


def res_norm_decoder(*, feature_shape: Sequence[int], image_shape: Sequence[int], num_blocks: int = 8,
                     channels: int = 64, upsample: str = "transpose", method: str = "auto",
                     matmul: bool = False) -> Pure:
    """CEM's decoder `res_normN_AE(N=num_blocks, internal_nc=channels)` (Xia et al. 2025, `cem.md` §11).

    Layer names: `block0`, `relu0`, `block1..N` with `relu1..N`, then `stage1`, `stage2`, ... each
    either an upsampling (`Upsample2`, BN included) or, for missing first/second stages, a ResBlock,
    with `stage<i>_relu`; then `out_block` and `sigmoid`.

    Args:
        feature_shape: `(h, w, c_z)` of one feature map z̃, e.g. (8, 8, 8) for VGG-11 cut 4 at 32 px.
        image_shape: `(H, W, channels)` of the images; `H/h = W/w` must be a power of two.
        num_blocks: N, the ResBlocks between the input block and the upsampling (8 in CEM's attack).
        channels: internal channels C (64).
        upsample: "transpose" (the reference's ConvTranspose 3×3 s2 p1 op1), "resize" or "subpixel".
        method: how "transpose" is computed (`mijax.models.decoders.conv_transpose`): "auto",
            "col2im", "subpixel" or "dilated"; the function and its parameters do not change.
        matmul: compute the convolutions as im2col matmuls (faster under `vmap` over stacked models).

    Returns:
        A `Pure` mapping `[batch, h, w, c_z]` to `[batch, H, W, channels]` in (0, 1); it has
        BatchNorm, so train with `apply(..., train=True)` and keep the returned statistics.

    Raises:
        ValueError: on shapes of the wrong rank, a non-power-of-two or unequal size ratio, or an
            unknown option.

    Example:
        >>> decoder = res_norm_decoder(feature_shape=(8, 8, 8), image_shape=(32, 32, 3))
        >>> variables = decoder.init(jax.random.key(0))
        >>> x_hat, _ = decoder.apply(variables, z_tilde)        # [batch, 8, 8, 8] -> [batch, 32, 32, 3]
    """
    feature_shape, image_shape = tuple(int(d) for d in feature_shape), tuple(int(d) for d in image_shape)
    if len(feature_shape) != 3 or min(feature_shape) < 1:
        raise ValueError(f"expected feature_shape (height, width, channels), got {feature_shape}")
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"expected image_shape (height, width, channels), got {image_shape}")
    if upsample not in UPSAMPLE:
        raise ValueError(f"expected upsample in {UPSAMPLE}, got {upsample!r}")
    if num_blocks < 0 or channels < 1:
        raise ValueError(f"expected num_blocks >= 0 and channels >= 1, got {num_blocks}, {channels}")
    if method not in METHODS:
        raise ValueError(f"expected method in {METHODS}, got {method!r}")
    # the last block's convs have few outputs: compute them by shift-adds where "auto" picks col2im (CPU)
    shift_add = method == "col2im" or (method == "auto" and jax.default_backend() == "cpu")
    n = _stages(feature_shape, image_shape)
    c_z, out_channels = feature_shape[2], image_shape[2]

    def block(name, cin, cout, **kw):
        return Layer(name, pure(lambda rngs: ResBlock(cin, cout, matmul=matmul, rngs=rngs, **kw)))

    layers = [block("block0", c_z, channels), Layer("relu0", jax.nn.relu)]
    for i in range(1, num_blocks + 1):
        layers += [block(f"block{i}", channels, channels), Layer(f"relu{i}", jax.nn.relu)]
    for i in range(1, max(n, 2) + 1):
        if i <= n:
            layers.append(Layer(f"stage{i}", pure(lambda rngs: Upsample2(
                channels, upsample=upsample, method=method, matmul=matmul, rngs=rngs))))
        else:  # the reference keeps two stages: a ResBlock stands in for each missing upsampling
            layers.append(block(f"stage{i}", channels, channels))
        layers.append(Layer(f"stage{i}_relu", jax.nn.relu))
    layers += [block("out_block", channels, out_channels, shift_add=shift_add and out_channels < 16),
               Layer("sigmoid", jax.nn.sigmoid)]
    return Sequential(tuple(layers)).as_pure()
