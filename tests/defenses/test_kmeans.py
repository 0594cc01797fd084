"""Per-class k-means (`mijax.defenses.kmeans`) against scikit-learn and a NumPy port of the reference."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans

kmeans = importlib.import_module("mijax.defenses.kmeans")
Mixture, fit_mixture = kmeans.Mixture, kmeans.fit_mixture


@pytest.fixture(params=[True, False], ids=["pruned", "batched"])
def lloyd(request, monkeypatch):
    """Runs a test with both Lloyd implementations (Hamerly-pruned chunk scan, batched products)."""
    monkeypatch.setattr(kmeans, "_PRUNING", request.param)
    return request.param


def _blobs(seed, num_classes, num_components, dim, sizes):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c, n in zip(range(num_classes), sizes):
        centres = rng.normal(size=(num_components, dim)) * 8
        xs.append(centres[rng.integers(0, num_components, n)] + rng.normal(size=(n, dim)))
        ys.append(np.full(n, c))
    order = rng.permutation(sum(sizes))  # classes interleaved, as in a shuffled dataset
    return np.concatenate(xs)[order].astype(np.float32), np.concatenate(ys)[order]


def _reference_kmeans(x, init, num_iters, initial_label):
    """The reference's `kmeans_cuda` loop for one class, in float64 NumPy."""
    x, centroids = x.astype(np.float64), init.astype(np.float64).copy()
    labels = np.full(len(x), initial_label)
    for _ in range(num_iters):
        new = np.argmin(((x[:, None, :] - centroids[None]) ** 2).sum(-1), 1)
        if np.array_equal(labels, new):
            break
        labels = new
        for k in np.unique(labels):
            centroids[k] = x[labels == k].mean(0)
    return centroids, labels


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_matches_sklearn_inertia_per_class(chunk_size, lloyd):
    num_classes, num_components, dim = 3, 4, 6
    x, y = _blobs(0, num_classes, num_components, dim, [60, 45, 90])
    init = kmeans.kmeans_plusplus(x, y, num_classes=num_classes, num_components=num_components,
                                  key=jax.random.key(0), power=2)
    mixture = fit_mixture(x, y, num_classes=num_classes, num_components=num_components, init=init,
                          chunk_size=chunk_size)
    for c in range(num_classes):
        members = x[y == c]
        ref = KMeans(num_components, init=np.asarray(init[c]), n_init=1, algorithm="lloyd", tol=0.0,
                     max_iter=50).fit(members)
        counts = np.bincount(ref.labels_, minlength=num_components)
        inertia = float(np.sum(mixture.variances[c] * mixture.counts[c]) * dim)
        np.testing.assert_allclose(inertia, ref.inertia_, rtol=1e-4)
        np.testing.assert_allclose(mixture.means[c], ref.cluster_centers_, atol=1e-4)
        np.testing.assert_array_equal(mixture.counts[c], counts)
        np.testing.assert_allclose(mixture.weights[c], counts / len(members), rtol=1e-6)


@pytest.mark.parametrize("reference_compatible", [False, True])
def test_lloyd_matches_reference_loop(reference_compatible, lloyd):
    """Overlapping clusters (many iterations), warm start, both initial-label conventions."""
    rng = np.random.default_rng(1)
    num_classes, num_components, dim = 3, 3, 5
    x = rng.normal(size=(150, dim)).astype(np.float32)
    y = rng.integers(0, num_classes, 150)
    init = x[rng.choice(150, num_classes * num_components, replace=False)].reshape(
        num_classes, num_components, dim)
    init[1, 0] = 0.0  # ensures the zero-initial-label quirk is exercised for some class
    mixture, assignments, iterations = fit_mixture(
        x, y, num_classes=num_classes, num_components=num_components, init=init, num_iters=30,
        return_info=True, chunk_size=8)
    if reference_compatible:  # the quirk only changes classes whose first assignment is all 0
        ref_mixture = fit_mixture(x, y, num_classes=num_classes, num_components=num_components,
                                  init=init, num_iters=30, reference_compatible=True)
        np.testing.assert_array_equal(ref_mixture.counts, mixture.counts)
    for c in range(num_classes):
        centroids, labels = _reference_kmeans(x[y == c], init[c], 30, -1)
        np.testing.assert_allclose(mixture.means[c], centroids, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(assignments)[y == c], labels)
        sse = [((x[y == c][labels == k] - centroids[k]) ** 2).sum() for k in range(num_components)]
        counts = np.bincount(labels, minlength=num_components)
        expected = np.where(counts > 0, np.array(sse) / np.maximum(counts, 1) / dim, 0.0)
        np.testing.assert_allclose(mixture.variances[c], expected, rtol=1e-4)
    assert 1 < int(iterations) <= 30


def test_reference_initial_label_quirk(lloyd):
    """All of a class's first assignments are cluster 0: the reference stops before any update."""
    x = np.array([[0.0], [0.2], [0.4], [4.0]], np.float32)
    y = np.zeros(4, int)
    init = np.array([[[0.1], [9.0]]], np.float32)
    canonical = fit_mixture(x, y, num_classes=1, num_components=2, init=init)
    reference = fit_mixture(x, y, num_classes=1, num_components=2, init=init, reference_compatible=True)
    np.testing.assert_allclose(canonical.means[0, 0, 0], 1.15, rtol=1e-6)  # one update, then stops
    np.testing.assert_allclose(reference.means[0, 0, 0], 0.1)  # stopped at once
    centroids, _ = _reference_kmeans(x, init[0], 50, 0)
    np.testing.assert_allclose(reference.means[0], centroids, rtol=1e-6)


def test_degenerate_classes_stay_finite(lloyd):
    num_components, dim = 4, 3
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=(20, dim)), np.ones((10, dim)), rng.normal(size=(2, dim)),
                        rng.normal(size=(1, dim))]).astype(np.float32)
    y = np.repeat([0, 1, 2, 3], [20, 10, 2, 1])  # class 4 has no samples at all
    for power in (1, 2):
        mixture = fit_mixture(x, y, num_classes=5, num_components=num_components,
                              key=jax.random.key(3), kmeanspp_power=power)
        for leaf in mixture:
            assert np.all(np.isfinite(leaf))
        np.testing.assert_array_equal(mixture.counts.sum(1), [20, 10, 2, 1, 0])
        np.testing.assert_allclose(mixture.weights.sum(1), [1, 1, 1, 1, 0], rtol=1e-6)
        np.testing.assert_allclose(mixture.variances[1], 0.0)  # identical points
        np.testing.assert_allclose(mixture.variances[2:4], 0.0)  # every point its own cluster
        np.testing.assert_allclose(mixture.means[1], 1.0)
        assert int(np.sum(mixture.counts[0] > 0)) == num_components  # k-means++ spreads the seeds


def test_empty_cluster_keeps_centroid_and_has_no_weight(lloyd):
    x = np.array([[0.0, 0.0], [0.1, 0.0], [1.0, 1.0], [1.1, 1.0]], np.float32)
    y = np.zeros(4, int)
    init = np.array([[[0.0, 0.0], [1.0, 1.0], [50.0, 50.0]]], np.float32)
    mixture = fit_mixture(x, y, num_classes=1, num_components=3, init=init)
    np.testing.assert_allclose(mixture.means[0, 2], [50.0, 50.0])
    np.testing.assert_allclose(mixture.weights[0], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(mixture.variances[0], [0.005 / 4, 0.005 / 4, 0.0], rtol=1e-5)
    np.testing.assert_array_equal(mixture.counts[0], [2, 2, 0])


@pytest.mark.parametrize("power", [1, 2])
def test_kmeanspp_samples_proportional_to_distance_power(power):
    x = np.array([[0.0], [1.0], [3.0]], np.float32)
    y = np.zeros(3, int)
    keys = jax.random.split(jax.random.key(4), 3000)
    seeds = jax.vmap(lambda k: kmeans.kmeans_plusplus(x, y, num_classes=1, num_components=2, key=k,
                                                      power=power))(keys)
    first, second = np.asarray(seeds[:, 0, 0, 0]), np.asarray(seeds[:, 0, 1, 0])
    np.testing.assert_allclose([np.mean(first == v) for v in (0, 1, 3)], 1 / 3, atol=0.04)
    start = first == 0  # then the others are drawn ∝ (1, 3)^p
    expected = 1.0 ** power / (1.0 ** power + 3.0 ** power)
    np.testing.assert_allclose(np.mean(second[start] == 1), expected, atol=0.05)
    assert not np.any(first == second)


def test_iterations_and_early_stop(lloyd):
    x, y = _blobs(0, 3, 4, 6, [60, 45, 90])
    init = kmeans.kmeans_plusplus(x, y, num_classes=3, num_components=4, key=jax.random.key(0))
    _, _, stopped = fit_mixture(x, y, num_classes=3, num_components=4, init=init, return_info=True)
    _, _, full = fit_mixture(x, y, num_classes=3, num_components=4, init=init, early_stop=False,
                             num_iters=12, return_info=True)
    assert int(stopped) < 12 and int(full) == 12


def test_reference_padding_matches_list_building():
    """`kmeans_cuda`'s lists: v̄ over non-empty clusters, π over clusters of > 1 sample, padded."""
    rng = np.random.default_rng(6)
    counts = np.array([[0, 3, 1, 4], [2, 0, 0, 5], [1, 1, 1, 1], [6, 6, 0, 0]])
    mixture = Mixture(jnp.zeros((4, 4, 2)), jnp.asarray(counts / counts.sum(1, keepdims=True), jnp.float32),
                      jnp.asarray(rng.random((4, 4)), jnp.float32), jnp.asarray(counts, jnp.int32))
    padded = kmeans.reference_padding(mixture)
    for c in range(4):
        variances = [float(mixture.variances[c, k]) for k in range(4) if counts[c, k] > 0]
        weights = [counts[c, k] / counts[c].sum() for k in range(4) if counts[c, k] > 1]
        variances += [variances[-1]] * (4 - len(variances))
        weights += [0.01] * (4 - len(weights))
        np.testing.assert_allclose(padded.variances[c], variances, rtol=1e-6)
        np.testing.assert_allclose(padded.weights[c], weights, rtol=1e-6)


def test_reference_mode_keeps_small_classes():
    x, y = _blobs(7, 2, 2, 3, [30, 2])
    previous = fit_mixture(x, y, num_classes=2, num_components=2, key=jax.random.key(0))
    previous = previous._replace(variances=previous.variances + 1.0)
    refit = fit_mixture(x, y, num_classes=2, num_components=2, init=previous, reference_compatible=True)
    np.testing.assert_allclose(refit.variances[1], previous.variances[1])  # 2 samples <= K: kept
    assert np.all(np.asarray(refit.variances[0]) < 1.0)  # refitted


def test_vmap_over_feature_sets_and_assign():
    x, y = _blobs(0, 3, 4, 6, [60, 45, 90])
    init = kmeans.kmeans_plusplus(x, y, num_classes=3, num_components=4, key=jax.random.key(0))
    stacked = jnp.stack([x, x * 2])
    fits = jax.vmap(lambda f, m: fit_mixture(f, y, num_classes=3, num_components=4, init=m))(
        stacked, jnp.stack([init, init * 2]))
    single, assignments, _ = fit_mixture(x, y, num_classes=3, num_components=4, init=init,
                                         return_info=True)
    np.testing.assert_allclose(fits.means[0], single.means, rtol=1e-6)
    np.testing.assert_allclose(fits.means[1], 2 * single.means, rtol=1e-5)
    np.testing.assert_allclose(fits.variances[1], 4 * single.variances, rtol=1e-4)
    np.testing.assert_array_equal(kmeans.assign(x, y, single.means), assignments)


def test_bad_inputs_name_the_argument():
    x = np.zeros((10, 3), np.float32)
    y = np.zeros(10, int)
    with pytest.raises(ValueError, match="expected labels of shape"):
        fit_mixture(x, y[:5], num_classes=2, num_components=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"expected labels in \[0, 1\]"):
        fit_mixture(x, y + 2, num_classes=2, num_components=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="expected init or key"):
        fit_mixture(x, y, num_classes=2, num_components=2)
    with pytest.raises(ValueError, match=r"expected init means of shape \[2, 2, 3\]"):
        fit_mixture(x, y, num_classes=2, num_components=2, init=np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="expected num_iters >= 1"):
        fit_mixture(x, y, num_classes=2, num_components=2, key=jax.random.key(0), num_iters=0)
