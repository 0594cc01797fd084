"""Dropout of transmitted features (He et al., IoT-J 2020, "Dropout defence")."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mijax.defenses.base import Defense, check_scalar


def dropout(*, rate, rescale: bool = False, on: str = "features") -> Defense:
    """z̃ = z ⊙ M, M_ij ~ Bernoulli(1 − r), applied at inference (and in training if used there).

    He et al.'s defense does **not** rescale by 1/(1 − r) (`rescale=False`, the default); the
    usual inverted dropout is `rescale=True`.

    Args:
        rate: drop probability r in [0, 1); traced when swept.
        rescale: divide the kept values by 1 − r.
        on: "features" or "input".

    Raises:
        ValueError: if rate is outside [0, 1) or `on` is unknown.
    """
    if on not in ("features", "input"):
        raise ValueError(f"expected on to be 'features' or 'input', got {on!r}")
    rate = check_scalar("rate", rate, high=1.0)
    if not isinstance(rate, jax.core.Tracer) and float(rate) >= 1.0:
        raise ValueError(f"expected rate in [0, 1), got {float(rate)}")

    def drop(state, z, key, *, train):
        keep = jax.random.uniform(key, z.shape) >= state["rate"]
        kept = z / (1.0 - state["rate"]) if rescale else z
        return jnp.where(keep, kept, jnp.zeros_like(z))

    return Defense(
        init=lambda key=None, spec=None: {"rate": rate},
        feature_transform=drop if on == "features" else None,
        input_transform=drop if on == "input" else None,
    )
