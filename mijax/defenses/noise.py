"""Additive noise on the transmitted features or on the input.

He et al., IoT-J 2020, §"Noise obfuscation": z̃ = z + ε with ε ~ N(0, σ²I) or Laplace(0, b), at
inference only; CEM (Xia et al. 2025) also trains with Gaussian feature noise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mijax.data.transforms import Normalization
from mijax.defenses.base import Defense, check_scalar

_PLACES = ("features", "input")


def _additive(name: str, scale, sample, on: str, normalization) -> Defense:
    if on not in _PLACES:
        raise ValueError(f"expected on to be one of {_PLACES}, got {on!r}")
    if normalization is not None and on != "input":
        raise ValueError("normalization applies to input noise only: pass it with on='input'")
    scale = check_scalar(name, scale)
    # noise of scale s in the normalised space is noise of scale s·std in pixels
    unit = 1.0 if normalization is None else jnp.asarray(normalization.std, jnp.float32)

    def add(state, x, key, *, train):
        return x + state[name] * unit * sample(key, x.shape)

    return Defense(
        init=lambda key=None, spec=None: {name: scale},
        feature_transform=add if on == "features" else None,
        input_transform=add if on == "input" else None,
    )


def gaussian_noise(*, sigma, on: str = "features", normalization: Normalization | None = None) -> Defense:
    """z̃ = z + σ·ε, ε ~ N(0, I), fresh per element and call (He et al. IoT-J 2020; CEM).

    Args:
        sigma: noise standard deviation, >= 0; traced when swept.
        on: "features" (the transmitted z) or "input" (the image, before the edge).
        normalization: for input noise, the edge's normalisation: the noise is then N(0, σ²) in
            the model's input (normalised) space, as He et al. add it, i.e. σ·std per channel in
            pixels. None: σ in [0,1] pixel units. The noisy image is not clipped.

    Raises:
        ValueError: if sigma is negative or `on` is unknown.
    """
    return _additive("sigma", sigma, lambda k, s: jax.random.normal(k, s), on, normalization)


def laplace_noise(*, scale, on: str = "features", normalization: Normalization | None = None) -> Defense:
    """z̃ = z + ε, ε ~ Laplace(0, b) element-wise (He et al. IoT-J 2020; Titcombe et al. 2021).

    Args:
        scale: the Laplace scale b >= 0 (std √2·b); traced when swept.
        on: "features" or "input".
        normalization: for input noise, Laplace(0, b) in the normalised space (see `gaussian_noise`).
    """
    return _additive("scale", scale, lambda k, s: jax.random.laplace(k, s), on, normalization)
