"""Optimisers with the exact update rules of the authors' PyTorch code, and `freeze` for staged training."""

from __future__ import annotations

import fnmatch
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
                  eps: float = 1e-8, legacy_eps: bool = False) -> optax.GradientTransformation:
    """Adam with AMSGrad as `torch.optim.Adam(amsgrad=True)` computes it.

    PyTorch keeps the running maximum of the *raw* second moment and divides by the current bias
    correction: step = lr/(1−b1^t) · m / (√(max_s v_s)/√(1−b2^t) + eps). `optax.amsgrad` takes the
    maximum of the bias-corrected moment instead, which differs early on and with a large eps such as
    He et al.'s 1e-3 (`he2019.md` §3).

    PyTorch before 1.3 (pytorch/pytorch#22628; He et al. ran 1.0) added eps to √(max v) *before* the
    bias correction of the step size: step = lr·√(1−b2^t)/(1−b1^t) · m / (√(max_s v_s) + eps), i.e. an
    effective eps of eps/√(1−b2^t) — 3.2e-2 at step 1 for eps 1e-3, falling to eps as t grows.

    Args:
        learning_rate: a scalar (may be traced, e.g. swept under vmap) or an optax schedule.
        b1, b2: moment decay rates.
        eps: added to the denominator.
        legacy_eps: the rule of PyTorch < 1.3 instead of the current one.
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
        if legacy_eps:
            step = lambda m, v: -step_size * root_bc2 * m / (jnp.sqrt(v) + eps)
        else:
            step = lambda m, v: -step_size * m / (jnp.sqrt(v) / root_bc2 + eps)
        updates = jax.tree.map(step, mu, nu_max)
        return updates, AmsgradState(count, mu, nu, nu_max)

    return optax.GradientTransformation(init, update)


def freeze(optimizer: optax.GradientTransformation, *, frozen: tuple[str, ...]) -> optax.GradientTransformation:
    """`optimizer` on every parameter except those under a key matching a pattern of `frozen`.

    Staged training (Ensembler's stages, SiftFunnel's dormant stage): a parameter is frozen when any
    key on its path (a layer name such as "conv1", or "model" / "defense", the two groups of
    `mijax.train`'s parameter tree) matches one of the `fnmatch` patterns, e.g. `("conv*", "fc1")`.
    Frozen parameters get zero updates and no optimiser state (`optax.multi_transform`); BatchNorm
    statistics still follow the data in train mode.

    Raises:
        ValueError: if `frozen` is empty.
    """
    if not frozen:
        raise ValueError("expected at least one pattern in frozen")

    def is_frozen(path) -> bool:
        keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        return any(isinstance(k, str) and fnmatch.fnmatchcase(k, p) for k in keys for p in frozen)

    def labels(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: "frozen" if is_frozen(path) else "trained",
                                                params)

    return optax.multi_transform({"trained": optimizer, "frozen": optax.set_to_zero()}, labels)
