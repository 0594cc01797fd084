"""Recomputing a trained model's BatchNorm statistics with its final weights ("precise BN": Wu &
Johnson, "Rethinking 'Batch' in BatchNorm", arXiv 2105.07576, §3; fvcore's `update_bn_stats`).

A BatchNorm's running statistics are an exponential moving average of batch statistics computed
with *earlier* weights. After a long training run the lag does not matter. After a short one it
can: SiftFunnel's funnel CNN after 45 steps at lr 1e-3 classifies 0.34 of its test images in train
mode (batch statistics) but 0.11 in eval mode. Its triplet-attention BatchNorms (PyTorch momentum
0.01) still hold 64 % of their initial values, and the small funnel output makes the cloud
sensitive to every offset. Recomputed statistics bring eval mode to 0.35 (RESULTS.md, SiftFunnel).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mijax import checks
from mijax.defenses.base import Defense
from mijax.nn import Variables
from mijax.pipeline import run
from mijax.split import SplitModel


def recompute_batch_stats(model: SplitModel, variables: Variables, images, *, key: jax.Array,
                          defense: Defense | None = None, defense_state: Any = (),
                          batch_size: int = 128) -> Variables:
    """`variables` with every BatchNorm mean and variance replaced by the average of its batch
    statistics over `images`, computed in train mode with the final weights.

    Each batch runs through the training pipeline (`mijax.pipeline.run`, train mode, the defense's
    transforms active, as in training). Every layer's momentum is read off the update itself: one
    pass from all-zero statistics gives (1 − m)·B, one from all-one statistics gives m + (1 − m)·B.
    So any momentum works (0.9 and 0.99 both occur in the funnel CNN), and a statistic that no pass
    updates (m = 1) is kept. The variance is the mean of the batch variances, as in training and in
    fvcore's implementation (the spread of the batch means is not added).

    Args:
        model: the split model.
        variables: its trained variables (one model, no sweep axis).
        images: `[N, height, width, channels]` in [0, 1], usually the training images (N ≥ batch_size).
        key: PRNG key for the defense's noise and dropout during the passes.
        defense: the training defense whose transforms the statistics were trained behind.
        defense_state: its state.
        batch_size: images per batch (the training batch size); a final partial batch is dropped.

    Raises:
        ValueError: for images outside [0, 1], of the wrong shape, or fewer than `batch_size`.
    """
    images = np.asarray(images)
    model.check_images(images)
    checks.unit_interval("images", images)
    if batch_size < 1 or len(images) < batch_size:
        raise ValueError(f"expected 1 <= batch_size <= len(images) = {len(images)}, got batch_size={batch_size}")
    stats = variables.get("batch_stats", {})
    if not jax.tree_util.tree_leaves(stats):
        return variables

    @jax.jit
    def batch_statistics(x, key):
        def updated(fill):
            start = {**variables, "batch_stats": jax.tree_util.tree_map(lambda s: jnp.full_like(s, fill), stats)}
            return run(model, start, x, defense=defense, defense_state=defense_state, key=key,
                       train=True).variables["batch_stats"]
        from_zero, from_one = updated(0.0), updated(1.0)
        step = jax.tree_util.tree_map(lambda z, o: 1.0 - (o - z), from_zero, from_one)  # 1 − m per entry
        batch = jax.tree_util.tree_map(lambda z, s: z / jnp.where(s > 1e-6, s, 1.0), from_zero, step)
        return batch, step

    total, step = None, None
    batches = len(images) // batch_size
    for b in range(batches):
        x = images[b * batch_size:(b + 1) * batch_size]
        batch, step = batch_statistics(x, jax.random.fold_in(key, b))
        total = batch if total is None else jax.tree_util.tree_map(jnp.add, total, batch)
    mean = jax.tree_util.tree_map(
        lambda t, s, old: jnp.where(s > 1e-6, t / batches, old), total, step, stats)
    return {**variables, "batch_stats": mean}
