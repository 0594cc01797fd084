"""Shredder: learned additive noise on the features of a frozen network (Mireshghallah et al.,
ASPLOS 2020, arXiv 1905.11814; `other_defenses.md`; Ensembler's baseline).

The network is trained first and then frozen; a collection of K noise tensors n_1 … n_K of the
feature shape is learned so that the task loss stays low while the noise grows:

    L = CE(g(f(x) + n_k), y) − λ · mean_k mean(|n_k|),        k ~ U{1..K} per example,

and at inference each query draws its noise from the learned collection. The loss form (mean
magnitude as the privacy reward), the Laplace initialisation and K are [unverified] reconstructions
(the paper's exact objective uses an SNR term; GLASS's `cloak_defense.py` is a reimplementation).
Train it with `mijax.train.fit(model, ..., defense=shredder(...), variables=trained,
optimizer=mijax.optim.freeze(optax.adam(lr), frozen=("model",)))`; deploy the trained network's
variables unchanged with the learned defense state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mijax.defenses.base import Defense, Trainable, check_scalar, require_spec


def shredder(*, collection: int = 16, init_scale=1.0, weight=0.1) -> Defense:
    """Shredder's learned noise collection (see the module docstring).

    Args:
        collection: K, noise tensors learned and sampled from.
        init_scale: the Laplace scale b of their initialisation.
        weight: λ, the reward for the noise's mean magnitude (traced).

    Raises:
        ValueError: on collection < 1 or negative scales.
    """
    if collection < 1:
        raise ValueError(f"expected collection >= 1, got {collection}")
    init_scale, weight = check_scalar("init_scale", init_scale), check_scalar("weight", weight)

    def init(key=None, spec=None):
        spec = require_spec("shredder", spec)
        key = jax.random.key(0) if key is None else key
        noise = init_scale * jax.random.laplace(key, (collection, *spec.feature_shape))
        return {"noise": Trainable(noise), "weight": weight}

    def transform(state, z, key, *, train):
        noise = state["noise"].params
        index = jax.random.randint(key, (z.shape[0],), 0, noise.shape[0])
        return z + noise[index]

    def loss(state, inputs):
        return -state["weight"] * jnp.mean(jnp.abs(state["noise"].params))

    return Defense(init=init, feature_transform=transform, loss=loss)


def noise_magnitude(state) -> jax.Array:
    """The learned collection's mean |n| (what the privacy reward grows)."""
    return jnp.mean(jnp.abs(state["noise"].params))
