"""CEM (`mijax.defenses.conditional_entropy`): the loss against a loop port of the reference, monitors, the Defense."""

import importlib
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mijax import defenses, models, train
from mijax.defenses import LossInputs, Mixture

cem_module = importlib.import_module("mijax.defenses.conditional_entropy")
kmeans = importlib.import_module("mijax.defenses.kmeans")


def _reference_assignments(z, labels, means):
    """Nearest centroid of the own class, in float64 (the reference's host-side argmin)."""
    z = np.asarray(z, np.float64).reshape(len(labels), -1)
    means = np.asarray(means, np.float64)
    return np.array([np.argmin(((z[i] - means[labels[i]]) ** 2).sum(-1)) for i in range(len(labels))])


def _reference_loss(z, labels, assignments, mixture, *, sigma, tau, gamma, samples_per_class,
                    log_entropy, reference_compatible):
    """A port of the reference's `compute_class_means` (`cem.md` §6, §7) as Python loops (NumPy).

    The assignments (the reference's host-side argmin) come from outside, so that finite
    differences keep them fixed.
    """
    labels = np.asarray(labels)
    z = z.reshape(len(labels), -1)
    means, weights, variances = (np.asarray(a, np.float64) for a in mixture[:3])
    order = np.argsort(labels, kind="stable")
    sorted_labels, sorted_assign = labels[order], np.asarray(assignments)[order]
    sorted_z = z[order]
    # Per-sample rows, as `weights_all`/`cluster_variances_all` in the reference.
    weights_all, variances_all = weights[sorted_labels], variances[sorted_labels]
    nearest = means[sorted_labels, sorted_assign]
    variance_matrix = (sorted_z - nearest) ** 2
    total, current = 0.0, 0
    unique_labels = np.unique(sorted_labels)
    for lb_count, c in enumerate(unique_labels):
        if reference_compatible:
            weights_label, variance_label = weights_all[lb_count], variances_all[lb_count]
        else:
            weights_label, variance_label = weights[c], variances[c]
        start = current
        while current < len(sorted_labels) and sorted_labels[current] == c:
            current += 1
        class_variance = variance_matrix[start:current]
        cluster_assignments = sorted_assign[start:current]
        class_total = 0.0
        for j in np.unique(cluster_assignments):
            members = class_variance[np.flatnonzero(cluster_assignments == j)]
            weight, variance = weights_label[j], variance_label[j]
            if weight == 0:  # an empty cluster of the fit (canonical mode): no loss
                continue
            var_lambda = len(members) / (weight * samples_per_class) * 10
            if reference_compatible:
                var_lambda = 0.99 if var_lambda >= 1 else var_lambda
            else:
                var_lambda = min(var_lambda, 0.99)
            v = var_lambda * np.mean(members) + (1 - var_lambda) * variance
            if log_entropy:
                hinge = np.log(v + gamma) - math.log(tau * sigma**2 + gamma)
                class_total = class_total + max(hinge, 0.0) * weight
            else:
                class_total = class_total + (v + 0.001) * weight
        total = total + class_total
    return total / len(unique_labels)


def _random_case(seed, batch, num_classes, num_components, shape=(2, 2, 3)):
    rng = np.random.default_rng(seed)
    dim = math.prod(shape)
    z = rng.random((batch,) + shape).astype(np.float32)
    labels = rng.integers(0, num_classes, batch)
    means = rng.random((num_classes, num_components, dim)).astype(np.float32)
    counts = rng.integers(0, 30, (num_classes, num_components))
    counts[:, 0] = np.maximum(counts[:, 0], 2)
    weights = counts / counts.sum(1, keepdims=True)
    variances = np.where(counts > 0, rng.random((num_classes, num_components)) * 0.2, 0.0)
    mixture = Mixture(jnp.asarray(means), jnp.asarray(weights, jnp.float32),
                      jnp.asarray(variances, jnp.float32), jnp.asarray(counts, jnp.int32))
    return z, labels, mixture


SETTINGS = dict(sigma=0.3, tau=0.125, gamma=0.01, samples_per_class=40.0)
_loss = jax.jit(defenses.cem_loss, static_argnames=("log_entropy", "reference_compatible"))


@pytest.mark.parametrize("batch,num_classes,num_components", [(7, 3, 2), (32, 5, 4), (64, 10, 5)])
@pytest.mark.parametrize("reference_compatible", [False, True])
def test_loss_matches_reference_loop(batch, num_classes, num_components, reference_compatible):
    z, labels, mixture = _random_case(batch, batch, num_classes, num_components)
    if reference_compatible:
        mixture = kmeans.reference_padding(mixture)
    assignments = _reference_assignments(z, labels, mixture.means)
    for log_entropy in (True, False):
        expected = _reference_loss(z, labels, assignments, mixture, log_entropy=log_entropy,
                                   reference_compatible=reference_compatible, **SETTINGS)
        actual = _loss(z, labels, mixture, log_entropy=log_entropy,
                       reference_compatible=reference_compatible, **SETTINGS)
        np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=1e-7)
    # Directional derivatives of the float64 loop port (central differences, assignments fixed).
    grad = jax.grad(lambda z: _loss(z, labels, mixture, log_entropy=True,
                                    reference_compatible=reference_compatible, **SETTINGS))(jnp.asarray(z))
    rng = np.random.default_rng(0)
    for _ in range(3):
        u = rng.normal(size=z.shape)
        f = lambda t: _reference_loss(z.astype(np.float64) + t * u, labels, assignments, mixture,
                                      log_entropy=True, reference_compatible=reference_compatible,
                                      **SETTINGS)
        np.testing.assert_allclose(np.sum(np.asarray(grad) * u), (f(1e-6) - f(-1e-6)) / 2e-6,
                                   rtol=1e-3, atol=1e-6)


def test_reference_indexing_quirk_reads_the_smallest_labels():
    """Two classes of two samples each: the second class present reads the first class's π, v̄."""
    z, _, mixture = _random_case(0, 4, 3, 2)
    labels = np.array([2, 0, 2, 0])  # sorted: [0, 0, 2, 2] → class 2 (j = 1) reads class 0's row
    swapped = mixture._replace(weights=mixture.weights.at[2].set(mixture.weights[0]),
                               variances=mixture.variances.at[2].set(mixture.variances[0]))
    quirk = defenses.cem_loss(z, labels, mixture, reference_compatible=True, **SETTINGS)
    canonical = defenses.cem_loss(z, labels, swapped, **SETTINGS)
    np.testing.assert_allclose(quirk, canonical, rtol=1e-6)


def test_loss_is_finite_in_degenerate_cases():
    z, labels, mixture = _random_case(1, 16, 4, 3)
    identical = jnp.ones_like(z)
    fit = defenses.fit_mixture(identical, labels, num_classes=4, num_components=3, key=jax.random.key(0))
    single = np.arange(4)  # one sample per class
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda z, labels, mixture, sigma: defenses.cem_loss(z, labels, mixture, sigma=sigma,
                                                            samples_per_class=10.0)))
    empty = Mixture.empty(4, 3, z[0].size)
    for args in [(z, labels, mixture, 1e-4), (identical, labels, fit, 0.1), (z[:4], single, mixture, 0.1),
                 (z, labels, empty, 0.1)]:
        loss, grad = value_and_grad(jnp.asarray(args[0]), *args[1:])
        assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert float(value_and_grad(jnp.asarray(z), labels, empty, 0.1)[0]) == 0.0


def test_gradient_reaches_the_edge_only():
    model = models.digits_cnn(image_size=16)
    variables = model.init(jax.random.key(0))
    images = jax.random.uniform(jax.random.key(1), (12, 16, 16, 1))
    labels = jnp.arange(12) % 3
    z = np.asarray(model.edge_apply(variables, images)[0]).reshape(12, -1)
    dim = z.shape[1]
    # Two components per class, centred on the class's first two samples; spread above the hinge.
    means = jnp.asarray(np.stack([z[[c, c + 3]] for c in range(3)]))
    mixture = Mixture(means, jnp.full((3, 2), 0.5), jnp.full((3, 2), 0.5), jnp.full((3, 2), 2, jnp.int32))
    defense = defenses.cem(lam=8.0, sigma=0.05, num_classes=3, num_components=2, feature_dim=dim,
                           samples_per_class=4.0)
    state = {**defense.init(), "mixture": mixture, "fitted": jnp.float32(1)}

    @jax.jit
    def loss_and_grads(params):
        def loss_fn(params):
            v = {**variables, "params": params}
            z, _ = model.edge_apply(v, images, train=True)
            logits, _ = model.cloud_apply(v, z, train=True)
            return jnp.mean(defense.loss(state, LossInputs(images, labels, z, z, logits)))
        return jax.value_and_grad(loss_fn)(params)

    loss, grads = loss_and_grads(variables["params"])
    assert float(loss) > 0
    edge = jax.tree.leaves([g for name, g in grads.items() if name in model.edge_names])
    cloud = jax.tree.leaves([g for name, g in grads.items() if name in model.cloud_names])
    assert edge and cloud
    assert all(np.all(np.isfinite(g)) for g in edge)
    assert sum(float(jnp.abs(g).sum()) for g in edge) > 0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in cloud)


@pytest.mark.slow
def test_defense_first_epoch_has_no_term_and_fit_integrates():
    """Through `train.fit`: no CEM term before the first epoch update, which fits the mixture."""
    model = models.digits_cnn(image_size=16)
    rng = np.random.default_rng(0)
    images = rng.random((48, 16, 16, 1)).astype(np.float32)
    labels = np.arange(48) % 3
    defense = defenses.cem_with_noise(lam=8.0, sigma=0.05, num_classes=3, num_components=2,
                                      feature_dim=8 * 8 * 8, samples_per_class=16.0)
    state = train.fit(model, images, labels, optimizer=optax.sgd(0.01), epochs=1, batch_size=24,
                      key=jax.random.key(0), defense=defense, progress=False)
    cem_state = state.defense_state[1]
    assert float(cem_state["fitted"]) == 1.0
    np.testing.assert_allclose(cem_state["mixture"].weights.sum(1), 1.0, rtol=1e-6)
    z = model.edge_apply(state.variables, images[:12])[0]
    inputs = LossInputs(None, jnp.asarray(labels[:12]), z, None, None)
    assert float(defense.loss(defense.init(), inputs)) == 0.0  # not fitted yet: no term
    fitted = defense.loss(state.defense_state, inputs)   # λ·L_CEM with the epoch's mixture
    want = 8.0 * defenses.cem_loss(z, jnp.asarray(labels[:12]), cem_state["mixture"], sigma=0.05,
                                   samples_per_class=16.0)
    assert float(fitted) > 0.0
    np.testing.assert_allclose(fitted, want, rtol=1e-5)


def test_sigma_zero_with_lambda_is_rejected():
    kwargs = dict(num_classes=2, feature_dim=4, samples_per_class=10.0)
    with pytest.raises(ValueError, match="expected sigma > 0 when lam > 0"):
        defenses.cem(lam=1.0, sigma=0.0, **kwargs)
    defenses.cem(lam=0.0, sigma=0.0, **kwargs)  # the no-CEM baseline is fine
    with pytest.raises(ValueError, match="expected lam"):
        defenses.cem(lam=-1.0, sigma=0.1, **kwargs)
    with pytest.raises(ValueError, match="expected gamma > 0"):
        defenses.cem(lam=1.0, sigma=0.1, gamma=0.0, **kwargs)
    with pytest.raises(ValueError, match="expected z of shape"):
        defenses.cem_loss(np.zeros((3, 4)), np.zeros(2, int), Mixture.empty(2, 2, 4), sigma=0.1,
                          samples_per_class=1.0)
    with pytest.raises(ValueError, match="expected mixture means of feature size 4"):
        defenses.cem_loss(np.zeros((3, 4)), np.zeros(3, int), Mixture.empty(2, 2, 5), sigma=0.1,
                          samples_per_class=1.0)


def test_lr_coupling():
    np.testing.assert_allclose(defenses.lr_coupling_scale(jnp.array([0.0, 4e-4, 4.1e-4, 0.05, 0.002])),
                               [1.0, 1.0, 1e-3 / 4.1e-4, 0.02, 0.5], rtol=1e-6)
    z, labels, mixture = _random_case(2, 16, 3, 2)
    schedule = optax.piecewise_constant_schedule(0.05, {2: 0.2})  # lr 0.05, then 0.01
    kwargs = dict(lam=2.0, sigma=0.3, num_classes=3, num_components=2, feature_dim=12,
                  samples_per_class=40.0)
    coupled, plain = defenses.cem(lr_coupling=schedule, **kwargs), defenses.cem(**kwargs)
    state = {**coupled.init(), "fitted": jnp.float32(1), "mixture": mixture}
    inputs = LossInputs(None, jnp.asarray(labels), jnp.asarray(z), None, None)
    base = plain.loss(state, inputs)
    values = []
    for _ in range(3):
        values.append(coupled.loss(state, inputs))
        state = coupled.update(state, inputs, jax.random.key(0))
    np.testing.assert_allclose(values, [0.02 * base, 0.02 * base, 0.1 * base], rtol=1e-5)
    fixed = defenses.cem(lr_coupling=0.002, **kwargs)
    np.testing.assert_allclose(fixed.loss(state, inputs), 0.5 * base, rtol=1e-5)


def test_sigma_lambda_sweep_traces_once():
    z, labels, mixture = _random_case(3, 16, 3, 2)
    kwargs = dict(num_classes=3, num_components=2, feature_dim=12, samples_per_class=40.0)
    defense = defenses.cem(lam=1.0, sigma=0.1, **kwargs)
    inputs = LossInputs(None, jnp.asarray(labels), jnp.asarray(z), None, None)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def sweep(states):
        return jax.vmap(lambda s: defense.loss(s, inputs))(states)

    grid = [(lam, sigma) for lam in (0.0, 8.0, 16.0) for sigma in (0.01, 0.05, 0.1)]
    states = defenses.stack([{**defenses.cem(lam=l, sigma=s, **kwargs).init(), "mixture": mixture,
                              "fitted": jnp.float32(1)} for l, s in grid])
    values = sweep(states)
    sweep(jax.tree.map(lambda a: a * 1, states))  # same shapes: no retrace
    for (lam, sigma), value in zip(grid, values):
        expected = lam * defenses.cem_loss(z, labels, mixture, sigma=sigma, samples_per_class=40.0)
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7)
    # The epoch refit vmaps too (as `train.fit(sweep=True)` runs it): one feature set per model.
    fresh = defenses.stack([defenses.cem(lam=l, sigma=s, **kwargs).init() for l, s in grid[:2]])
    features = jnp.stack([z, 2 * z])
    refit = jax.jit(jax.vmap(defense.epoch_update, in_axes=(0, 0, None, None)))(
        fresh, features, labels, jax.random.key(0))
    np.testing.assert_array_equal(refit["fitted"], [1.0, 1.0])
    np.testing.assert_allclose(refit["mixture"].means[1], 2 * refit["mixture"].means[0], rtol=1e-5)


def _log_det_reference(x, labels, assignments, num_classes, num_components, sigma):
    out = np.zeros((num_classes, num_components))
    counts = np.zeros((num_classes, num_components), int)
    for c in range(num_classes):
        for k in range(num_components):
            members = x[(labels == c) & (assignments == k)].astype(np.float64)
            counts[c, k] = len(members)
            if len(members) > 1:
                cov = np.cov(members, rowvar=False).reshape(x.shape[1], x.shape[1])
                out[c, k] = np.linalg.slogdet(cov + sigma**2 * np.eye(x.shape[1]))[1]
    return out, counts


@pytest.mark.parametrize("dim", [3, 40])  # n_k > D (covariance) and D > n_k (Sylvester)
def test_log_det_monitor_and_entropy_bound(dim):
    rng = np.random.default_rng(dim)
    num_classes, num_components, sigma = 3, 3, 0.2
    x = rng.normal(size=(60, dim)).astype(np.float32)
    labels = rng.integers(0, num_classes, 60)
    labels[:2] = 2
    assignments = rng.integers(0, num_components, 60)
    assignments[labels == 2] = np.where(np.arange(np.sum(labels == 2)) == 0, 1, 0)  # a singleton
    mixture = Mixture.empty(num_classes, num_components, dim)
    log_dets, counts = _log_det_reference(x, labels, assignments, num_classes, num_components, sigma)
    pi = counts / counts.sum(1, keepdims=True)
    expected = np.sum(np.where(counts > 1, pi * log_dets / dim, 0.0), 1)
    actual = defenses.log_det_monitor(x, labels, mixture, sigma=sigma, assignments=assignments)
    np.testing.assert_allclose(actual, expected, rtol=1e-4)
    w = counts / counts.sum()
    bound = 0.5 * np.sum(np.where(counts > 1, w * (log_dets - dim * np.log(sigma**2)), 0.0))
    np.testing.assert_allclose(
        defenses.mixture_entropy_bound_term(x, labels, mixture, sigma=sigma, assignments=assignments),
        bound, rtol=1e-4)
    with pytest.raises(ValueError, match="expected sigma > 0"):
        defenses.log_det_monitor(x, labels, mixture, sigma=0.0, assignments=assignments)
