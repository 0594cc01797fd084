import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax import defenses
from mijax.data.transforms import Normalization
from tests.defenses.helpers import KEY, Z, apply_features


def test_gaussian_noise_statistics():
    noise = np.asarray(apply_features(defenses.gaussian_noise(sigma=0.3)) - Z)
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 0.3) < 0.01
    np.testing.assert_array_equal(apply_features(defenses.gaussian_noise(sigma=0.0)), Z)


def test_laplace_noise_statistics():
    noise = np.asarray(apply_features(defenses.laplace_noise(scale=0.5)) - Z)
    assert abs(np.median(noise)) < 0.02 and abs(np.mean(np.abs(noise)) - 0.5) < 0.02  # E|ε| = b


def test_input_noise_changes_images_not_features():
    defense = defenses.gaussian_noise(sigma=0.1, on="input")
    assert defense.feature_transform is None and defense.input_transform is not None


def test_input_noise_in_the_normalised_space_is_scaled_by_the_std_and_unclipped():
    normalization = Normalization(mean=(0.4, 0.5), std=(0.2, 0.5))
    x = np.full((4000, 2, 2, 2), 0.5, np.float32)
    for make in (lambda: defenses.gaussian_noise(sigma=1.0, on="input", normalization=normalization),
                 lambda: defenses.laplace_noise(scale=1 / np.sqrt(2), on="input", normalization=normalization)):
        defense = make()
        noisy = np.asarray(defense.input_transform(defense.init(), jnp.asarray(x), jax.random.key(0), train=False))
        u = np.asarray(normalization.normalize(noisy)) - np.asarray(normalization.normalize(x))
        np.testing.assert_allclose(u.reshape(-1, 2).std(0), [1.0, 1.0], rtol=0.03)  # unit noise, both channels
        assert noisy.min() < 0 and noisy.max() > 1
    with pytest.raises(ValueError, match="input noise only"):
        defenses.gaussian_noise(sigma=1.0, normalization=normalization)


@pytest.mark.parametrize("make,arg,bad", [
    (defenses.gaussian_noise, "sigma", -0.1), (defenses.laplace_noise, "scale", -1.0),
    (defenses.dropout, "rate", 1.0), (defenses.dropout, "rate", -0.5), (defenses.topk, "prune_ratio", 1.5),
])
def test_bad_settings_name_the_argument(make, arg, bad):
    with pytest.raises(ValueError, match=f"expected {arg}"):
        make(**{arg: bad})
    with pytest.raises(TypeError):   # factories are keyword-only
        make(bad)


def test_unknown_place():
    with pytest.raises(ValueError, match="expected on"):
        defenses.gaussian_noise(sigma=0.1, on="weights")


def test_chain_applies_in_order_and_adds_losses():
    loss_a = defenses.Defense(loss=lambda s, inputs: jnp.ones(3))
    loss_b = defenses.Defense(init=lambda key=None, spec=None: {"w": 2.0}, loss=lambda s, inputs: s["w"] * jnp.ones(3))
    chained = defenses.chain(defenses.dropout(rate=0.5), defenses.gaussian_noise(sigma=0.0), loss_a, loss_b)
    state = chained.init()
    out = chained.feature_transform(state, Z, KEY, train=True)
    assert float(jnp.mean(out == 0)) > 0.4
    np.testing.assert_allclose(chained.loss(state, None), 3 * np.ones(3))
    assert chained.input_transform is None and chained.update is None


def test_sigma_sweep_traces_once_and_equals_a_loop():
    sigmas = [0.0, 0.1, 0.5, 1.0, 2.0]
    defense = defenses.gaussian_noise(sigma=0.0)
    states = defenses.stack([defenses.gaussian_noise(sigma=s).init() for s in sigmas])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def transform(state):
        return defense.feature_transform(state, Z, KEY, train=True)

    swept = jax.vmap(transform)(states)
    looped = [defenses.gaussian_noise(sigma=s).feature_transform({"sigma": jnp.float32(s)}, Z, KEY, train=True)
              for s in sigmas]
    np.testing.assert_allclose(swept, np.stack(looped), rtol=1e-6, atol=1e-6)
    chex.clear_trace_counter()
