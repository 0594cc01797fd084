"""The `Defense` abstraction: an optax-like NamedTuple of optional pure functions, and `chain`.

Numeric settings (σ, λ, dropout rate, ...) live in the defense *state* returned by `init`, not in
Python closures, so a sweep stacks states and runs one compiled program under `jax.vmap`:

    >>> defense = gaussian_noise(sigma=0.0)
    >>> states = stack([gaussian_noise(sigma=s).init() for s in (0.0, 0.1, 0.5)])
    >>> jax.vmap(lambda st: defense.feature_transform(st, z, key, train=False))(states)

`init(key, spec)` gets a key derived from the run's root key and the `DefenseSpec` of the model and
data (feature shape, classes, ...), so a defense never asks its user for shapes. Parts of the state
wrapped in `Trainable` are parameters: `mijax.train` differentiates the task and defense losses with
respect to them and updates them with the model's optimiser, in the same step (VIB's encoder head,
Shredder's noise tensors). Everything else in the state is outside the gradient.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from mijax.checks import check_scalar  # noqa: F401 (the defenses import it from here)

PyTree = Any


class DefenseSpec(NamedTuple):
    """What a defense may need to know to build its state (`Defense.init(key, spec)`).

    Attributes:
        input_shape: `(height, width, channels)` of the images.
        feature_shape: shape of one clean edge output z.
        num_classes: number of classes.
        examples_per_epoch: training examples a `fit` epoch visits (the last partial batch dropped).
        sample: the first training batch of images, `[batch, *input_shape]` in [0, 1] (host array;
            for defenses that size or calibrate themselves on data).
        normalization: the edge's input `Normalization` (for input transforms whose settings live in
            the normalised space, e.g. random erasing's fill).
    """

    input_shape: tuple[int, ...]
    feature_shape: tuple[int, ...]
    num_classes: int
    examples_per_epoch: int | None = None
    sample: Any = None
    normalization: Any = None


class Trainable(NamedTuple):
    """Marks a part of a defense's state as parameters trained jointly with the model."""

    params: PyTree


def _is_trainable(node) -> bool:
    return isinstance(node, Trainable)


def trainable_part(state: PyTree) -> PyTree:
    """The `Trainable` nodes of `state` (everything else replaced by None): the defense's parameters."""
    return jax.tree.map(lambda n: n if _is_trainable(n) else None, state, is_leaf=_is_trainable)


def with_trainable(state: PyTree, trainable: PyTree) -> PyTree:
    """`state` with its `Trainable` nodes replaced by those of `trainable` (`trainable_part`'s shape)."""
    return jax.tree.map(lambda n, t: t if _is_trainable(n) else n, state, trainable, is_leaf=_is_trainable)


def require_spec(name: str, spec: DefenseSpec | None) -> DefenseSpec:
    """`spec`, or a ValueError saying that defense `name` needs one (as `mijax.train.fit` passes it)."""
    if spec is None:
        raise ValueError(f"expected spec: {name}.init(key, spec) needs the model's DefenseSpec "
                         f"(mijax.train.fit passes it; build one with model.defense_spec())")
    return spec


class LossInputs(NamedTuple):
    """What a defense's training terms may look at, for one batch.

    Attributes:
        images: `[batch, height, width, channels]` in [0,1] (after the input transform).
        labels: `[batch]` integer labels.
        z: clean edge features `[batch, ...]`.
        z_tilde: transmitted features after the feature transform.
        logits: `[batch, num_classes]` outputs of the pipeline (cloud, then client tail) on `z_tilde`.
        taps: `{layer name: output}` of the layers named in the defense's `taps`, same forward pass.
    """

    images: jax.Array
    labels: jax.Array
    z: jax.Array
    z_tilde: jax.Array
    logits: jax.Array
    taps: dict = {}


class Defense(NamedTuple):
    """A defense as optional pure functions (any may be None).

    Attributes:
        init: `init(key=None, spec=None) -> state`: the settings and state (see the module docstring;
            defenses that need neither work with `init()`).
        input_transform: `(state, x, key, *, train) -> x`, applied to images before the edge.
        feature_transform: `(state, z, key, *, train) -> z̃`, what the edge does before sending.
        loss: `(state, LossInputs) -> [batch]` (or scalar for batch-level terms) extra training loss.
        update: `(state, LossInputs, key) -> state`, per training step, outside the gradient.
        epoch_update: `(state, features, labels, key) -> state`, after each epoch from a clean
            eval-mode feature pass over the training set, augmented as the training steps are
            (e.g. CEM's mixture refit).
        taps: names of layers whose outputs `loss` reads from `LossInputs.taps`.
    """

    init: Callable[..., PyTree] = lambda key=None, spec=None: ()
    input_transform: Callable | None = None
    feature_transform: Callable | None = None
    loss: Callable | None = None
    update: Callable | None = None
    epoch_update: Callable | None = None
    taps: tuple[str, ...] = ()


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

    def init(key=None, spec=None):
        keys = [None] * len(defenses) if key is None else _keys(key)
        return tuple(d.init(k, spec) for d, k in zip(defenses, keys))

    return Defense(
        init=init,
        input_transform=_transform("input_transform"),
        feature_transform=_transform("feature_transform"),
        loss=loss if losses else None,
        update=update if any(d.update for d in defenses) else None,
        epoch_update=epoch_update if any(d.epoch_update for d in defenses) else None,
        taps=tuple(dict.fromkeys(name for d in defenses for name in d.taps)),
    )


def stack(states: Sequence[PyTree]) -> PyTree:
    """Stacks defense states along a new leading axis, for a vmapped sweep."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


