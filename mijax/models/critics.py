"""WGAN critics (discriminators) for GAN-based inversion attacks.

`dgwgan32` is GMI's `DGWGAN32` (Zhang et al., CVPR 2020; `GMI/discri.py` as vendored in the CEM code),
the critic of CEM's GAN fine-tuning attack (Xia et al. 2025, `cem.md` §11).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mijax.nn import Conv2d, Layer, Pure, Sequential, pure, torch_kernel_init


class InstanceNorm(nnx.Module):
    """`torch.nn.InstanceNorm2d(affine=True)`: per image and channel over height and width, biased
    variance, eps 1e-5, scale 1 and bias 0 at init, no running statistics. It treats images
    independently, so a gradient penalty on per-example input gradients stays well defined.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-5, rngs: nnx.Rngs):
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.eps = eps

    def __call__(self, x, *, train=False, key=None):
        mean = jnp.mean(x, axis=(1, 2), keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class _Score(nnx.Module):
    """A VALID conv with one output over the whole `[kh, kw]` map: one score per image, PyTorch init."""

    def __init__(self, in_channels: int, kernel: tuple[int, int], *, rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(in_channels * kernel[0] * kernel[1])
        self.conv = nnx.Conv(in_channels, 1, kernel, padding="VALID", kernel_init=torch_kernel_init,
                             bias_init=lambda k, s, d=jnp.float32: jax.random.uniform(k, s, d, -bound, bound),
                             rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        return self.conv(x).reshape(x.shape[0])


def _halve(n: int) -> int:  # a 5×5, stride 2, padding 2 conv: ⌊(n − 1)/2⌋ + 1
    return (n - 1) // 2 + 1


def dgwgan32(*, image_shape: Sequence[int], width: int = 64) -> Pure:
    """GMI's WGAN-GP critic `DGWGAN32` (the critic of CEM's GAN attack, `cem.md` §11).

        Conv5×5 s2 p2 (c→64) → LeakyReLU(0.2)
        → Conv5×5 s2 p2 (64→128) → InstanceNorm(affine) → LeakyReLU(0.2)
        → Conv5×5 s2 p2 (128→256) → InstanceNorm(affine) → LeakyReLU(0.2)
        → Conv over the whole remaining map (256→1) → one score per image

    The reference's last conv is 4×4, which covers the whole map only at 32 px; here it is sized
    from the map (4×4 at 32 px, 6×6 at 48 px, 8×8 at 64 px), so every size gets one score per image.

    Args:
        image_shape: `(height, width, channels)` of the images.
        width: channels of the first conv (64); the next are 2× and 4×.

    Returns:
        A `Pure` mapping `[batch, height, width, channels]` to scores `[batch]` (no BatchNorm, so
        `train` changes nothing).

    Raises:
        ValueError: on an `image_shape` that is not `(height, width, channels)` of positive sizes, or
            images of at most 8×8 pixels (the normalised 1×1 map would make the critic constant).

    Example:
        >>> critic = dgwgan32(image_shape=(32, 32, 3))
        >>> scores, _ = critic.apply(critic.init(jax.random.key(0)), images)     # [batch]
    """
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"expected image_shape (height, width, channels), got {image_shape}")
    if width < 1:
        raise ValueError(f"expected width >= 1, got {width}")
    height, wide, channels = image_shape
    for _ in range(3):
        height, wide = _halve(height), _halve(wide)
    if height * wide == 1:  # instance norm over a 1×1 map outputs its bias: a constant critic
        raise ValueError(f"expected images larger than 8×8 (the third conv's map must exceed 1×1), got "
                         f"image_shape={image_shape}")

    def conv(name, cin, cout):
        return Layer(name, pure(lambda rngs: Conv2d(cin, cout, 5, stride=2, padding=2, rngs=rngs)))

    def norm(name, c):
        return Layer(name, pure(lambda rngs: InstanceNorm(c, rngs=rngs)))

    lrelu = lambda x: jax.nn.leaky_relu(x, 0.2)
    return Sequential((
        conv("conv1", channels, width), Layer("lrelu1", lrelu),
        conv("conv2", width, 2 * width), norm("norm2", 2 * width), Layer("lrelu2", lrelu),
        conv("conv3", 2 * width, 4 * width), norm("norm3", 4 * width), Layer("lrelu3", lrelu),
        Layer("score", pure(lambda rngs: _Score(4 * width, (height, wide), rngs=rngs))),
    )).as_pure()
