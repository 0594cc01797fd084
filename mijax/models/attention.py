"""Attention blocks of the SiftFunnel edge (Liu et al., arXiv 2501.00824; siftfunnel.md), NHWC.

- `SE` (Hu et al., CVPR 2018): s = sigmoid(W2·ReLU(W1·GAP(z))), output z·s per channel.
- `CBAM` (Woo et al., ECCV 2018): channel attention sigmoid(MLP(avg-pool) + MLP(max-pool)) with a
  shared MLP C → C/r → C, then spatial attention sigmoid(conv7×7([mean_c; max_c])).
- `TripletAttention` (Misra et al., WACV 2021): three gates, Z-pool (max and mean over one axis) →
  conv7×7 (2 → 1) → BatchNorm (PyTorch momentum 0.01) → sigmoid → scale, on the tensor pooled over
  C (a map over H×W), over H (a map over C×W) and over W (a map over H×C); the mean of the three.

All MLP and convolution weights are without bias, as in the reference code; weights PyTorch-default
initialised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mijax.nn import Conv2d, torch_kernel_init


def max_over(x: jax.Array, axis: int | tuple[int, ...]) -> jax.Array:
    """The maximum over `axis`, its gradient to the first maximum, as PyTorch's `max(dim)` and
    `max_pool2d` give it. (`jnp.max`'s gradient divides by the count of input entries equal to the
    maximum; compiled at XLA-CPU's O0 that count came out 0 on ReLU outputs and the funnel model's
    gradients NaN.)"""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(a % x.ndim for a in axes)
    kept = [a for a in range(x.ndim) if a not in axes]
    flat = jnp.transpose(x, kept + list(axes)).reshape(*(x.shape[a] for a in kept), -1)
    first = jnp.argmax(flat, axis=-1, keepdims=True)  # NaN counts as the maximum, so NaN propagates
    return jnp.take_along_axis(flat, first, axis=-1)[..., 0]


def _dense(cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(cin, cout, use_bias=False, kernel_init=torch_kernel_init, rngs=rngs)


class SE(nnx.Module):
    """Squeeze-and-excitation with reduction `reduction` (hidden max(C // r, 1))."""

    def __init__(self, channels: int, reduction: int, *, rngs: nnx.Rngs):
        hidden = max(channels // reduction, 1)
        self.fc1, self.fc2 = _dense(channels, hidden, rngs), _dense(hidden, channels, rngs)

    def __call__(self, x, *, train=False, key=None):
        s = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(jnp.mean(x, axis=(1, 2))))))
        return x * s[:, None, None, :]


class CBAM(nnx.Module):
    """Convolutional block attention: channel (ratio `reduction`), then spatial (7×7)."""

    def __init__(self, channels: int, reduction: int, *, kernel_size: int = 7, rngs: nnx.Rngs):
        hidden = max(channels // reduction, 1)
        self.fc1, self.fc2 = _dense(channels, hidden, rngs), _dense(hidden, channels, rngs)
        self.spatial = Conv2d(2, 1, kernel_size, padding=kernel_size // 2, use_bias=False, rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        mlp = lambda v: self.fc2(jax.nn.relu(self.fc1(v)))
        channel = jax.nn.sigmoid(mlp(jnp.mean(x, axis=(1, 2))) + mlp(max_over(x, (1, 2))))
        x = x * channel[:, None, None, :]
        pooled = jnp.stack([jnp.mean(x, axis=-1), max_over(x, -1)], axis=-1)
        return x * jax.nn.sigmoid(self.spatial(pooled))


class _Gate(nnx.Module):
    """Z-pool over the last axis → conv7×7 (2 → 1, no bias) → BN → sigmoid → scale."""

    def __init__(self, kernel_size: int, *, rngs: nnx.Rngs):
        self.conv = Conv2d(2, 1, kernel_size, padding=kernel_size // 2, use_bias=False, rngs=rngs)
        # PyTorch momentum 0.01 = flax momentum 0.99; eps 1e-5.
        self.bn = nnx.BatchNorm(1, momentum=0.99, epsilon=1e-5, rngs=rngs)

    def __call__(self, x, *, train=False):
        pooled = jnp.stack([max_over(x, -1), jnp.mean(x, axis=-1)], axis=-1)
        return x * jax.nn.sigmoid(self.bn(self.conv(pooled), use_running_average=not train))


class TripletAttention(nnx.Module):
    """Triplet attention: the mean of the C-W, H-C and H-W gated tensors."""

    def __init__(self, *, kernel_size: int = 7, rngs: nnx.Rngs):
        self.cw, self.hc, self.hw = (_Gate(kernel_size, rngs=rngs) for _ in range(3))

    def __call__(self, x, *, train=False, key=None):
        # x: [B, H, W, C]. Pool over H: put H last -> [B, C, W, H]; over W: [B, H, C, W].
        cw = jnp.transpose(self.cw(jnp.transpose(x, (0, 3, 2, 1)), train=train), (0, 3, 2, 1))
        hc = jnp.transpose(self.hc(jnp.transpose(x, (0, 1, 3, 2)), train=train), (0, 1, 3, 2))
        hw = self.hw(x, train=train)
        return (cw + hc + hw) / 3.0
