import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mijax import data, defenses, metrics
from mijax.attacks import BlackBox, DecoderAttackConfig, TrainedDecoder, decoder_attack, train_decoder_attack
from mijax.attacks.attacker_data import cem_attack_data
from mijax.attacks.noise_aware_decoder import cosine_per_epoch, decoder_attack_optimizer
from mijax.models import digits_cnn, res_norm_decoder
from mijax.train import fit

SIGMA = 0.05
CONFIG = DecoderAttackConfig(epochs=4, batch_size=64, learning_rate=3e-3)


def _key(seed):
    # XLA-CPU compiles threefry for every new shape in ~0.5-2 s; RBG keys keep these tests fast
    return jax.random.key(seed, impl="rbg")


def _decoder(model):
    return res_norm_decoder(feature_shape=model.feature_shape(), image_shape=model.input_shape, num_blocks=1,
                            channels=16)


@pytest.fixture(scope="module")
def victim():
    """digits_cnn at 16 px (z: 8×8×8 sigmoid bottleneck), briefly trained; σ = 0.05 deployed noise."""
    resize = lambda d: d._replace(images=np.clip(np.asarray(data.resize(d.images, (16, 16))), 0, 1))
    train, test = resize(data.load("digits", "train")), resize(data.load("digits", "test"))
    model = digits_cnn(image_size=16)
    state = fit(model, train.images, train.labels, optimizer=optax.adam(2e-3), epochs=1, batch_size=64,
                key=_key(0), progress=False)
    aux, targets = cem_attack_data("training-time", train=train, test=test)
    noise = defenses.gaussian_noise(sigma=SIGMA)
    oracle = BlackBox.from_model(model, state.variables, defense=noise)
    trained = train_decoder_attack(_decoder(model), oracle, aux.images, config=CONFIG, key=_key(1),
                                   progress=False)
    return model, state.variables, noise, oracle, aux, targets, trained


def test_noise_aware_decoder_beats_the_mean_image(victim):
    model, _, _, oracle, aux, targets, trained = victim
    z = oracle.query(targets.images, key=_key(2))
    x_hat = np.asarray(jax.jit(decoder_attack)(trained, z))
    assert x_hat.shape == targets.images.shape and x_hat.min() >= 0 and x_hat.max() <= 1
    mse = float(np.mean(metrics.mse(x_hat, targets.images)))
    baseline = float(np.mean(metrics.mse(np.broadcast_to(aux.images.mean(0), targets.images.shape),
                                         targets.images)))
    assert mse < 0.5 * baseline, (mse, baseline)


def test_sweep_over_stacked_encoders_matches_the_single_run(victim):
    """The step vmapped over two stacked encoders (trained, fresh): model 0 reproduces the single run."""
    model, trained, noise, _, aux, targets, single = victim
    encoders = jax.tree.map(lambda a, b: jnp.stack([a, b]), trained, model.init(_key(5)))
    oracle = BlackBox.stacked(model, encoders, defense=noise)
    assert oracle.query(targets.images[:3], key=_key(0)).shape == (2, 3, 8, 8, 8)
    stacked = train_decoder_attack(_decoder(model), oracle, aux.images, config=CONFIG, key=_key(1),
                                   progress=False, sweep=True)
    z = oracle.query(targets.images[:32], key=_key(2))
    x_hat = np.asarray(jax.vmap(decoder_attack)(stacked, z))
    x_single = np.asarray(decoder_attack(single, z[0]))
    np.testing.assert_allclose(x_hat[0], x_single, atol=1e-2)   # vmapped convs round differently
    assert np.mean(np.abs(x_hat[0] - x_single)) < 1e-3
    assert np.mean(np.abs(x_hat[1] - x_hat[0])) > 1e-2   # the other encoder got its own decoder


# --- optimiser, schedule, helpers and validation -------------------------------------------------------


def test_cosine_per_epoch_is_pytorchs_closed_form():
    schedule = cosine_per_epoch(1e-3, t_max=50, min_learning_rate=1e-5, steps_per_epoch=3)
    for step in (0, 2, 3, 74, 149, 150):
        e = step // 3
        want = 1e-5 + (1e-3 - 1e-5) * (1 + np.cos(np.pi * e / 50)) / 2
        np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-5)


def test_optimizer_is_torch_adam_with_coupled_weight_decay():
    config = DecoderAttackConfig(epochs=2, learning_rate=0.1, weight_decay=0.5, min_learning_rate=0.0)
    optimizer = decoder_attack_optimizer(config, steps_per_epoch=1)
    params = {"w": jnp.array([1.0, -2.0])}
    grads = [jnp.array([0.3, 0.1]), jnp.array([-0.2, 0.4])]
    state = optimizer.init(params)
    # torch.optim.Adam(weight_decay=wd): g += wd·p; m, v; p -= lr_t/(1−b1^t) · m / (√(v/(1−b2^t)) + eps)
    p, m, v = np.array([1.0, -2.0]), np.zeros(2), np.zeros(2)
    for t, g in enumerate(grads, 1):
        updates, state = optimizer.update({"w": g}, state, params)
        params = optax.apply_updates(params, updates)
        g = np.asarray(g) + 0.5 * p
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        lr = 0.1 * (1 + np.cos(np.pi * (t - 1) / 2)) / 2
        p = p - lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        np.testing.assert_allclose(params["w"], p, rtol=1e-5)


def test_cem_attack_data_settings():
    test = data.Dataset(np.zeros((10, 2, 2, 1), np.float32), np.arange(10, dtype=np.int32), 10, "toy")
    train = test._replace(labels=test.labels + 100)
    aux, targets = cem_attack_data("training-time", train=train, test=test)
    assert aux is train and targets is test
    aux, targets = cem_attack_data("inference-time", test=test)
    assert aux.labels.tolist() == list(range(9)) and targets.labels.tolist() == [9]
    big = test._replace(images=np.zeros((10000, 1, 1, 1)), labels=np.arange(10000))
    aux, targets = cem_attack_data("inference-time", test=big)
    assert (aux.labels[-1], targets.labels[0], len(targets.labels)) == (8999, 9000, 1000)
    with pytest.raises(ValueError, match="setting"):
        cem_attack_data("query-free", test=test)
    with pytest.raises(ValueError, match="train"):
        cem_attack_data("training-time", test=test)


def test_bad_inputs_raise():
    oracle = BlackBox(lambda _, x, key: x[:, ::2, ::2, :], input_shape=(4, 4, 1))
    decoder = res_norm_decoder(feature_shape=(2, 2, 1), image_shape=(4, 4, 1), num_blocks=0, channels=2)
    images = np.full((8, 4, 4, 1), 0.5, np.float32)
    small = DecoderAttackConfig(epochs=1, batch_size=4)
    with pytest.raises(ValueError, match="aux_images"):
        train_decoder_attack(decoder, oracle, images[..., :1, :], config=small, key=_key(0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train_decoder_attack(decoder, oracle, images * 3, config=small, key=_key(0))
    with pytest.raises(ValueError, match="batch_size"):
        train_decoder_attack(decoder, oracle, images, config=DecoderAttackConfig(batch_size=9), key=_key(0))
    with pytest.raises(ValueError, match="epochs"):
        train_decoder_attack(decoder, oracle, images, config=DecoderAttackConfig(epochs=0), key=_key(0))
    wrong = res_norm_decoder(feature_shape=(2, 2, 1), image_shape=(8, 8, 1), num_blocks=0, channels=2)
    with pytest.raises(ValueError, match="decoder"):
        train_decoder_attack(wrong, oracle, images, config=small, key=_key(0))
    with pytest.raises(ValueError, match="stacked"):
        train_decoder_attack(decoder, oracle, images, config=small, key=_key(0), sweep=True)
    with pytest.raises(TypeError, match="BlackBox"):
        train_decoder_attack(decoder, oracle.query, images, config=small, key=_key(0))
    with pytest.raises(ValueError, match="z_observed"):
        decoder_attack(TrainedDecoder(decoder, decoder.init(_key(0))), jnp.ones((4,)))
    with pytest.raises(TypeError, match="TrainedDecoder"):
        decoder_attack(decoder, jnp.ones((4, 2, 2, 1)))
