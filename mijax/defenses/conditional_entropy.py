"""CEM: conditional entropy maximisation (Xia et al., "Theoretical Insights in Model Inversion
Robustness and Conditional Entropy Maximization for Collaborative Inference Systems", CVPR 2025).

With z̃ = f(x) + σε and the clean features of each class modelled as a Gaussian mixture, the
conditional entropy H(x|z̃), which lower-bounds every inversion attack's MSE, is bounded below by
H(x) − H(w) − ½ Σ_j w_j log det(I + Σ_j/σ²) (`cem.md` §4). CEM trains the edge to shrink each
component's spread towards the noise level: per batch, a hinge on the log of each hit component's
blended variance (`cem_loss`, `cem.md` §6), with the mixture refitted by per-class k-means after every
epoch (`mijax.defenses.kmeans`).

CEM adds no noise itself; use it with Gaussian feature noise of the same σ, as in the paper:

    >>> defense = chain(gaussian_noise(sigma=0.05), cem(lam=8.0, sigma=0.05, num_classes=10,
    ...                 feature_dim=512, samples_per_class=5000))
    >>> # or, the same thing: cem_with_noise(lam=8.0, sigma=0.05, ...)
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mijax import checks
from mijax.defenses.base import Defense, LossInputs, chain, check_scalar, require_spec
from mijax.defenses.kmeans import (Mixture, _layout, assign, default_chunk_size, fit_mixture,
                                   kmeans_plusplus)
from mijax.defenses.noise import gaussian_noise

_NO_LR_SCALE_BELOW = 4.1e-4  # the reference's threshold on the learning rate


def lr_coupling_scale(learning_rate: ArrayLike) -> jax.Array:
    """The reference's multiplier on the CEM gradient: s(lr) = 1 if lr < 4.1e-4 else 1e-3 / lr.

    With SGD the CEM step is then λ·min(lr, 1e-3) for the learning rates used (`cem.md` §8). A
    learning rate of 0 (the reference's first epoch) gives 1, not a division by zero.
    """
    lr = jnp.asarray(learning_rate, jnp.float32)
    return jnp.where(lr < _NO_LR_SCALE_BELOW, 1.0, 1e-3 / jnp.maximum(lr, _NO_LR_SCALE_BELOW))


def _check_loss_inputs(z, labels, mixture):
    z, labels = jnp.asarray(z), jnp.asarray(labels)
    if z.ndim < 2 or labels.shape != z.shape[:1]:
        raise ValueError(f"expected z of shape [batch, ...] matching labels [batch], got z {z.shape} "
                         f"and labels {labels.shape}")
    if mixture.means.ndim != 3:
        raise ValueError(f"expected mixture means of shape [num_classes, num_components, D], got "
                         f"{mixture.means.shape}")
    dim = math.prod(z.shape[1:])
    if mixture.means.shape[-1] != dim:
        raise ValueError(f"expected mixture means of feature size {dim} (z flattened), got "
                         f"{mixture.means.shape[-1]}")
    checks.class_labels("labels", labels, mixture.means.shape[0])
    return z.reshape(z.shape[0], dim), labels.astype(jnp.int32)


def cem_loss(z: ArrayLike, labels: ArrayLike, mixture: Mixture, *, sigma: ArrayLike,
             tau: ArrayLike = 0.125, gamma: ArrayLike = 0.01, samples_per_class: ArrayLike,
             log_entropy: bool = True, reference_compatible: bool = False) -> jax.Array:
    """The per-batch CEM loss, `cem.md` §6 (the reference's `compute_class_means`).

    For each sample, the nearest centroid of its own class, a_i = argmin_k ‖z_i − μ_{y_i,k}‖ (no
    gradient), and r_i = ‖z_i − μ_{y_i,a_i}‖² / D. For every class c present and cluster k hit in the
    batch (n^B_{c,k} > 0): v^B = mean of r_i over the hits, λ_v = min(0.99, 10·n^B/(π_{c,k}·L)) (no
    gradient), v = λ_v·v^B + (1 − λ_v)·v̄_{c,k} and

        ℓ_{c,k} = π_{c,k} · ReLU( log(v + γ) − log(τσ² + γ) )      (log_entropy)
        ℓ_{c,k} = π_{c,k} · (v + 0.001)                             (otherwise)

    L = (1/|C_B|) Σ ℓ_{c,k}. Only z receives gradients; the mixture is a constant. Vectorised as
    segment sums over flat `class·K + cluster` ids (`cem.md` §14).

    Example:
        >>> mixture = fit_mixture(z_train, y_train, num_classes=10, num_components=5, key=key)
        >>> loss = cem_loss(z, y, mixture, sigma=0.05, samples_per_class=5000)

    Args:
        z: `[batch, ...]` clean (pre-noise) edge features, flattened per example to D values.
        labels: `[batch]` integer classes.
        mixture: the per-class mixture (`fit_mixture`), means `[C, K, D]`, weights and variances
            `[C, K]`.
        sigma: the noise standard deviation σ (sets the hinge point τσ²).
        tau: the variance threshold τ (`--var_threshold`): 0.125 for CIFAR and FaceScrub, 0.0625 for
            TinyImageNet.
        gamma: the floor γ inside the logarithms (> 0).
        samples_per_class: L = N_tot / n_classes, the training samples per class.
        log_entropy: the hinge on log variances (all the reference's scripts); False gives the
            linear variant.
        reference_compatible: reproduce the reference's indexing quirk (`cem.md` §7): the j-th class
            present (ascending) reads π and v̄, in the weighting and in λ_v, from the class
            sorted(labels)[j]; and λ_v is set to 0.99 only when the ratio reaches 1. Use it with a
            mixture from `fit_mixture(..., reference_compatible=True)` for the padding quirk (§5).

    Returns:
        The scalar loss.

    Raises:
        ValueError: if z and labels do not match or the mixture's feature size differs from z's.
    """
    z, labels = _check_loss_inputs(z, labels, mixture)
    num_classes, num_components, dim = mixture.means.shape
    means = jax.lax.stop_gradient(mixture.means)
    weights = jax.lax.stop_gradient(mixture.weights)
    variances = jax.lax.stop_gradient(mixture.variances)

    own_means = means[labels]  # [B, K, D]
    dist2 = jnp.sum((jax.lax.stop_gradient(z)[:, None, :] - own_means) ** 2, -1)
    nearest = jnp.argmin(dist2, -1)
    residual = jnp.sum((z - own_means[jnp.arange(z.shape[0]), nearest]) ** 2, -1) / dim  # r_i

    ids = labels * num_components + nearest
    size = num_classes * num_components
    hits = jax.ops.segment_sum(jnp.ones_like(residual), ids, size)  # n^B
    batch_var = jax.ops.segment_sum(residual, ids, size) / jnp.maximum(hits, 1)  # v^B

    class_count = jax.ops.segment_sum(jnp.ones_like(residual), labels, num_classes)
    present = class_count > 0
    if reference_compatible:
        # The reference walks the classes present with a counter into per-sample arrays sorted by
        # label, so the j-th class present reads the statistics of sorted(labels)[j].
        rank = jnp.cumsum(present) - 1
        source = jnp.sort(labels)[jnp.clip(rank, 0, labels.shape[0] - 1)]
        weights, variances = weights[source], variances[source]
    pi, v_bar = weights.reshape(-1), variances.reshape(-1)

    ratio = 10.0 * hits / jnp.where(pi > 0, pi * samples_per_class, 1.0)
    if reference_compatible:
        lam_v = jnp.where(ratio >= 1.0, 0.99, ratio)
    else:
        lam_v = jnp.minimum(0.99, ratio)
    lam_v = jnp.where(pi > 0, lam_v, 0.99)  # π = 0 (empty cluster): any finite value, ℓ is 0
    v = lam_v * batch_var + (1.0 - lam_v) * v_bar
    if log_entropy:
        floor = jnp.log(tau * jnp.square(sigma) + gamma)
        terms = pi * jax.nn.relu(jnp.log(v + gamma) - floor)
    else:
        terms = pi * (v + 0.001)
    total = jnp.sum(jnp.where(hits > 0, terms, 0.0))
    return total / jnp.maximum(jnp.sum(present), 1)


def cem(*, lam: ArrayLike, sigma: ArrayLike, num_classes: int | None = None, num_components: int = 5,
        feature_dim: int | None = None, tau: ArrayLike = 0.125, gamma: ArrayLike = 0.01,
        samples_per_class: float | None = None, lr_coupling: float | Callable[[jax.Array], jax.Array] | None = None,
        log_entropy: bool = True, reference_compatible: bool = False, num_iters: int = 50,
        kmeanspp_power: float = 1) -> Defense:
    """The CEM training term as a `Defense` (Xia et al., CVPR 2025; `cem.md` §5–§8).

    Loss: λ·s·L_CEM (`cem_loss` on the clean features z) once a mixture exists: the first epoch has
    no CEM term (the state's `fitted` flag multiplies it by 0 until the first `epoch_update`).
    `epoch_update` refits the per-class mixture from the clean eval-mode features (k-means++ the
    first time, then warm-started from the previous centroids). λ, σ, τ and γ live in the state
    (traced, so a σ×λ sweep is one vmapped program); so does `scale`, a multiplier a caller may set.

    CEM adds no noise; chain it after `gaussian_noise` with the same σ, or use `cem_with_noise`.

    Example:
        >>> defense = chain(gaussian_noise(sigma=0.05),
        ...                 cem(lam=8.0, sigma=0.05, lr_coupling=schedule))
        >>> state = mijax.train.fit(model, x, y, defense=defense, ...)  # C, D and L from the spec

    Args:
        lam: λ >= 0, the weight of the CEM term (paper grid {0, 8, 16}).
        sigma: the noise standard deviation σ >= 0 (sets the hinge point τσ²); σ = 0 needs λ = 0.
        num_classes: C; None: the spec's (`init(key, spec)`, as `mijax.train.fit` calls it).
        num_components: K clusters per class (5 for the VGG `sgm` models, 15 otherwise).
        feature_dim: D, the flattened size of the edge output z; None: from the spec.
        tau: variance threshold τ.
        gamma: log floor γ > 0.
        samples_per_class: L = N_tot / C; None: the spec's examples per epoch / C.
        lr_coupling: the reference's learning-rate coupling s(lr) (`lr_coupling_scale`): None (s = 1,
            also the reference's fine-tune mode), a constant learning rate, or a schedule
            `step -> lr` (e.g. an optax schedule), in which case the state counts the steps.
        log_entropy: the log hinge (True, the reference's scripts) or the linear variant.
        reference_compatible: the reference's indexing and padding quirks (`cem.md` §5, §7).
        num_iters: the most k-means iterations per refit.
        kmeanspp_power: k-means++ sampling ∝ distance^p (1 as the reference, 2 standard).

    Returns:
        A `Defense` with `loss`, `epoch_update` and, with a schedule, `update`. State keys: `lam`,
        `sigma`, `tau`, `gamma`, `scale`, `step`, `fitted`, `mixture`.

    Raises:
        ValueError: if λ > 0 while σ = 0 (the reference then clusters noise-free features and its
            hinge has no noise scale; `cem.md` §8), or a setting is out of range.
    """
    lam = check_scalar("lam", lam)
    sigma = check_scalar("sigma", sigma)
    tau = check_scalar("tau", tau)
    gamma = check_scalar("gamma", gamma)
    if not isinstance(lam, jax.core.Tracer) and not isinstance(sigma, jax.core.Tracer):
        if float(lam) > 0 and float(sigma) == 0:
            raise ValueError("expected sigma > 0 when lam > 0 (CEM is defined relative to the noise; "
                             "use lam=0 for a noise-free model), got sigma=0")
    if not isinstance(gamma, jax.core.Tracer) and float(gamma) <= 0:
        raise ValueError(f"expected gamma > 0, got {float(gamma)}")
    if samples_per_class is not None and not samples_per_class > 0:
        raise ValueError(f"expected samples_per_class > 0, got {samples_per_class}")
    for name, value in (("feature_dim", feature_dim), ("num_classes", num_classes),
                        ("num_components", num_components)):
        if value is not None and value < 1:
            raise ValueError(f"expected {name} >= 1, got {value}")
    if lr_coupling is not None and not callable(lr_coupling):
        check_scalar("lr_coupling", lr_coupling)
    scheduled = callable(lr_coupling)

    def init(key=None, spec=None):
        classes, dim, per_class = num_classes, feature_dim, samples_per_class
        if None in (classes, dim, per_class):
            spec = require_spec("cem", spec)
            classes = spec.num_classes if classes is None else classes
            dim = int(np.prod(spec.feature_shape)) if dim is None else dim
            if per_class is None:
                if not spec.examples_per_epoch:
                    raise ValueError("expected samples_per_class, or a spec with examples_per_epoch")
                per_class = spec.examples_per_epoch / classes
        return {"lam": lam, "sigma": sigma, "tau": tau, "gamma": gamma,
                "scale": jnp.ones((), jnp.float32), "step": jnp.zeros((), jnp.int32),
                "fitted": jnp.zeros((), jnp.float32), "samples_per_class": jnp.float32(per_class),
                "mixture": Mixture.empty(classes, num_components, dim)}

    def coupling(state):
        if lr_coupling is None:
            return 1.0
        return lr_coupling_scale(lr_coupling(state["step"]) if scheduled else lr_coupling)

    def loss(state, inputs: LossInputs):
        value = cem_loss(inputs.z, inputs.labels, state["mixture"], sigma=state["sigma"],
                         tau=state["tau"], gamma=state["gamma"], samples_per_class=state["samples_per_class"],
                         log_entropy=log_entropy, reference_compatible=reference_compatible)
        return state["lam"] * state["scale"] * coupling(state) * state["fitted"] * value

    def update(state, inputs, key):
        return {**state, "step": state["step"] + 1}

    def epoch_update(state, features, labels, key):
        x = jnp.reshape(features, (features.shape[0], -1))
        previous = state["mixture"]
        num_classes, num_components, feature_dim = previous.means.shape
        if x.shape[1] != feature_dim:
            raise ValueError(f"expected features of size {feature_dim} per example, got {x.shape[1]}")
        means = jax.lax.cond(
            state["fitted"] > 0, lambda: previous.means,
            lambda: kmeans_plusplus(x, labels, num_classes=num_classes, num_components=num_components,
                                    key=key, power=kmeanspp_power))
        mixture = fit_mixture(x, labels, num_classes=num_classes, num_components=num_components,
                              num_iters=num_iters, init=previous._replace(means=means),
                              reference_compatible=reference_compatible)
        return {**state, "mixture": mixture, "fitted": jnp.ones((), jnp.float32)}

    return Defense(init=init, loss=loss, update=update if scheduled else None,
                   epoch_update=epoch_update)


def cem_with_noise(*, lam: ArrayLike, sigma: ArrayLike, **kwargs) -> Defense:
    """`chain(gaussian_noise(sigma), cem(lam=lam, sigma=sigma, ...))`: the paper's noise + CEM defense.

    The state is `(noise_state, cem_state)`; both hold the same σ. Keyword arguments go to `cem`.
    """
    return chain(gaussian_noise(sigma=sigma), cem(lam=lam, sigma=sigma, **kwargs))


# --- Monitors (logging only; not part of the training step) -------------------------------------


def _cluster_table(ids, num_clusters, size):
    """For each cluster, the indices of its members padded to `size`, and the validity mask."""
    counts = jnp.zeros(num_clusters, jnp.int32).at[ids].add(1)
    start = jnp.cumsum(counts) - counts
    order = jnp.argsort(ids, stable=True)
    slot = jnp.arange(size)
    valid = slot < counts[:, None]
    index = order[jnp.clip(start[:, None] + slot, 0, ids.shape[0] - 1)]
    return index, valid, counts


def _cholesky_log_det(matrix):
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(matrix), axis1=-2, axis2=-1)), -1)


def _gram_log_dets(x, index, valid, counts, sigma, clusters_per_batch):
    """log det(Σ_k + σ²I) per cluster via the n×n Gram matrix of its centred members (n < D).

    Sylvester: det(I_D + XᵀX·c) = det(I_n + XXᵀ·c), so log det(σ²I + XᵀX/(n−1)) = D log σ² +
    log det(I_n + XXᵀ/((n−1)σ²)). Members are zero-padded to a common n; padded rows stay zero after
    centring (which uses the true n_k) and add identity rows, leaving the determinant unchanged.
    """
    dim = x.shape[1]

    def one(args):
        idx, ok, n = args
        members = jnp.where(ok[:, None], x[idx], 0.0)
        mean = jnp.sum(members, 0) / jnp.maximum(n, 1)
        centred = jnp.where(ok[:, None], members - mean, 0.0)
        scale = 1.0 / (jnp.maximum(n - 1, 1) * jnp.square(sigma))
        return _cholesky_log_det(jnp.eye(idx.shape[0]) + (centred @ centred.T) * scale)

    num = index.shape[0]
    padded = -(-num // clusters_per_batch) * clusters_per_batch
    pad = lambda a: jnp.concatenate([a, jnp.zeros((padded - num,) + a.shape[1:], a.dtype)])
    out = jax.lax.map(jax.vmap(one), tuple(pad(a).reshape((-1, clusters_per_batch) + a.shape[1:])
                                           for a in (index, valid, counts)))
    return dim * jnp.log(jnp.square(sigma)) + out.reshape(-1)[:num]


def _covariance_log_dets(x, ids, centres, sigma, num_clusters, chunk_size):
    """log det(Σ_k + σ²I) per cluster via its D×D covariance, accumulated chunk by chunk.

    The samples are laid out cluster by cluster (`kmeans._layout`); each chunk adds its Gram matrix
    to its cluster's. Members are shifted by the cluster's centroid first, so that removing the
    mean, Σ = (Σ_i (z_i − μ)(z_i − μ)ᵀ − n·δδᵀ)/(n − 1) with δ = mean − μ small, does not cancel.
    """
    layout = _layout(ids, num_clusters, chunk_size)
    dim = x.shape[1]

    def add(carry, q):
        gram, sums = carry
        segment = layout.segment[q]
        rows = jnp.where(layout.valid[q][:, None], x[layout.source[q]] - centres[segment], 0.0)
        return (gram.at[segment].add(rows.T @ rows), sums.at[segment].add(jnp.sum(rows, 0))), None

    zeros = (jnp.zeros((num_clusters, dim, dim)), jnp.zeros((num_clusters, dim)))
    (gram, sums), _ = jax.lax.scan(add, zeros, jnp.arange(layout.segment.shape[0]))
    n = layout.counts.astype(jnp.float32)[:, None, None]
    shift = sums / jnp.maximum(n[:, :, 0], 1)
    covariance = (gram - n * shift[:, :, None] * shift[:, None, :]) / jnp.maximum(n - 1, 1)
    # log det(Σ + σ²I) = D log σ² + log det(I + Σ/σ²); the latter is well conditioned.
    return dim * jnp.log(jnp.square(sigma)) + _cholesky_log_det(
        jnp.eye(dim) + covariance / jnp.square(sigma))


_gram_jit = jax.jit(_gram_log_dets, static_argnames=("clusters_per_batch",))
_covariance_jit = jax.jit(_covariance_log_dets, static_argnames=("num_clusters", "chunk_size"))


def _cluster_log_dets(features, labels, mixture, sigma, assignments, max_cluster_size):
    """log det(Σ_k + σ²I) `[C, K]` (meaningful where n_k >= 2), counts `[C, K]`, and σ."""
    sigma = check_scalar("sigma", sigma)
    if not isinstance(sigma, jax.core.Tracer) and float(sigma) <= 0:
        raise ValueError(f"expected sigma > 0 for the log-det monitor, got {float(sigma)}")
    x = jnp.asarray(features, jnp.float32)
    x = x.reshape(x.shape[0], -1)
    labels = jnp.asarray(labels, jnp.int32)
    num_classes, num_components, dim = mixture.means.shape
    if x.shape[1] != dim or labels.shape != x.shape[:1]:
        raise ValueError(f"expected features [N, {dim}] and labels [N] matching the mixture, got "
                         f"{x.shape} and {labels.shape}")
    if assignments is None:
        assignments = assign(x, labels, mixture.means)
    ids = labels * num_components + jnp.asarray(assignments, jnp.int32)
    num_clusters = num_classes * num_components
    counts = jnp.zeros(num_clusters, jnp.int32).at[ids].add(1)
    if max_cluster_size is None:
        largest = int(jnp.max(counts))
        # Round up to 1/8 of an octave so that refits of similar sizes share one compiled kernel.
        step = 2 ** max(0, largest.bit_length() - 3)
        max_cluster_size = max(2, -(-largest // step) * step)
    elif not isinstance(counts, jax.core.Tracer) and int(jnp.max(counts)) > max_cluster_size:
        raise ValueError(f"expected max_cluster_size >= the largest cluster ({int(jnp.max(counts))}), "
                         f"got {max_cluster_size}")
    if max_cluster_size < dim:
        index, valid, _ = _cluster_table(ids, num_clusters, max_cluster_size)
        batch = max(1, min(num_clusters, (1 << 24) // (max_cluster_size * (max_cluster_size + dim))))
        log_dets = _gram_jit(x, index, valid, counts, sigma, clusters_per_batch=batch)
    else:
        chunk = default_chunk_size(x.shape[0], num_clusters)
        log_dets = _covariance_jit(x, ids, mixture.means.reshape(num_clusters, dim), sigma,
                                   num_clusters=num_clusters, chunk_size=chunk)
    shape = (num_classes, num_components)
    return log_dets.reshape(shape), counts.reshape(shape), sigma


def log_det_monitor(features: ArrayLike, labels: ArrayLike, mixture: Mixture, *, sigma: ArrayLike,
                    assignments: ArrayLike | None = None,
                    max_cluster_size: int | None = None) -> jax.Array:
    """The reference's robustness monitor: per class Σ_k π_k·(1/D)·log det(Σ_k + σ²I) (`cem.md` §4).

    Σ_k is the full unbiased covariance (divisor n_k − 1) of cluster k's members and π_k = n_k / N_c.
    Clusters with fewer than two members have no covariance and contribute 0, as in the reference.
    All clusters go through one batch of Cholesky factorisations. When the largest cluster is at
    least D, of the D×D covariances (accumulated chunk by chunk: memory C·K·D² floats, shapes fixed
    by N, D, C and K); otherwise, by Sylvester's identity log det(σ²I_D + XᵀX/(n−1)) = D log σ² +
    log det(I_n + XXᵀ/((n−1)σ²)), of the n×n Gram matrices of the centred members X, zero-padded to
    a common n (padding adds identity rows). The reference logs this every 10 epochs.

    Args:
        features: `[N, ...]` clean features (flattened to D values).
        labels: `[N]` integer classes.
        mixture: the fitted mixture (its centroids define the clusters unless `assignments` given).
        sigma: noise standard deviation σ > 0.
        assignments: `[N]` cluster of each sample (e.g. from `fit_mixture(..., return_info=True)`);
            default the nearest centroid of its class.
        max_cluster_size: a static bound on the cluster size, which picks the method (and pads
            the Gram matrices); default the largest cluster, rounded up, read on the host (give it
            to call this inside `jit`).

    Returns:
        `[num_classes]` values (0 for a class without clusters of two or more samples).
    """
    log_dets, counts, _ = _cluster_log_dets(features, labels, mixture, sigma, assignments,
                                            max_cluster_size)
    dim = mixture.means.shape[-1]
    pi = counts / jnp.maximum(jnp.sum(counts, 1, keepdims=True), 1)
    return jnp.sum(jnp.where(counts > 1, pi * log_dets / dim, 0.0), 1)


def mixture_entropy_bound_term(features: ArrayLike, labels: ArrayLike, mixture: Mixture, *,
                               sigma: ArrayLike, assignments: ArrayLike | None = None,
                               max_cluster_size: int | None = None) -> jax.Array:
    """R = ½ Σ_j w_j log det(I + Σ_j/σ²), the computable part of CEM's bound (`metrics.md` §5).

    H(x|z̃) ≥ H(x) − H(w) − R with one component j = (class c, cluster k) per cluster,
    w_j = n_{c,k} / N and Σ_j its unbiased covariance (components of one sample have Σ = 0 and add
    nothing). Lower R means a higher bound. Arguments as for `log_det_monitor`.

    Returns:
        The scalar R in nats.
    """
    log_dets, counts, sigma = _cluster_log_dets(features, labels, mixture, sigma, assignments,
                                                max_cluster_size)
    dim = mixture.means.shape[-1]
    w = counts / jnp.maximum(jnp.sum(counts), 1)
    relative = log_dets - dim * jnp.log(jnp.square(sigma))  # log det(I + Σ/σ²)
    return 0.5 * jnp.sum(jnp.where(counts > 1, w * relative, 0.0))


__all__ = ["Mixture", "cem", "cem_loss", "cem_with_noise", "fit_mixture", "log_det_monitor",
           "lr_coupling_scale", "mixture_entropy_bound_term"]
