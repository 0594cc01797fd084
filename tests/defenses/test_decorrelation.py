"""mijax.defenses.decorrelation: distance correlation against a NumPy loop, and NoPeek training against rMLE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax.data.transforms import CIFAR10
from mijax.defenses import LossInputs, stack
from mijax.defenses.decorrelation import distance_correlation, nopeek


def dcor_loop(x, z, squared=False):
    """Székely et al.'s V-statistic with explicit loops, in float64."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    z = np.asarray(z, np.float64).reshape(len(z), -1)
    n = len(x)

    def centred(v):
        d = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                d[i, j] = np.sqrt(np.sum((v[i] - v[j]) ** 2))
        out = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                out[i, j] = d[i, j] - d[i].mean() - d[:, j].mean() + d.mean()
        return out

    a, b = centred(x), centred(z)
    dcov2, var_x, var_z = (a * b).mean(), (a * a).mean(), (b * b).mean()
    dcor2 = dcov2 / np.sqrt(var_x * var_z)
    return dcor2 if squared else np.sqrt(dcor2)


def test_matches_numpy_loop():
    x = jax.random.normal(jax.random.key(0), (24, 2, 3, 2))
    z = jnp.tanh(x.reshape(24, -1)[:, :5] ** 2) + 0.3 * jax.random.normal(jax.random.key(1), (24, 5))
    for squared in (False, True):
        np.testing.assert_allclose(distance_correlation(x, z, squared=squared), dcor_loop(x, z, squared),
                                   rtol=1e-4)


def test_identities():
    x = jax.random.normal(jax.random.key(0), (64, 10))
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((10, 10)))
    np.testing.assert_allclose(distance_correlation(x, -3.0 * x + 2.0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(distance_correlation(x, x @ q), 1.0, rtol=1e-5)  # rotation invariance
    independent = jax.random.normal(jax.random.key(1), (1024, 3))
    dependent = distance_correlation(independent, independent ** 2)
    other = jax.random.normal(jax.random.key(2), (1024, 3))
    assert float(distance_correlation(other, independent, squared=True)) < 0.03  # V-statistic bias ~ 1/n
    assert float(dependent) > 0.3  # nonlinear dependence with zero correlation is detected


def test_constant_batch_and_gradients_are_finite():
    x = jax.random.normal(jax.random.key(0), (8, 4))
    assert float(distance_correlation(x, jnp.ones((8, 3)))) == 0.0
    z = jax.random.normal(jax.random.key(1), (8, 3)).at[1].set(0.0).at[2].set(0.0)  # duplicate rows
    grad = jax.grad(lambda z: distance_correlation(x, z))(z)
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0
    grad_const = jax.grad(lambda z: distance_correlation(x, z))(jnp.ones((8, 3)))
    assert bool(jnp.all(jnp.isfinite(grad_const)))


def test_nopeek_defense_uses_normalised_images_and_clean_features():
    images = jax.random.uniform(jax.random.key(0), (16, 4, 4, 3))
    z = jax.random.uniform(jax.random.key(1), (16, 2, 2, 8))
    inputs = LossInputs(images, jnp.zeros(16, jnp.int32), z, z + 5.0, jnp.zeros((16, 10)))
    defense = nopeek(alpha=0.5, normalization=CIFAR10)
    expected = 0.5 * distance_correlation(CIFAR10.normalize(images), z)
    np.testing.assert_allclose(defense.loss(defense.init(), inputs), expected, rtol=1e-6)
    raw = nopeek(alpha=0.5)
    np.testing.assert_allclose(raw.loss(raw.init(), inputs), 0.5 * distance_correlation(images, z), rtol=1e-6)
    states = stack([nopeek(alpha=a).init() for a in (0.0, 1.0, 2.0)])
    losses = jax.jit(jax.vmap(lambda s: raw.loss(s, inputs)))(states)
    np.testing.assert_allclose(losses, np.array([0.0, 1.0, 2.0]) * float(distance_correlation(images, z)),
                               rtol=1e-4)


def test_bad_input():
    with pytest.raises(ValueError, match="expected alpha"):
        nopeek(alpha=-1.0)
    with pytest.raises(ValueError, match="common batch"):
        distance_correlation(jnp.ones((4, 2)), jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="common batch"):
        distance_correlation(jnp.ones((1, 2)), jnp.ones((1, 2)))


def test_training_with_nopeek_makes_rmle_worse_at_a_measured_accuracy_cost(digits_target):
    # NoPeek is unstable on this small target: the outcome swings with the training seed and with
    # float reassociation (XLA's O0 vs O2). Measured 12-02 (O0, SSIM / accuracy; clean 0.964 / 0.944):
    # alpha 0.5 -> 0.606 / 0.383 and 0.632 / 0.664 (seeds 0, 1), alpha 1 -> 0.110 / 0.189 and 0.437 /
    # 0.617, alpha 2 -> 0.719 / 0.661 and 0.033 / 0.461; 12-01 (O2) alpha 0.5 -> 0.308 / 0.347; a CI run
    # of 12-02 13:30 (alpha 0.5, seed 0) 0.754 / 0.408. Every run lost >= 0.2 SSIM and >= 0.24
    # accuracy, so the test asserts a 0.15 SSIM loss at an accuracy cost, not one run's numbers.
    clean = digits_target.attack(digits_target.variables)
    trained = digits_target.fit(nopeek(alpha=0.5, normalization=digits_target.model.normalization))
    defended = digits_target.attack(trained)
    assert defended.ssim < clean.ssim - 0.15
    assert 0.2 < defended.accuracy < clean.accuracy
