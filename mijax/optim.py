"""Optimisers with the exact update rules of the authors' PyTorch code."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class AmsgradState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates


def torch_amsgrad(learning_rate: optax.ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.999,
                  eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam with AMSGrad as `torch.optim.Adam(amsgrad=True)` computes it.

    PyTorch keeps the running maximum of the *raw* second moment and divides by the current bias
    correction: step = lr/(1−b1^t) · m / (√(max_s v_s)/√(1−b2^t) + eps). `optax.amsgrad` takes the
    maximum of the bias-corrected moment instead, which differs early on and with a large eps such as
    He et al.'s 1e-3 (`he2019.md` §3).

    Args:
        learning_rate: a scalar (may be traced, e.g. swept under vmap) or an optax schedule.
        b1, b2: moment decay rates.
        eps: added to the denominator.
    """

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return AmsgradState(jnp.zeros((), jnp.int32), zeros, zeros, zeros)

    def update(grads, state, params=None):
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
        t = count.astype(jnp.float32)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        step_size = lr / (1 - b1 ** t)
        root_bc2 = jnp.sqrt(1 - b2 ** t)
        updates = jax.tree.map(lambda m, v: -step_size * m / (jnp.sqrt(v) / root_bc2 + eps), mu, nu_max)
        return updates, AmsgradState(count, mu, nu, nu_max)

    return optax.GradientTransformation(init, update)
