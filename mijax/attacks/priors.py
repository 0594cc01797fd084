"""Image priors used by optimisation attacks."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def total_variation(x: jax.Array, *, variant: str = "code", eps: float = 1e-8) -> jax.Array:
    """Per-image total variation of `[batch, height, width, channels]` images.

    Variants (He et al. 2019, `he2019.md` §3):
      - "paper": TV_β with β = 1, Σ_{i,j,c} √((x_{i+1,j} − x_{i,j})² + (x_{i,j+1} − x_{i,j})² + eps) over
        the (H−1)×(W−1) positions that have both neighbours (eps keeps the gradient finite at 0);
      - "code": the authors' code, mean of squared vertical differences + mean of squared horizontal
        differences (effectively β = 2, separable).

    Returns:
        `[batch]` values.
    """
    dv = x[:, 1:, :, :] - x[:, :-1, :, :]
    dh = x[:, :, 1:, :] - x[:, :, :-1, :]
    if variant == "code":
        return jnp.mean(dv ** 2, axis=(1, 2, 3)) + jnp.mean(dh ** 2, axis=(1, 2, 3))
    if variant == "paper":
        return jnp.sum(jnp.sqrt(dv[:, :, :-1] ** 2 + dh[:, :-1, :] ** 2 + eps), axis=(1, 2, 3))
    raise ValueError(f"expected variant 'code' or 'paper', got {variant!r}")
