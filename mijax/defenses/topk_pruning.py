"""Top-k pruning of transmitted features (ResSFL / CEM code `topkprune`; `other_defenses.md`)."""

from __future__ import annotations

import jax.numpy as jnp

from mijax.defenses.base import Defense, check_scalar


def _ranks(values):
    """Rank of each entry along the last axis (0 = smallest), ties broken by position."""
    return jnp.argsort(jnp.argsort(values, axis=-1), axis=-1)


def topk(*, prune_ratio, reference_compatible: bool = False) -> Defense:
    """Zeroes the fraction `prune_ratio` of entries of z.

    Default (mijax): per example, the entries of smallest magnitude. `reference_compatible=True`:
    the smallest *signed* values ranked over the whole batch tensor, as the ResSFL/CEM code does.
    The ratio may be traced (the cut-off rank is computed, not sliced).

    Args:
        prune_ratio: fraction r in [0, 1] of entries set to zero.
        reference_compatible: use the reference's batch-wide signed ranking.
    """
    prune_ratio = check_scalar("prune_ratio", prune_ratio, high=1.0)

    def prune(state, z, key, *, train):
        if reference_compatible:
            flat = z.reshape(1, -1)
            ranks = _ranks(flat)
        else:
            flat = z.reshape(z.shape[0], -1)
            ranks = _ranks(jnp.abs(flat))
        num_pruned = jnp.floor(state["prune_ratio"] * flat.shape[-1])
        return jnp.where(ranks >= num_pruned, flat, 0.0).reshape(z.shape)

    return Defense(init=lambda key=None, spec=None: {"prune_ratio": prune_ratio}, feature_transform=prune)
