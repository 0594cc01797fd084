"""mijax.defenses.siftfunnel: the channel-correlation penalty, the smoothed KL and the whole objective
against NumPy loops; local-DP noise; the effective information volume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax.data.transforms import CIFAR10
from mijax.defenses import (LossInputs, channel_correlation_penalty, effective_information_volume, local_dp_noise,
                            siftfunnel_objective)
from mijax.defenses.siftfunnel import smoothed_kl
from tests.defenses.test_decorrelation import dcor_loop


def penalty_loop(z):
    z = np.asarray(z, np.float64)
    b, h, w, c = z.shape
    s = h * w
    out = np.zeros(b)
    for n in range(b):
        f = z[n].reshape(s, c)
        for i in range(c):
            for j in range(c):
                cov = np.sum((f[:, i] - f[:, i].mean()) * (f[:, j] - f[:, j].mean())) / s
                rho = cov / (np.std(f[:, i], ddof=1) * np.std(f[:, j], ddof=1) + 1e-12)
                out[n] += rho ** 2 / c ** 2
    return out


Z = jax.random.normal(jax.random.key(0), (4, 3, 5, 6)) + jnp.arange(6.0)


def test_channel_correlation_penalty_matches_numpy_loop():
    np.testing.assert_allclose(channel_correlation_penalty(Z), penalty_loop(Z), rtol=1e-5)
    # the diagonal is included with ρ = (s − 1)/s: uncorrelated channels give ((s−1)/s)²/c at least
    assert float(channel_correlation_penalty(Z).min()) >= (14 / 15) ** 2 / 6 - 1e-6
    constant = jnp.ones((2, 3, 3, 4))
    assert float(jnp.abs(channel_correlation_penalty(constant)).max()) == 0.0
    grad = jax.grad(lambda z: channel_correlation_penalty(z).sum())(constant.at[0, 0, 0, 0].set(2.0))
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_objective_matches_numpy_terms():
    images = jax.random.uniform(jax.random.key(1), (4, 4, 4, 3))
    labels = jnp.array([0, 1, 2, 1])
    logits = jax.random.normal(jax.random.key(2), (4, 3))
    inputs = LossInputs(images, labels, Z, Z, logits)
    defense = siftfunnel_objective(normalization=CIFAR10)
    p = np.exp(np.asarray(logits, np.float64)); p /= p.sum(1, keepdims=True)
    target = np.full((4, 3), 0.25 / 2); target[np.arange(4), labels] = 0.75
    kl = np.sum(target * (np.log(target) - np.log(p)), 1)
    np.testing.assert_allclose(smoothed_kl(logits, labels), kl, rtol=1e-5)
    expected = (5 * kl + 2 * dcor_loop(CIFAR10.normalize(images), Z, squared=True)
                + 0.03 * np.mean(np.abs(np.asarray(Z))) + 2 * penalty_loop(Z))
    np.testing.assert_allclose(defense.loss(defense.init(), inputs), expected, rtol=1e-4)
    tapped = siftfunnel_objective(alpha=0.0, beta=0.0, l1=0.0, tap="block1")
    assert tapped.taps == ("block1",)
    np.testing.assert_allclose(tapped.loss(tapped.init(), inputs._replace(taps={"block1": Z * 2})),
                               2 * penalty_loop(Z), rtol=1e-5)


def test_effective_information_volume_counts_nonzeros():
    z = jnp.array([[0.0, 1.0, 0.0, -2.0], [3.0, 0.0, 0.0, 0.0]])
    assert float(effective_information_volume(z)) == 1.5


def test_local_dp_noise_scales_and_clipping():
    z = jnp.full((4000, 25), 0.1)  # per-example norm 0.5 < Δ = 1: unchanged by clipping
    for mechanism, std in (("laplace", np.sqrt(2) / 2.0), ("gaussian", np.sqrt(2 * np.log(1.25e4)) / 2.0)):
        d = local_dp_noise(epsilon=2.0, mechanism=mechanism)
        out = d.feature_transform(d.init(), z, jax.random.key(0), train=False)
        np.testing.assert_allclose(float(jnp.std(out - z)), std, rtol=0.02)
    clipped = local_dp_noise(epsilon=1e6).feature_transform(local_dp_noise(epsilon=1e6).init(),
                                                            jnp.full((2, 4), 3.0), jax.random.key(1), train=False)
    np.testing.assert_allclose(jnp.linalg.norm(clipped, axis=1), 1.0, rtol=1e-4)
    with pytest.raises(ValueError, match="expected epsilon"):
        local_dp_noise(epsilon=0.0)
    with pytest.raises(ValueError, match="expected mechanism"):
        local_dp_noise(epsilon=1.0, mechanism="exponential")


def test_bad_input():
    with pytest.raises(ValueError, match="expected z of shape"):
        channel_correlation_penalty(jnp.ones((4, 5)))
    with pytest.raises(ValueError, match="expected gamma"):
        siftfunnel_objective(gamma=-1.0)
