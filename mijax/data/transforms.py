"""Normalisation and augmentation in pure JAX, on NHWC images `[batch, height, width, channels]`.

Everything here is jit- and vmap-friendly: randomness comes from an explicit `jax.random` key and
shapes depend only on static arguments (`size`, `padding`).

Example:
    >>> x = jnp.zeros((8, 32, 32, 3))
    >>> k1, k2 = jax.random.split(jax.random.key(0))
    >>> x = random_crop(k1, random_flip(k2, x), padding=4)     # CIFAR training augmentation
    >>> z = IMAGENET.normalize(x)                               # He et al.'s CIFAR input
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


def _check_images(images: jax.Array, name: str = "images") -> None:
    if images.ndim != 4:
        raise ValueError(f"expected {name} of shape [batch, height, width, channels], "
                         f"got shape {tuple(images.shape)}")


def _concrete(values) -> np.ndarray | None:
    """`values` as a float vector, or None when they are not concrete numbers (tracers, ...)."""
    try:
        array = np.asarray(values)
    except Exception:  # noqa: BLE001 -- jax tracers refuse conversion
        return None
    return np.atleast_1d(array).astype(float) if array.dtype.kind in "iuf" else None


class _Fields(NamedTuple):
    mean: tuple[float, ...]
    std: tuple[float, ...]


class Normalization(_Fields):
    """Per-channel input normalisation `(x - mean) / std`, as the papers' torchvision pipelines.

    A NamedTuple of float tuples: hashable (usable in frozen dataclasses and as a static argument)
    and a pytree. A single value (`(0.5,)`) applies to every channel.

    Attributes:
        mean: per-channel means, `[channels]` or `[1]`.
        std: per-channel standard deviations (> 0), same length as `mean`.

    Raises:
        ValueError: `std` <= 0, or `mean` and `std` of different lengths.

    Example:
        >>> norm = Normalization(mean=(0.5,), std=(0.5,))
        >>> norm.normalize(jnp.ones((1, 2, 2, 1)))               # all 1.0
    """

    __slots__ = ()

    def __new__(cls, mean: Sequence[float] | float, std: Sequence[float] | float):
        m, s = _concrete(mean), _concrete(std)
        if m is None or s is None:  # traced or placeholder leaves (pytree unflattening): as given
            return super().__new__(cls, mean, std)
        if m.ndim != 1 or s.shape != m.shape:
            raise ValueError(f"expected mean and std of the same length [channels], got mean "
                             f"{tuple(m.tolist())} and std {tuple(s.tolist())}")
        if not np.all(s > 0):
            raise ValueError(f"expected std > 0 for every channel, got std {tuple(s.tolist())}")
        return super().__new__(cls, tuple(m.tolist()), tuple(s.tolist()))

    def _stats(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if x.ndim < 1 or len(self.mean) not in (1, x.shape[-1]):
            raise ValueError(f"expected x of shape [..., channels] with channels = "
                             f"{len(self.mean)}, got shape {tuple(x.shape)}")
        return jnp.asarray(self.mean, jnp.float32), jnp.asarray(self.std, jnp.float32)

    def normalize(self, x: ArrayLike) -> jax.Array:
        """`(x - mean) / std` per channel; `x` is `[..., channels]` in [0, 1]."""
        x = jnp.asarray(x)
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: ArrayLike) -> jax.Array:
        """`x * std + mean` per channel: the inverse of `normalize`, back to [0, 1] pixels."""
        x = jnp.asarray(x)
        mean, std = self._stats(x)
        return x * std + mean

    @classmethod
    def from_data(cls, images: ArrayLike) -> Normalization:
        """Per-channel mean and (population) std of `images` `[batch, height, width, channels]`.

        Computed on the host in float64, once, like the constants below were.

        Raises:
            ValueError: wrong rank, or a channel is constant (std 0).
        """
        images = np.asarray(images)
        _check_images(images)
        return cls(images.mean(axis=(0, 1, 2), dtype=np.float64),
                   images.std(axis=(0, 1, 2), dtype=np.float64))


from_data = Normalization.from_data

#: ImageNet statistics, used by He et al. for CIFAR-10.
IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: CIFAR-10 training-set statistics, used by CEM (Xia et al., 2025).
CIFAR10 = Normalization((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
#: Maps [0, 1] to [-1, 1]; He et al.'s MNIST pipeline.
MNIST_HALF = Normalization((0.5,), (0.5,))


def resize(images: ArrayLike, size: int | tuple[int, int]) -> jax.Array:
    """Bilinear resize (antialiased when shrinking) with `jax.image.resize`.

    Args:
        images: `[batch, height, width, channels]`; integer images are converted to float32.
        size: new `(height, width)`, or one int for both.

    Returns:
        `[batch, size[0], size[1], channels]`, floating point.
    """
    images = jnp.asarray(images)
    _check_images(images)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height <= 0 or width <= 0:
        raise ValueError(f"expected size > 0, got {size}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        images = images.astype(jnp.float32)
    return jax.image.resize(images, (images.shape[0], height, width, images.shape[3]), "bilinear")


def random_flip(key: jax.Array, images: ArrayLike) -> jax.Array:
    """Flips each image horizontally with probability 1/2.

    Args:
        key: `jax.random` key.
        images: `[batch, height, width, channels]`.

    Returns:
        `[batch, height, width, channels]`, each image either as given or mirrored left-right.
    """
    images = jnp.asarray(images)
    _check_images(images)
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def random_crop(key: jax.Array, images: ArrayLike, *, padding: int) -> jax.Array:
    """Zero-pads by `padding` on each side, then crops each image back at a random offset.

    torchvision's `RandomCrop(size, padding)`, used for CIFAR training by the papers.

    Args:
        key: `jax.random` key.
        images: `[batch, height, width, channels]`.
        padding: pixels of zeros added on each side (a static Python int >= 0).

    Returns:
        `[batch, height, width, channels]`.
    """
    images = jnp.asarray(images)
    _check_images(images)
    if not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"expected padding to be an int >= 0, got {padding!r}")
    batch, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)
    crop = lambda image, offset: jax.lax.dynamic_slice(
        image, (offset[0], offset[1], 0), (height, width, channels))
    return jax.vmap(crop)(padded, offsets)


def rotate(images: ArrayLike, degrees: ArrayLike) -> jax.Array:
    """Rotates each image counter-clockwise about its centre, nearest neighbour, zero fill.

    torchvision's `F.rotate(img, angle)` on tensors (interpolation NEAREST, `expand=False`, fill 0):
    the output pixel at continuous position p (pixel centres at index + 0.5, the origin at the image
    centre) takes the input pixel nearest to R(−θ)·p; pixels mapped from outside the image are 0.

    Args:
        images: `[batch, height, width, channels]`.
        degrees: `[batch]` angles in degrees (or one angle for all).

    Returns:
        `[batch, height, width, channels]`.
    """
    images = jnp.asarray(images)
    _check_images(images)
    batch, height, width, _ = images.shape
    theta = jnp.deg2rad(jnp.broadcast_to(jnp.asarray(degrees, jnp.float32), (batch,)))
    y, x = jnp.meshgrid(jnp.arange(height) + 0.5 - height / 2, jnp.arange(width) + 0.5 - width / 2,
                        indexing="ij")

    def one(image, t):
        cos, sin = jnp.cos(t), jnp.sin(t)
        # y points down, so a visually counter-clockwise turn samples (x cos − y sin, x sin + y cos)
        col = jnp.round(x * cos - y * sin + width / 2 - 0.5).astype(jnp.int32)
        row = jnp.round(x * sin + y * cos + height / 2 - 0.5).astype(jnp.int32)
        inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
        pixels = image[jnp.clip(row, 0, height - 1), jnp.clip(col, 0, width - 1)]
        return jnp.where(inside[..., None], pixels, 0.0)

    return jax.vmap(one)(images, theta)


def random_rotation(key: jax.Array, images: ArrayLike, *, degrees: float) -> jax.Array:
    """Rotates each image by an angle drawn uniformly from [−degrees, degrees] (see `rotate`).

    torchvision's `RandomRotation(degrees)`, part of CEM's training augmentation (`cem.md` §2).

    Raises:
        ValueError: if `degrees` is negative.
    """
    if not degrees >= 0:
        raise ValueError(f"expected degrees >= 0, got {degrees!r}")
    images = jnp.asarray(images)
    _check_images(images)
    angles = jax.random.uniform(key, (images.shape[0],), minval=-degrees, maxval=degrees)
    return rotate(images, angles)
