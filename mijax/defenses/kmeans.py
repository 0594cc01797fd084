"""Per-class k-means for all classes at once: the Gaussian-mixture state of CEM (Xia et al., CVPR 2025).

CEM models the clean edge features of each class c as a mixture of K isotropic Gaussians, refitted
after every epoch by k-means (`cem.md` §5): centroids μ_{c,k}, weights π_{c,k} = n_k / N_c and
per-dimension variances v̄_{c,k} = Σ_{i∈k} ‖z_i − μ_{c,k}‖² / (n_k·D).

All classes are clustered in one compiled program, without a Python loop over classes or clusters.
The samples are laid out class by class in fixed-size chunks (a chunk holds samples of one class
only, zero-padded), so every chunk is compared with its own class's K centroids by one small matrix
product and the cluster sums are per-chunk products reduced by segment sums over the chunks' class
ids. The layout costs one gather of the features; the number of chunks, ⌈N/S⌉ + C − 1 for chunk
size S, is static. On CPU the Lloyd iterations run chunk by chunk (`lax.scan`) and skip, with
Hamerly's distance bounds, the chunks whose assignments cannot change (`_lloyd_pruned`); on
accelerators all chunks are one batched product per iteration (`_lloyd`). Both give the same iterates.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


class Mixture(NamedTuple):
    """Per-class isotropic Gaussian mixtures (one per class, K components each).

    Attributes:
        means: centroids μ, `[num_classes, num_components, feature_dim]`.
        weights: π_{c,k} = n_k / N_c, `[num_classes, num_components]` (0 for empty clusters).
        variances: v̄_{c,k} = Σ_{i∈k} ‖z_i − μ_{c,k}‖² / (n_k·D), `[num_classes, num_components]`
            (0 for empty clusters).
        counts: n_k, samples per cluster, `[num_classes, num_components]` int32.
    """

    means: jax.Array
    weights: jax.Array
    variances: jax.Array
    counts: jax.Array

    @classmethod
    def empty(cls, num_classes: int, num_components: int, feature_dim: int) -> Mixture:
        """All zeros: the state before the first fit (no cluster has weight)."""
        zeros = jnp.zeros((num_classes, num_components), jnp.float32)
        return cls(jnp.zeros((num_classes, num_components, feature_dim), jnp.float32), zeros, zeros,
                   jnp.zeros((num_classes, num_components), jnp.int32))


class _Layout(NamedTuple):
    """Samples grouped by segment (class) into chunks of `size` rows holding one segment each."""

    source: jax.Array  # [Q, S] index of the sample in each slot (arbitrary where not valid)
    valid: jax.Array  # [Q, S] the slot holds a sample
    segment: jax.Array  # [Q] the chunk's segment (clamped to a valid id for unused chunks)
    counts: jax.Array  # [num_segments] samples per segment


def default_chunk_size(num_samples: int, num_segments: int) -> int:
    """About an eighth of a segment's samples, a multiple of 64 in [64, 512]: little padding, big GEMMs."""
    per_chunk = num_samples / max(num_segments, 1) / 8
    return int(min(512, max(64, 64 * round(per_chunk / 64))))


def _layout(segments: jax.Array, num_segments: int, size: int) -> _Layout:
    num = segments.shape[0]
    num_chunks = -(-num // size) + num_segments - 1  # Σ_c ⌈n_c/S⌉ ≤ ⌈N/S⌉ + C − 1
    counts = jnp.zeros(num_segments, jnp.int32).at[segments].add(1, mode="drop")
    chunks = (counts + size - 1) // size
    chunk_end = jnp.cumsum(chunks)
    chunk_start = chunk_end - chunks
    sample_start = jnp.cumsum(counts) - counts
    order = jnp.argsort(segments, stable=True)
    chunk = jnp.arange(num_chunks)
    segment = jnp.searchsorted(chunk_end, chunk, side="right")  # == num_segments for unused chunks
    clamped = jnp.minimum(segment, num_segments - 1)
    offset = (chunk - chunk_start[clamped])[:, None] * size + jnp.arange(size)
    valid = (segment < num_segments)[:, None] & (offset < counts[clamped][:, None])
    source = order[jnp.clip(sample_start[clamped][:, None] + offset, 0, num - 1)]
    return _Layout(source.astype(jnp.int32), valid, clamped.astype(jnp.int32), counts)


def _gather(x: jax.Array, layout: _Layout) -> jax.Array:
    """Features in layout order, `[Q, S, D]`, zero in padding slots."""
    return jnp.where(layout.valid[..., None], x[layout.source], 0.0)


def _scatter_back(values: jax.Array, layout: _Layout, num: int) -> jax.Array:
    """Per-slot values `[Q, S]` back to sample order `[N]`."""
    index = jnp.where(layout.valid, layout.source, num).reshape(-1)
    return jnp.zeros((num,), values.dtype).at[index].set(values.reshape(-1), mode="drop")


def _segment(values: jax.Array, layout: _Layout, num_segments: int) -> jax.Array:
    return jax.ops.segment_sum(values, layout.segment, num_segments)


def _assign(xp: jax.Array, means: jax.Array, layout: _Layout) -> jax.Array:
    """Nearest of the chunk's own class centroids for every slot, `[Q, S]` int32."""
    chunk_means = means[layout.segment]  # [Q, K, D]
    # ‖z − μ‖² = ‖z‖² − 2⟨z, μ⟩ + ‖μ‖²; ‖z‖² does not change the argmin.
    scores = jnp.sum(chunk_means**2, -1)[:, None, :] - 2 * jnp.einsum("qsd,qkd->qsk", xp, chunk_means)
    return jnp.argmin(scores, -1).astype(jnp.int32)


def _one_hot(assignment: jax.Array, layout: _Layout, num_components: int) -> jax.Array:
    hit = assignment[..., None] == jnp.arange(num_components)
    return (hit & layout.valid[..., None]).astype(jnp.float32)


def _kmeans_plusplus(xp, layout, key, *, num_classes, num_components, power):
    """Sequential over K, all classes in parallel; sampling ∝ distance^power (Gumbel-max per class)."""
    num_chunks = xp.shape[0]
    chunk_ids = jnp.arange(num_chunks)

    def pick(log_weight, key):
        # Gumbel-max: argmax(log w + G) samples i with probability w_i / Σ w, within each class.
        score = jnp.where(layout.valid, log_weight + jax.random.gumbel(key, log_weight.shape), -jnp.inf)
        best_in_chunk, slot = jnp.max(score, 1), jnp.argmax(score, 1)
        best = jax.ops.segment_max(best_in_chunk, layout.segment, num_classes)
        winner = (best_in_chunk == best[layout.segment]) & (best_in_chunk > -jnp.inf)
        chunk = jax.ops.segment_min(jnp.where(winner, chunk_ids, num_chunks), layout.segment, num_classes)
        found = chunk < num_chunks
        chunk = jnp.minimum(chunk, num_chunks - 1)
        return jnp.where(found[:, None], xp[chunk, slot[chunk]], 0.0)  # an empty class gets zeros

    def body(k, carry):
        means, min_dist2 = carry
        positive = jax.ops.segment_max(jnp.any(layout.valid & (min_dist2 > 0), 1), layout.segment,
                                       num_classes)
        # log(d^p) = (p/2)·log d²; a class whose points all coincide with chosen centroids (fewer
        # distinct points than K) samples uniformly instead of dividing 0 by 0.
        log_weight = jnp.where(positive[layout.segment][:, None], 0.5 * power * jnp.log(min_dist2), 0.0)
        log_weight = jnp.where(k == 0, 0.0, log_weight)
        centroid = pick(log_weight, jax.random.fold_in(key, k))
        dist2 = jnp.sum((xp - centroid[layout.segment][:, None, :]) ** 2, -1)
        return means.at[:, k].set(centroid), jnp.minimum(min_dist2, dist2)

    means = jnp.zeros((num_classes, num_components, xp.shape[-1]), xp.dtype)
    means, _ = jax.lax.fori_loop(0, num_components, body, (means, jnp.full(xp.shape[:2], jnp.inf)))
    return means


def _lloyd(xp, layout, means, *, num_classes, num_components, num_iters, early_stop, initial_label):
    """Lloyd iterations with the reference's per-class stopping; returns (means, assignment, iterations)."""

    def body(carry):
        step, means, previous, _ = carry
        assignment = _assign(xp, means, layout)
        moved = jnp.any((assignment != previous) & layout.valid, 1)
        changed = jax.ops.segment_max(moved, layout.segment, num_classes)  # [C] bool
        one_hot = _one_hot(assignment, layout, num_components)
        sums = _segment(jnp.einsum("qsk,qsd->qkd", one_hot, xp), layout, num_classes)
        counts = _segment(jnp.sum(one_hot, 1), layout, num_classes)
        # A class whose assignments did not change has stopped (the reference breaks out of its
        # loop); an empty cluster keeps its centroid.
        update = changed[:, None] & (counts > 0)
        means = jnp.where(update[..., None], sums / jnp.maximum(counts, 1)[..., None], means)
        return step + 1, means, assignment, jnp.any(changed)

    def cond(carry):
        step, _, _, changed = carry
        return (step < num_iters) & (changed | jnp.logical_not(early_stop))

    start = jnp.full(xp.shape[:2], initial_label, jnp.int32)
    step, means, assignment, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), means, start, True))
    return means, assignment, step


def _lloyd_pruned(xp, layout, means, *, num_classes, num_components, num_iters, early_stop,
                  initial_label):
    """`_lloyd` with Hamerly's bounds (Hamerly, SDM 2010), chunk by chunk: the same iterates.

    Each sample keeps an upper bound u on the distance to its centroid and a lower bound l on the
    distance to any other centroid of its class; moving centroids by δ loosens them (u += δ_a,
    l −= max δ). A sample whose u is below max(l, ½·distance from its centroid to the nearest other
    one) keeps its assignment, so a chunk whose samples all pass is skipped (`lax.cond` inside a
    `lax.scan` over chunks), its cluster sums reused; so are the chunks of classes that stopped.
    The test has a margin above float32 rounding, so the iterates are plain Lloyd's (up to the
    rounding of exact ties, which any two float32 implementations may break differently). Worth it
    where chunks run one after another (CPU); accelerators run `_lloyd`'s batched products.
    """
    num_chunks, size, dim = xp.shape
    segment, valid = layout.segment, layout.valid
    sq_norm = jnp.sum(xp * xp, -1)
    chunk_ids = jnp.arange(num_chunks)

    def body(carry):
        step, means, assignment, upper, lower, chunk_sums, chunk_counts, active, _ = carry
        mean_sq = jnp.sum(means**2, -1)  # [C, K]
        if num_components > 1:
            gap = jnp.sqrt(jnp.maximum(mean_sq[:, :, None] + mean_sq[:, None, :] - 2 * jnp.einsum(
                "ckd,cjd->ckj", means, means), 0.0))
            gap = jnp.where(jnp.eye(num_components, dtype=bool), jnp.inf, gap)
            half_gap = 0.5 * jnp.min(gap, -1)  # [C, K]
        else:
            half_gap = jnp.full(mean_sq.shape, jnp.inf)
        own = jnp.clip(assignment, 0, num_components - 1)
        bound = jnp.maximum(lower, jnp.take_along_axis(half_gap[segment], own, 1))
        # Margin: float32 distances from ‖x‖² − 2⟨x, μ⟩ + ‖μ‖² are off by up to ~1e-3·(‖x‖ + ‖μ‖).
        margin = 2e-3 * (jnp.sqrt(sq_norm) + jnp.sqrt(jnp.max(mean_sq, -1))[segment][:, None])
        need = active[segment] & jnp.any(valid & (upper + margin > bound), 1)

        def chunk(_, inputs):
            q, need_q, *kept = inputs

            def compute(_):
                x = xp[q]
                m = means[segment[q]]
                dist2 = jnp.maximum(sq_norm[q][:, None] - 2 * x @ m.T + mean_sq[segment[q]], 0.0)
                new = jnp.argmin(dist2, -1).astype(jnp.int32)
                if num_components > 1:
                    two = -jax.lax.top_k(-dist2, 2)[0]
                    up, low = jnp.sqrt(two[:, 0]), jnp.sqrt(two[:, 1])
                else:
                    up, low = jnp.sqrt(dist2[:, 0]), jnp.full((size,), jnp.inf)
                hot = ((new[:, None] == jnp.arange(num_components)) & valid[q][:, None]).astype(x.dtype)
                return new, up, low, hot.T @ x, jnp.sum(hot, 0)

            return None, jax.lax.cond(need_q, compute, lambda _: tuple(kept), None)

        _, (new, upper, lower, chunk_sums, chunk_counts) = jax.lax.scan(
            chunk, None, (chunk_ids, need, assignment, upper, lower, chunk_sums, chunk_counts))
        moved = jnp.any((new != assignment) & valid, 1)
        changed = jax.ops.segment_max(moved, segment, num_classes)
        sums = _segment(chunk_sums, layout, num_classes)
        counts = _segment(chunk_counts, layout, num_classes)
        update = changed[:, None] & (counts > 0)
        new_means = jnp.where(update[..., None], sums / jnp.maximum(counts, 1)[..., None], means)
        shift = jnp.sqrt(jnp.sum((new_means - means) ** 2, -1))  # δ [C, K]
        upper = upper + jnp.take_along_axis(shift[segment], jnp.clip(new, 0, num_components - 1), 1)
        lower = lower - jnp.max(shift, -1)[segment][:, None]
        return (step + 1, new_means, new, upper, lower, chunk_sums, chunk_counts, changed,
                jnp.any(changed))

    def cond(carry):
        return (carry[0] < num_iters) & (carry[-1] | jnp.logical_not(early_stop))

    carry = (jnp.int32(0), means, jnp.full((num_chunks, size), initial_label, jnp.int32),
             jnp.full((num_chunks, size), jnp.inf), jnp.zeros((num_chunks, size)),
             jnp.zeros((num_chunks, num_components, dim)), jnp.zeros((num_chunks, num_components)),
             jnp.ones((num_classes,), bool), jnp.bool_(True))
    carry = jax.lax.while_loop(cond, body, carry)
    return carry[1], carry[2], carry[0]


def _statistics(xp, layout, means, assignment, *, num_classes, num_components):
    def chunk(_, inputs):
        x, segment, own, valid = inputs
        sq_dist = jnp.sum((x - means[segment][jnp.maximum(own, 0)]) ** 2, -1)  # no cancellation
        hot = ((own[:, None] == jnp.arange(num_components)) & valid[:, None]).astype(x.dtype)
        return None, (hot.T @ sq_dist, jnp.sum(hot, 0))

    # One chunk at a time, so that μ_{a_i} is never materialised for all samples.
    _, (sse, counts) = jax.lax.scan(chunk, None, (xp, layout.segment, assignment, layout.valid))
    sse, counts = _segment(sse, layout, num_classes), _segment(counts, layout, num_classes)
    class_size = jnp.sum(counts, 1, keepdims=True)
    weights = counts / jnp.maximum(class_size, 1)
    variances = jnp.where(counts > 0, sse / (jnp.maximum(counts, 1) * xp.shape[-1]), 0.0)
    return Mixture(means, weights, variances, counts.astype(jnp.int32))


def reference_padding(mixture: Mixture) -> Mixture:
    """The reference's π and v̄ arrays, whose entries no longer match the cluster ids (`cem.md` §5).

    The reference (`kmeans_cuda`) lists v̄ over the non-empty clusters in increasing id and pads the
    list with its last value, and lists π over the clusters with more than one sample, padded with
    0.01. Means and counts are unchanged. For `reference_compatible` runs only.

    Args:
        mixture: a canonical mixture (as `fit_mixture` returns by default).

    Returns:
        The mixture with `weights` and `variances` replaced by the padded arrays, `[C, K]` each.
    """

    def compress(values, keep, fill):
        # Stable sort puts the kept entries first in id order; slots past the kept ones are padding.
        order = jnp.argsort(~keep, axis=-1, stable=True)
        packed = jnp.take_along_axis(values, order, -1)
        num_kept = jnp.sum(keep, -1, keepdims=True)
        slot = jnp.arange(values.shape[-1])
        return jnp.where(slot < num_kept, packed, fill(packed, num_kept))

    def last(packed, num_kept):
        return jnp.take_along_axis(packed, jnp.maximum(num_kept - 1, 0), -1)

    variances = compress(mixture.variances, mixture.counts > 0, last)
    weights = compress(mixture.weights, mixture.counts > 1, lambda p, n: jnp.full_like(p, 0.01))
    return mixture._replace(weights=weights, variances=variances)


def _check(features, labels, num_classes, num_components, init=None):
    if not isinstance(labels, jax.core.Tracer):  # concrete (also when closed over in a traced branch)
        concrete = np.asarray(labels)
        if concrete.size and (concrete.min() < 0 or concrete.max() >= num_classes):
            raise ValueError(f"expected labels in [0, {num_classes - 1}], got values in "
                             f"[{concrete.min()}, {concrete.max()}]")
    features = jnp.asarray(features)
    labels = jnp.asarray(labels)
    if features.ndim < 2:
        raise ValueError(f"expected features of shape [num_samples, ...], got {features.shape}")
    if labels.shape != features.shape[:1] or not labels.size:
        raise ValueError(f"expected labels of shape [{features.shape[0]}] matching features (at least "
                         f"one sample), got {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"expected integer labels, got dtype {labels.dtype}")
    if num_classes < 1 or num_components < 1:
        raise ValueError(f"expected num_classes >= 1 and num_components >= 1, got {num_classes} "
                         f"and {num_components}")
    features = features.reshape(features.shape[0], -1).astype(jnp.float32)
    if init is not None:
        means = init.means if isinstance(init, Mixture) else jnp.asarray(init)
        expected = (num_classes, num_components, features.shape[1])
        if means.shape != expected:
            raise ValueError(f"expected init means of shape {list(expected)}, got {list(means.shape)}")
    return features, labels.astype(jnp.int32)


_PRUNING: bool | None = None  # None: on CPU only (tests set it to check both paths)


def _use_pruning() -> bool:
    return jax.default_backend() == "cpu" if _PRUNING is None else _PRUNING


@functools.partial(jax.jit, static_argnames=("num_classes", "num_components", "chunk_size"))
def _kmeans_plusplus_jit(x, labels, key, power, *, num_classes, num_components, chunk_size):
    layout = _layout(labels, num_classes, chunk_size)
    return _kmeans_plusplus(_gather(x, layout), layout, key, num_classes=num_classes,
                            num_components=num_components, power=power)


def kmeans_plusplus(features: ArrayLike, labels: ArrayLike, *, num_classes: int, num_components: int,
                    key: jax.Array, power: float = 1, chunk_size: int | None = None) -> jax.Array:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) of every class at once.

    The first centroid of a class is one of its samples drawn uniformly; each next one a sample drawn
    with probability ∝ d^power, d the Euclidean distance to the nearest centroid chosen so far.
    power = 1 is the CEM reference (`kmeans_plusplus_init`), power = 2 the standard algorithm. A class
    with fewer distinct samples than K draws the rest uniformly (repeating samples); an empty class
    gets zero centroids.

    Args:
        features: `[N, ...]` features (flattened per sample).
        labels: `[N]` integer classes in [0, num_classes).
        num_classes, num_components: C and K.
        key: PRNG key.
        power: the exponent p of the sampling weight.
        chunk_size: rows per chunk of the class layout (default `default_chunk_size`).

    Returns:
        Centroids `[num_classes, num_components, D]`.
    """
    x, labels = _check(features, labels, num_classes, num_components)
    chunk_size = chunk_size or default_chunk_size(x.shape[0], num_classes)
    return _kmeans_plusplus_jit(x, labels, key, jnp.float32(power), num_classes=num_classes,
                                num_components=num_components, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=(
    "num_classes", "num_components", "reference_compatible", "chunk_size", "seed", "prune",
    "keep_small_classes"))
def _fit(x, labels, init, key, num_iters, power, early_stop, *, num_classes, num_components,
         reference_compatible, chunk_size, seed, prune, keep_small_classes):
    # num_iters, power and early_stop are traced: changing them does not recompile.
    layout = _layout(labels, num_classes, chunk_size)
    xp = _gather(x, layout)
    if seed:
        means = _kmeans_plusplus(xp, layout, key, num_classes=num_classes,
                                 num_components=num_components, power=power)
    else:
        means = init.means
    lloyd = _lloyd_pruned if prune else _lloyd
    means, assignment, iterations = lloyd(
        xp, layout, means, num_classes=num_classes, num_components=num_components, num_iters=num_iters,
        early_stop=early_stop, initial_label=0 if reference_compatible else -1)
    mixture = _statistics(xp, layout, means, assignment, num_classes=num_classes,
                          num_components=num_components)
    if reference_compatible:
        mixture = reference_padding(mixture)
        if keep_small_classes:
            # The reference refits only classes with more than K samples; the rest keep their state.
            refit = layout.counts > num_components
            mixture = jax.tree.map(lambda new, old: jnp.where(
                refit.reshape((-1,) + (1,) * (new.ndim - 1)), new, old.astype(new.dtype)), mixture, init)
    return mixture, _scatter_back(assignment, layout, x.shape[0]), iterations


def fit_mixture(features: ArrayLike, labels: ArrayLike, *, num_classes: int, num_components: int,
                num_iters: int = 50, init: Mixture | ArrayLike | None = None, key: jax.Array | None = None,
                kmeanspp_power: float = 1, reference_compatible: bool = False, early_stop: bool = True,
                chunk_size: int | None = None, return_info: bool = False):
    """Fits every class's mixture by k-means, all classes in one compiled program (`cem.md` §5).

    Per class: k-means++ seeding when `init` is None (`kmeans_plusplus`), a warm start from `init`
    otherwise; then up to `num_iters` Lloyd iterations, a class stopping once its assignments no
    longer change (the whole loop is a `lax.while_loop` that ends when every class has stopped). An
    empty cluster keeps its centroid. Then n_k, π_{c,k} = n_k / N_c and
    v̄_{c,k} = Σ_{i∈k} ‖z_i − μ_{c,k}‖² / (n_k·D) (0 for an empty cluster). Classes with fewer samples
    than K, identical points and empty clusters give finite values.

    Example:
        >>> mixture = fit_mixture(z, y, num_classes=10, num_components=5, key=jax.random.key(0))
        >>> mixture = fit_mixture(z_next_epoch, y, num_classes=10, num_components=5, init=mixture)

    Args:
        features: `[N, ...]` clean features, flattened per sample to D values.
        labels: `[N]` integer classes in [0, num_classes).
        num_classes: C.
        num_components: K clusters per class.
        num_iters: the most Lloyd iterations (>= 1).
        init: warm start: a `Mixture` or centroids `[C, K, D]`.
        key: PRNG key for k-means++ (required when `init` is None).
        kmeanspp_power: sampling ∝ distance^p; 1 as the CEM reference, 2 standard k-means++.
        reference_compatible: reproduce the reference's bookkeeping: π and v̄ padded as
            `reference_padding` does, assignments start at cluster 0 (a class whose first
            assignment is all 0 stops at once), and with a `Mixture` warm start, classes with at
            most K samples keep `init`'s entries instead of being refitted.
        early_stop: stop when no assignment changes; False always runs `num_iters` iterations.
        chunk_size: rows per chunk of the class layout (default `default_chunk_size`).
        return_info: also return `(assignments [N], iterations)`.

    Returns:
        The `Mixture`, or `(mixture, assignments, iterations)` if `return_info`.

    Raises:
        ValueError: on badly shaped features, labels or init, labels out of range, num_iters < 1, or
            neither `init` nor `key`.
    """
    x, labels = _check(features, labels, num_classes, num_components, init)
    if num_iters < 1:
        raise ValueError(f"expected num_iters >= 1, got {num_iters}")
    if init is None and key is None:
        raise ValueError("expected init or key: a warm start or a PRNG key for k-means++, got neither")
    keep_small_classes = reference_compatible and isinstance(init, Mixture)
    if init is not None and not isinstance(init, Mixture):
        init = Mixture.empty(num_classes, num_components, x.shape[1])._replace(
            means=jnp.asarray(init, jnp.float32))
    chunk_size = chunk_size or default_chunk_size(x.shape[0], num_classes)
    mixture, assignments, iterations = _fit(
        x, labels, init, key, jnp.int32(num_iters), jnp.float32(kmeanspp_power), jnp.bool_(early_stop),
        num_classes=num_classes, num_components=num_components,
        reference_compatible=reference_compatible, chunk_size=chunk_size, seed=init is None,
        prune=_use_pruning(), keep_small_classes=keep_small_classes)
    return (mixture, assignments, iterations) if return_info else mixture


@functools.partial(jax.jit, static_argnames=("num_classes", "chunk_size"))
def _assign_jit(x, labels, means, *, num_classes, chunk_size):
    layout = _layout(labels, num_classes, chunk_size)
    return _scatter_back(_assign(_gather(x, layout), means, layout), layout, x.shape[0])


def assign(features: ArrayLike, labels: ArrayLike, means: ArrayLike, *,
           chunk_size: int | None = None) -> jax.Array:
    """Index of the nearest centroid of each sample's own class, `[N]` int32.

    Args:
        features: `[N, ...]` features (flattened per sample to D values).
        labels: `[N]` integer classes.
        means: centroids `[C, K, D]` (e.g. `Mixture.means`).
        chunk_size: rows per chunk of the class layout.
    """
    means = jnp.asarray(means, jnp.float32)
    if means.ndim != 3:
        raise ValueError(f"expected means of shape [num_classes, num_components, D], got {means.shape}")
    x, labels = _check(features, labels, means.shape[0], means.shape[1], means)
    chunk_size = chunk_size or default_chunk_size(x.shape[0], means.shape[0])
    return _assign_jit(x, labels, means, num_classes=means.shape[0], chunk_size=chunk_size)


__all__ = ["Mixture", "assign", "default_chunk_size", "fit_mixture", "kmeans_plusplus",
           "reference_padding"]
