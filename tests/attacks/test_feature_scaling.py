import jax
import numpy as np
import optax
import pytest

from mijax import data, defenses, metrics
from mijax.attacks import (BlackBox, DecoderAttackConfig, decoder_attack, feature_statistics, standardize_input,
                           train_decoder_attack)
from mijax.attacks.knowledge import DeployedEdges
from mijax.models import decoder_for, digits_cnn
from mijax.train import fit

SCALE = 1e-3  # a defense that shrinks the features, as SiftFunnel's funnel does


def _key(seed):
    return jax.random.key(seed, impl="rbg")


def _scaled_edge(state, x, key):
    edges, scale = state
    return scale * DeployedEdges(digits_cnn(image_size=16), defenses.identity(), None, None)(edges, x, key)


@pytest.fixture(scope="module")
def shrunk():
    """digits_cnn at 16 px, briefly trained; its oracle multiplies the 8×8×8 features by 1e-3."""
    resize = lambda d: np.clip(np.asarray(data.resize(d.images, (16, 16))), 0, 1)
    train, test = data.load("digits", "train"), data.load("digits", "test")
    model = digits_cnn(image_size=16)
    state = fit(model, resize(train), train.labels, optimizer=optax.adam(2e-3), epochs=1, batch_size=64,
                key=_key(0), progress=False)
    plain = BlackBox.from_model(model, state.variables)
    oracle = BlackBox(_scaled_edge, input_shape=model.input_shape,
                      state=((model.edge_variables(state.variables),
                              defenses.identity().init(_key(0), model.defense_spec())), np.float32(SCALE)))
    return model, plain, oracle, resize(train)[837:], resize(test)[:200]  # 600 attacker images, 200 targets


def test_statistics_match_numpy(shrunk):
    _, plain, _, aux, _ = shrunk
    mean, std = feature_statistics(plain, aux, key=_key(1), batch_size=128)  # 600 = 4 full batches + 88
    z = np.asarray(plain.query(aux), np.float64).reshape(-1, 8)
    np.testing.assert_allclose(mean, z.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(std, np.maximum(z.std(0), 1e-6), rtol=1e-4, atol=1e-7)


def test_standardized_decoder_sees_standardized_features():
    inner = decoder_for((4, 4, 3), (8, 8, 1), width=4, output="linear")
    mean, std = np.array([1.0, -2.0, 0.5], np.float32), np.array([2.0, 0.5, 4.0], np.float32)
    outer = standardize_input(inner, mean=mean, std=std)
    variables = outer.init(_key(2))
    z = np.asarray(jax.random.normal(_key(3), (5, 4, 4, 3)))
    got, _ = outer.apply(variables, z)
    want, _ = inner.apply(variables, (z - mean) / std)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_standardizing_recovers_inputs_from_shrunk_features(shrunk):
    """At the same small budget the raw decoder stays near the mean image; the standardised one decodes."""
    model, _, oracle, aux, targets = shrunk
    config = DecoderAttackConfig(epochs=8, batch_size=64, learning_rate=3e-3)
    mean, std = feature_statistics(oracle, aux, key=_key(4))
    baseline = float(metrics.mse(np.broadcast_to(aux.mean(0), targets.shape), targets).mean())
    mse = {}
    raw = decoder_for(model.feature_shape(), model.input_shape, width=16)
    for label, decoder in (("raw", raw), ("standardized", standardize_input(raw, mean=mean, std=std))):
        trained = train_decoder_attack(decoder, oracle, aux, config=config, key=_key(5), progress=False)
        mse[label] = float(metrics.mse(decoder_attack(trained, oracle.query(targets)), targets).mean())
    assert mse["raw"] > 0.8 * baseline, (mse, baseline)
    assert mse["standardized"] < 0.6 * baseline, (mse, baseline)


def test_bad_input_is_named(shrunk):
    _, plain, _, aux, _ = shrunk
    inner = decoder_for((8, 8, 8), (16, 16, 1), width=4)
    with pytest.raises(TypeError, match="oracle"):
        feature_statistics(object(), aux, key=_key(0))
    with pytest.raises(ValueError, match="images"):
        feature_statistics(plain, aux[:, :8], key=_key(0))
    with pytest.raises(ValueError, match="batch_size"):
        feature_statistics(plain, aux, key=_key(0), batch_size=0)
    with pytest.raises(ValueError, match="same shape"):
        standardize_input(inner, mean=np.zeros(8), std=np.ones(4))
    with pytest.raises(ValueError, match="std > 0"):
        standardize_input(inner, mean=np.zeros(8), std=np.zeros(8))
    with pytest.raises(ValueError, match="8 channels"):
        standardize_input(inner, mean=np.zeros(8), std=np.ones(8)).apply(inner.init(_key(0)), np.zeros((1, 8, 8, 4)))
