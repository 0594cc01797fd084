"""The `Defense` abstraction: an optax-like NamedTuple of optional pure functions, and `chain`.

Numeric settings (σ, λ, dropout rate, ...) live in the defense *state* returned by `init()`, not in
Python closures, so a sweep stacks states and runs one compiled program under `jax.vmap`:

    >>> defense = gaussian_noise(sigma=0.0)
    >>> states = stack([gaussian_noise(sigma=s).init() for s in (0.0, 0.1, 0.5)])
    >>> jax.vmap(lambda st: defense.feature_transform(st, z, key, train=False))(states)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from mijax.checks import check_scalar  # noqa: F401 (the defenses import it from here)

PyTree = Any


class LossInputs(NamedTuple):
    """What a defense's training terms may look at, for one batch.

    Attributes:
        images: `[batch, height, width, channels]` in [0,1] (after the input transform).
        labels: `[batch]` integer labels.
        z: clean edge features `[batch, ...]`.
        z_tilde: transmitted features after the feature transform.
        logits: `[batch, num_classes]` cloud outputs on `z_tilde`.
    """

    images: jax.Array
    labels: jax.Array
    z: jax.Array
    z_tilde: jax.Array
    logits: jax.Array


class Defense(NamedTuple):
    """A defense as optional pure functions (any may be None).

    Attributes:
        init: `init() -> state`, the settings and state kept outside the gradient.
        input_transform: `(state, x, key, *, train) -> x`, applied to images before the edge.
        feature_transform: `(state, z, key, *, train) -> z̃`, what the edge does before sending.
        loss: `(state, LossInputs) -> [batch]` (or scalar for batch-level terms) extra training loss.
        update: `(state, LossInputs, key) -> state`, per training step, outside the gradient.
        epoch_update: `(state, features, labels, key) -> state`, after each epoch from a clean
            eval-mode feature pass over the training set (e.g. CEM's mixture refit).
    """

    init: Callable[[], PyTree] = lambda: ()
    input_transform: Callable | None = None
    feature_transform: Callable | None = None
    loss: Callable | None = None
    update: Callable | None = None
    epoch_update: Callable | None = None


def identity() -> Defense:
    """No defense."""
    return Defense()


def chain(*defenses: Defense) -> Defense:
    """Composes defenses: transforms apply in order, losses add, states form a tuple.

    Example:
        >>> chain(gaussian_noise(sigma=0.1), dropout(rate=0.2))
    """

    def _keys(key):
        return [jax.random.fold_in(key, i) for i in range(len(defenses))]

    def _transform(field):
        if all(getattr(d, field) is None for d in defenses):
            return None

        def apply(state, x, key, *, train):
            for d, s, k in zip(defenses, state, _keys(key)):
                fn = getattr(d, field)
                if fn is not None:
                    x = fn(s, x, k, train=train)
            return x

        return apply

    losses = [(i, d.loss) for i, d in enumerate(defenses) if d.loss is not None]

    def loss(state, inputs):
        return sum(fn(state[i], inputs) for i, fn in losses)

    def update(state, inputs, key):
        return tuple(d.update(s, inputs, k) if d.update else s
                     for d, s, k in zip(defenses, state, _keys(key)))

    def epoch_update(state, features, labels, key):
        return tuple(d.epoch_update(s, features, labels, k) if d.epoch_update else s
                     for d, s, k in zip(defenses, state, _keys(key)))

    return Defense(
        init=lambda: tuple(d.init() for d in defenses),
        input_transform=_transform("input_transform"),
        feature_transform=_transform("feature_transform"),
        loss=loss if losses else None,
        update=update if any(d.update for d in defenses) else None,
        epoch_update=epoch_update if any(d.epoch_update for d in defenses) else None,
    )


def stack(states: Sequence[PyTree]) -> PyTree:
    """Stacks defense states along a new leading axis, for a vmapped sweep."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


