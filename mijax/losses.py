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
                                end_epoch: int = 75, reference: bool = False,
                                epochs: int | None = None) -> Callable[[jax.Array], jax.Array]:
    """The negative-label-smoothing schedule `step -> ε` (Struppek et al. ICLR 2024; MIDRE's NLS baseline).

    Clean ramp (default): ε = 0 before `start_epoch`, linear to `alpha` at `end_epoch`, then constant.

    `reference=True` is the reference code's `ls_scheduler(epoch, n_epochs)`: ε = 0 before
    `start_epoch`; for `start_epoch <= e < end_epoch`, ε = α·(e + 1 − start_epoch)/(epochs − start_epoch);
    ε = α from `end_epoch`. With the reference's 50/75/100 the ramp reaches only α/2 at epoch 74 and
    jumps to α at 75 (`random_erasing.md`, update).

    Args:
        alpha: the final smoothing factor (negative for NLS).
        steps_per_epoch: training steps per epoch (the schedule is per epoch).
        start_epoch, end_epoch: the ramp's first epoch and the epoch from which ε = α.
        reference: the reference's ramp instead of the clean one.
        epochs: the run's epochs (`n_epochs` of the reference ramp; default `2·end_epoch − start_epoch`,
            which is 100 for 50/75).

    Raises:
        ValueError: unless steps_per_epoch >= 1, 0 <= start_epoch < end_epoch and epochs > start_epoch.
    """
    epochs = 2 * end_epoch - start_epoch if epochs is None else epochs
    if steps_per_epoch < 1 or not 0 <= start_epoch < end_epoch or epochs <= start_epoch:
        raise ValueError(f"expected steps_per_epoch >= 1, 0 <= start_epoch < end_epoch and epochs > start_epoch, "
                         f"got {steps_per_epoch}, {start_epoch}, {end_epoch}, {epochs}")

    def schedule(step):
        epoch = jnp.asarray(step) // steps_per_epoch
        if reference:
            ramp = (epoch + 1 - start_epoch) / (epochs - start_epoch)
        else:
            ramp = (epoch - start_epoch) / (end_epoch - start_epoch)
        factor = jnp.where(epoch >= end_epoch, 1.0, jnp.where(epoch < start_epoch, 0.0, jnp.clip(ramp, 0.0, 1.0)))
        return alpha * factor

    return schedule
