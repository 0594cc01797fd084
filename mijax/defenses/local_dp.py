"""Local-DP noise on the transmitted features (other_defenses.md, the ResSFL/CEM code bases).

z is clipped per example to an L2 norm bound Δ (z·min(1, Δ/‖z‖)), then z̃ = z + n with
n ~ Laplace(0, Δ/ε) element-wise, or n ~ N(0, s²) with s = √(2·ln(1.25/δ))·Δ/ε (the Gaussian
mechanism's calibration). The reference code bases leave Δ implicit at 1 and do not clip; pass
`clip=False` for that form. ε (the privacy budget) is a traced setting: a budget sweep compiles once.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mijax.defenses.base import Defense, check_scalar

MECHANISMS = ("laplace", "gaussian")


def clip_norm(z: jax.Array, bound) -> jax.Array:
    """Each example of `z` `[batch, ...]` scaled to an L2 norm of at most `bound`."""
    norm = jnp.sqrt(jnp.sum(jnp.square(z.reshape(z.shape[0], -1)), axis=1))
    scale = jnp.minimum(1.0, bound / jnp.maximum(norm, 1e-12))
    return z * scale.reshape((-1,) + (1,) * (z.ndim - 1))


def local_dp_noise(*, epsilon, mechanism: str = "laplace", sensitivity=1.0, delta: float = 1e-4,
                   clip: bool = True) -> Defense:
    """Clipping to Δ, then Laplace(0, Δ/ε) or Gaussian √(2 ln(1.25/δ))·Δ/ε noise, fresh per call.

    Args:
        epsilon: privacy budget ε > 0; traced when swept.
        mechanism: "laplace" or "gaussian".
        sensitivity: the norm bound Δ > 0 (1, the reference's implicit value).
        delta: δ of the Gaussian mechanism (1e-4).
        clip: clip z to Δ first (False: the reference code bases, which add the noise unclipped).

    Raises:
        ValueError: for ε or Δ not positive, δ outside (0, 1), or an unknown mechanism.
    """
    if mechanism not in MECHANISMS:
        raise ValueError(f"expected mechanism to be one of {MECHANISMS}, got {mechanism!r}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"expected delta in (0, 1), got {delta}")
    settings = {"epsilon": check_scalar("epsilon", epsilon, open_low=True),
                "sensitivity": check_scalar("sensitivity", sensitivity, open_low=True)}
    gaussian_factor = math.sqrt(2.0 * math.log(1.25 / delta))

    def transform(state, z, key, *, train):
        bound = state["sensitivity"]
        if clip:
            z = clip_norm(z, bound)
        if mechanism == "laplace":
            return z + (bound / state["epsilon"]) * jax.random.laplace(key, z.shape)
        return z + (gaussian_factor * bound / state["epsilon"]) * jax.random.normal(key, z.shape)

    return Defense(init=lambda key=None, spec=None: dict(settings), feature_transform=transform)
