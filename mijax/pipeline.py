"""The deployed pipeline, one forward pass: input transform, edge, feature transform, cloud, client tail.

    x ─T_in→ x' ─f→ z ─T→ z̃ ─g→ cloud output ─h→ logits

Training (`mijax.train`), evaluation and the oracles of `mijax.attacks.knowledge` all run it, so the
keys, the defense and the taps (named layers' outputs, recorded in the same pass) are handled in one
place.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from mijax.defenses.base import Defense, identity
from mijax.nn import Variables
from mijax.split import SplitModel


class Forward(NamedTuple):
    """What one forward pass computed (`run`).

    Attributes:
        images: the images after the defense's input transform.
        z: the clean edge output.
        z_tilde: what the edge transmits, after the feature transform.
        logits: the output of the cloud and the client tail.
        taps: `{layer name: output}` for the requested layers (a stacked cloud's with a member axis).
        variables: the variables with updated BatchNorm statistics (train mode).
    """

    images: jax.Array
    z: jax.Array
    z_tilde: jax.Array
    logits: jax.Array
    taps: dict
    variables: Variables


def transmit(model: SplitModel, variables: Variables, images, *, defense: Defense | None = None,
             defense_state: Any = (), key: jax.Array, train: bool = False,
             taps: tuple[str, ...] = ()) -> Forward:
    """The edge side: `images → T_in → f → T`; the returned `Forward` has no logits (None)."""
    defense = defense or identity()
    input_key, edge_key, feature_key = jax.random.split(key, 3)
    if defense.input_transform is not None:
        images = defense.input_transform(defense_state, images, input_key, train=train)
    z, variables, tapped = model.edge_apply_tapped(variables, images, train=train, key=edge_key, taps=taps)
    z_tilde = z if defense.feature_transform is None else defense.feature_transform(
        defense_state, z, feature_key, train=train)
    return Forward(images, z, z_tilde, None, tapped, variables)


def run(model: SplitModel, variables: Variables, images, *, defense: Defense | None = None,
        defense_state: Any = (), key: jax.Array, train: bool = False, taps: tuple[str, ...] = ()) -> Forward:
    """The whole pipeline in one pass: the edge side draws from `key` (as `transmit`), the cloud and
    tail from `fold_in(key, 1)`."""
    edge = transmit(model, variables, images, defense=defense, defense_state=defense_state, key=key,
                    train=train, taps=taps)
    return cloud_side(model, edge, key=jax.random.fold_in(key, 1), train=train, taps=taps)


def cloud_side(model: SplitModel, edge: Forward, *, key: jax.Array, train: bool = False,
               taps: tuple[str, ...] = ()) -> Forward:
    """Completes `edge` (a `transmit` result) with the cloud and the client tail."""
    out, variables, cloud_taps = model.cloud_apply_tapped(edge.variables, edge.z_tilde, train=train, key=key,
                                                          taps=taps)
    logits, variables, tail_taps = model.tail_apply(variables, out, train=train, key=key, taps=taps)
    return edge._replace(logits=logits, taps={**edge.taps, **cloud_taps, **tail_taps}, variables=variables)
