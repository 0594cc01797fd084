"""mijax.defenses.mid: the VIB KL against its closed form and a Monte-Carlo estimate, the bottleneck's
transform, its parameters training jointly with the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax.defenses import DefenseSpec, LossInputs, Trainable
from mijax.defenses.mid import bottleneck_statistics, vib_bottleneck, vib_kl

SPEC = DefenseSpec((8, 8, 1), (4, 4, 6), 10)


def kl_loop(mu, std):
    """KL(N(μ, σ²) ‖ N(0, 1)) = log(1/σ) + (σ² + μ²)/2 − ½ per dimension, summed, with loops."""
    mu, std = np.asarray(mu, np.float64), np.asarray(std, np.float64)
    out = np.zeros(len(mu))
    for b in range(len(mu)):
        for m, s in zip(mu[b].ravel(), std[b].ravel()):
            out[b] += np.log(1.0 / s) + (s * s + m * m) / 2.0 - 0.5
    return out


def test_kl_matches_closed_form_and_monte_carlo():
    mu = jax.random.normal(jax.random.key(0), (3, 2, 2))
    std = jnp.exp(0.5 * jax.random.normal(jax.random.key(1), (3, 2, 2)))
    np.testing.assert_allclose(vib_kl(mu, std), kl_loop(mu, std), rtol=1e-5)
    # Monte-Carlo E_q[log q − log p] with 200k draws of the first example.
    rng = np.random.default_rng(0)
    m, s = np.asarray(mu[0]).ravel(), np.asarray(std[0]).ravel()
    u = m + s * rng.standard_normal((200_000, m.size))
    log_q = -0.5 * ((u - m) / s) ** 2 - np.log(s)
    log_p = -0.5 * u ** 2
    np.testing.assert_allclose(float(vib_kl(mu, std)[0]), np.mean(np.sum(log_q - log_p, 1)), rtol=0.02)
    np.testing.assert_allclose(vib_kl(jnp.zeros((2, 5)), jnp.ones((2, 5))), 0.0, atol=1e-7)


def test_transform_samples_the_code_and_loss_is_beta_kl():
    defense = vib_bottleneck(beta=0.5)
    state = defense.init(jax.random.key(0), SPEC)
    params = state["bottleneck"].params
    assert isinstance(state["bottleneck"], Trainable)
    assert params["encoder"]["kernel"].shape == (6, 6) and params["decoder"]["kernel"].shape == (3, 6)  # k = C/2
    z = jax.random.normal(jax.random.key(1), (5, 4, 4, 6))
    mu, std, log_std = bottleneck_statistics(params, z)
    np.testing.assert_allclose(std, jax.nn.softplus(z @ params["encoder"]["kernel"][:, 3:]
                                                    + params["encoder"]["bias"][3:] - 5.0), rtol=1e-6)
    np.testing.assert_allclose(log_std, jnp.log(std), rtol=1e-5)
    a = defense.feature_transform(state, z, jax.random.key(2), train=False)
    b = defense.feature_transform(state, z, jax.random.key(3), train=False)
    assert a.shape == z.shape and not np.allclose(a, b)  # sampled at inference too (the reference)
    mean_only = vib_bottleneck(beta=0.5, sample_at_inference=False)
    c = mean_only.feature_transform(state, z, jax.random.key(2), train=False)
    np.testing.assert_allclose(c, mu @ params["decoder"]["kernel"] + params["decoder"]["bias"], rtol=1e-5)
    inputs = LossInputs(jnp.zeros((5, 8, 8, 1)), jnp.zeros(5, jnp.int32), z, a, jnp.zeros((5, 10)))
    np.testing.assert_allclose(defense.loss(state, inputs), 0.5 * kl_loop(mu, std), rtol=1e-4)
    # the sampled code's spread is the predicted std: decode the difference of two samples
    assert float(jnp.std(a - b)) > 0


def test_bad_input():
    with pytest.raises(ValueError, match="expected beta"):
        vib_bottleneck(beta=-1.0)
    with pytest.raises(ValueError, match="expected bottleneck"):
        vib_bottleneck(beta=0.1, bottleneck=0)
    with pytest.raises(ValueError, match="expected spec"):
        vib_bottleneck(beta=0.1).init(jax.random.key(0))
    with pytest.raises(ValueError, match="expected mu and std"):
        vib_kl(jnp.zeros((2, 3)), jnp.ones((2, 4)))
