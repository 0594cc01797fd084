"""Task losses: `loss(logits, labels, step) -> [batch]` per-example values, the task term of training.

`mijax.train.fit(..., task_loss=...)` takes any of them (cross-entropy by default); `step` is the
training step, for losses with a schedule.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from mijax.checks import check_scalar

TaskLoss = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, step: jax.Array | None = None) -> jax.Array:
    """`−log softmax(logits)[y]` per example."""
    del step
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def label_smoothing(*, epsilon: float | Callable[[jax.Array], jax.Array]) -> TaskLoss:
    """Cross-entropy against the smoothed targets `(1 − ε)·onehot(y) + ε/C` (Szegedy et al. 2016).

    A negative ε is negative label smoothing (Struppek et al., ICLR 2024), a defense against
    training-data inversion; ε = 0 is `cross_entropy`. SiftFunnel trains with ε = 0.25.

    Args:
        epsilon: ε < 1, or a schedule `step -> ε` (e.g. `negative_smoothing_schedule`).
    """
    if not callable(epsilon):
        epsilon = check_scalar("epsilon", epsilon, low=-jnp.inf, high=1.0)

    def loss(logits, labels, step=None):
        eps = epsilon(step) if callable(epsilon) else epsilon
        num_classes = logits.shape[-1]
        targets = (1.0 - eps) * jax.nn.one_hot(labels, num_classes) + eps / num_classes
        return -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)

    return loss


def negative_smoothing_schedule(*, alpha: float, steps_per_epoch: int, start_epoch: int = 50,
                                end_epoch: int = 75, reference: bool = False) -> Callable[[jax.Array], jax.Array]:
    """The negative-label-smoothing schedule `step -> ε` (`random_erasing.md`, NLS baseline).

    ε = 0 before `start_epoch`, then a linear ramp to `alpha` at `end_epoch`, constant afterwards.
    `reference=True` copies the reference code's quirk: the ramp reaches only α/2 by the epoch before
    `end_epoch` and ε jumps to α there [the ramp's exact form is unverified].

    Args:
        alpha: the final smoothing factor (negative for NLS).
        steps_per_epoch: training steps per epoch (the schedule is per epoch).
    """
    if steps_per_epoch < 1 or not 0 <= start_epoch < end_epoch:
        raise ValueError(f"expected steps_per_epoch >= 1 and 0 <= start_epoch < end_epoch, got "
                         f"{steps_per_epoch}, {start_epoch}, {end_epoch}")

    def schedule(step):
        epoch = jnp.asarray(step) // steps_per_epoch
        ramp = (epoch - start_epoch) / (end_epoch - start_epoch) * (0.5 if reference else 1.0)
        return alpha * jnp.where(epoch >= end_epoch, 1.0, jnp.clip(ramp, 0.0, 1.0))

    return schedule
