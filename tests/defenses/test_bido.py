"""mijax.defenses.bido: the kernel dependence measures against NumPy loops, and the per-layer term."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax.defenses import LossInputs
from mijax.defenses.bido import bilateral_dependency, dependence, gaussian_kernel, hsic


def kernel_loop(a, sigma=5.0, scale=True):
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    n, d = a.shape
    k = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            k[i, j] = np.exp(-np.sum((a[i] - a[j]) ** 2) / (2 * sigma ** 2 * (d if scale else 1)))
    return k


def hsic_loop(k, l):
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def dep_loop(a, b, measure, sigma=5.0):
    k, l = kernel_loop(a, sigma), kernel_loop(b, sigma)
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    if measure == "hsic":
        return hsic_loop(k, l) / np.sqrt(hsic_loop(k, k) * hsic_loop(l, l))
    if measure == "hsic_cca":
        rk = (k @ h) @ np.linalg.inv(k @ h + 1e-5 * n * np.eye(n))
        rl = (l @ h) @ np.linalg.inv(l @ h + 1e-5 * n * np.eye(n))
        return sum(rk[i, j] * rl[j, i] for i in range(n) for j in range(n))
    kc, lc = h @ k @ h, h @ l @ h
    return np.sqrt(np.linalg.norm(kc @ lc)) / n


X = jax.random.normal(jax.random.key(0), (16, 3, 2, 2))
Z = jnp.tanh(X.reshape(16, -1)[:, :4]) * 3.0 + 0.5 * jax.random.normal(jax.random.key(1), (16, 4))


def test_kernels_and_hsic_match_numpy_loops():
    np.testing.assert_allclose(gaussian_kernel(X), kernel_loop(X), rtol=1e-5)
    np.testing.assert_allclose(gaussian_kernel(X, sigma=2.0, scale_by_dim=False),
                               kernel_loop(X, 2.0, scale=False), rtol=1e-4, atol=1e-7)
    k, l = kernel_loop(X), kernel_loop(Z)
    np.testing.assert_allclose(hsic(k, l), hsic_loop(k, l), rtol=1e-3)


@pytest.mark.parametrize("measure", ["hsic", "hsic_cca", "coco"])
def test_dependence_matches_numpy_loop(measure):
    np.testing.assert_allclose(dependence(X, Z, measure=measure), dep_loop(X, Z, measure), rtol=2e-3)


def test_normalised_hsic_range():
    np.testing.assert_allclose(dependence(X, X), 1.0, rtol=1e-5)
    a = jax.random.normal(jax.random.key(2), (256, 5))
    b = jax.random.normal(jax.random.key(3), (256, 5))
    # measured: 0.041 (independent) and 0.250 (a, a²: dependent, uncorrelated) at σ = 1
    assert float(dependence(a, b, sigma=1.0)) < 0.08 < 0.2 < float(dependence(a, a ** 2, sigma=1.0))


def test_per_layer_term_and_gradient():
    labels = jnp.arange(16) % 4
    taps = {"a": Z, "b": X * 2.0}
    inputs = LossInputs(jax.nn.sigmoid(X), labels, Z, Z, jnp.zeros((16, 4)), taps)
    defense = bilateral_dependency(lambda_x=0.05, lambda_y=0.5, taps=("a", "b"))
    onehot = jax.nn.one_hot(labels, 4)
    expected = sum(0.05 * dep_loop(inputs.images, h, "hsic") - 0.5 * dep_loop(h, onehot, "hsic")
                   for h in taps.values())
    np.testing.assert_allclose(defense.loss(defense.init(), inputs), expected, rtol=1e-3)
    assert defense.taps == ("a", "b")
    only_z = bilateral_dependency(lambda_x=1.0, lambda_y=0.0, measure="coco")
    np.testing.assert_allclose(only_z.loss(only_z.init(), inputs), dep_loop(inputs.images, Z, "coco"), rtol=2e-3)
    grad = jax.grad(lambda z: defense.loss(defense.init(), inputs._replace(taps={"a": z, "b": z})))(Z)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0


def test_bad_input():
    with pytest.raises(ValueError, match="expected measure"):
        bilateral_dependency(lambda_x=0.1, lambda_y=0.1, measure="mine")
    with pytest.raises(ValueError, match="expected lambda_x"):
        bilateral_dependency(lambda_x=-0.1, lambda_y=0.1)
    with pytest.raises(ValueError, match="expected sigma"):
        bilateral_dependency(lambda_x=0.1, lambda_y=0.1, sigma=0.0)
    with pytest.raises(ValueError, match="common batch"):
        dependence(jnp.ones((4, 2)), jnp.ones((5, 2)))
