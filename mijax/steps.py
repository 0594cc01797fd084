"""The one gradient step every trained player in mijax takes (models, attackers' decoders, critics).

    value_and_grad(loss) → optimizer.update → apply_updates

A player is its parameters and its optimiser state; alternating players (an adversarial decoder
inside a defense, a GAN's generator and critic) each call `descend` with their own optimiser, so a
step's order and semantics are written once.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

PyTree = Any


def descend(loss_fn: Callable[..., tuple[jax.Array, Any]], optimizer: optax.GradientTransformation,
            params: PyTree, opt_state: optax.OptState, *args) -> tuple[PyTree, optax.OptState, jax.Array, Any]:
    """One optimiser step on `loss_fn(params, *args) -> (loss, aux)`.

    Returns:
        `(new_params, new_opt_state, loss, aux)`; `loss` and `aux` are evaluated at the old `params`.
    """
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *args)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux
