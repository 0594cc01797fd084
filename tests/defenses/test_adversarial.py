import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mijax.data.transforms import resize
from mijax.defenses import (LossInputs, adversarial_decoder, chain, deep_obfuscator, gaussian_noise,
                            upsampling_decoder)
from mijax.models import digits_cnn
from mijax.train import fit, init_train_state, make_train_step

MODEL = digits_cnn(image_size=16)  # z: [8, 8, 8] in (0, 1); x: [16, 16, 1]


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    data = load_digits()
    images = np.asarray(resize(data.images[:256, :, :, None] / 16.0, 16), np.float32).clip(0, 1)
    return images, data.target[:256].astype(np.int32)


def _defense(**kwargs):
    kwargs = {"alpha": 1.0, "key": jax.random.key(7), "feature_shape": MODEL.feature_shape(),
              "image_shape": MODEL.input_shape, **kwargs}
    return adversarial_decoder(**kwargs)


def _inputs(digits, variables, n=32):
    x = jnp.asarray(digits[0][:n])
    z, _ = MODEL.edge_apply(variables, x)
    return LossInputs(x, jnp.asarray(digits[1][:n]), z, z, jnp.zeros((n, 10)))


def test_default_decoder_shapes():
    decoder = upsampling_decoder((8, 8, 8), (32, 32, 3))
    variables = decoder.init(jax.random.key(0))
    x_hat, _ = jax.jit(decoder.apply)(variables, jnp.zeros((2, 8, 8, 8)))
    assert x_hat.shape == (2, 32, 32, 3) and bool(jnp.all((x_hat > 0) & (x_hat < 1)))
    with pytest.raises(ValueError, match="power of two"):
        upsampling_decoder((8, 8, 8), (24, 24, 3))
    with pytest.raises(ValueError, match="flat features"):
        upsampling_decoder((512,), (32, 32, 3))


def test_encoder_gradient_flows_through_z_only(digits):
    variables = MODEL.init(jax.random.key(0))
    inputs = _inputs(digits, variables)
    for defense in (_defense(threshold=0.0), _defense(objective="mse")):
        state = defense.init()
        loss = lambda state, z: jnp.mean(defense.loss(state, inputs._replace(z=z)))
        grad_state, grad_z = jax.jit(jax.grad(loss, argnums=(0, 1), allow_int=True))(state, inputs.z)
        assert float(jnp.abs(grad_z).sum()) > 0
        assert all(float(jnp.abs(g).sum()) == 0 for g in jax.tree.leaves(grad_state["decoder"]))
    hinge = _defense(threshold=1.0)  # SSIM <= 1: the hinge is off
    assert float(hinge.loss(hinge.init(), inputs)) == 0.0


def test_deep_obfuscator_is_minus_gamma_mse(digits):
    variables = MODEL.init(jax.random.key(0))
    inputs = _inputs(digits, variables)
    defense = deep_obfuscator(gamma=2.0, key=jax.random.key(7), feature_shape=MODEL.feature_shape(),
                              image_shape=MODEL.input_shape)
    state = defense.init()
    decoder = upsampling_decoder(MODEL.feature_shape(), MODEL.input_shape)
    x_hat, _ = decoder.apply(state["decoder"], inputs.z)
    np.testing.assert_allclose(defense.loss(state, inputs),
                               -2.0 * jnp.mean((x_hat - inputs.images) ** 2, axis=(1, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize("decoder_objective", ["mse", "ssim"])
def test_decoder_update_improves_the_reconstruction(digits, decoder_objective):
    variables = MODEL.init(jax.random.key(0))
    inputs = _inputs(digits, variables)
    defense = _defense(decoder_objective=decoder_objective, learning_rate=3e-3)
    update = jax.jit(defense.update)
    state = defense.init()
    losses = []
    for t in range(30):
        state = update(state, inputs, jax.random.key(t))
        losses.append(float(state["decoder_loss"]))
    assert losses[-1] < losses[0] - 0.01, losses
    np.testing.assert_allclose(state["opt_state"].hyperparams["learning_rate"], 3e-3)


def test_encoder_optimiser_leaves_the_decoder_alone(digits):
    images, labels = jnp.asarray(digits[0][:32]), jnp.asarray(digits[1][:32])
    defense = chain(gaussian_noise(sigma=0.1), _defense(objective="mse"))
    optimizer = optax.sgd(0.1)
    state = init_train_state(MODEL, optimizer, jax.random.key(0), defense.init())
    frozen = make_train_step(MODEL, optimizer, defense._replace(update=None))
    moved, metrics = jax.jit(frozen)(state, images, labels, jax.random.key(1))
    assert float(metrics["defense_loss"]) < 0  # −α·MSE
    same = jax.tree.map(np.array_equal, moved.defense_state[1]["decoder"], state.defense_state[1]["decoder"])
    assert all(jax.tree.leaves(same))  # the encoder's optimiser never touches φ
    assert not np.array_equal(moved.variables["params"]["conv1"]["conv"]["kernel"],
                              state.variables["params"]["conv1"]["conv"]["kernel"])


def test_composes_with_noise_in_fit(digits):
    images, labels = digits
    defense = chain(gaussian_noise(sigma=0.1), _defense(alpha=0.3, threshold=0.0))
    state = fit(MODEL, images[:128], labels[:128], optimizer=optax.sgd(0.05, momentum=0.9), epochs=1,
                batch_size=32, key=jax.random.key(0), defense=defense, progress=False)
    assert int(state.step) == 4
    decoder_state = state.defense_state[1]
    assert float(decoder_state["decoder_loss"]) > 0  # the decoder trained once per step
    assert int(decoder_state["opt_state"].inner_state[0].count) == 4
    initial = _defense().init()["decoder"]["params"]["out"]["conv"]["kernel"]
    assert not np.array_equal(decoder_state["decoder"]["params"]["out"]["conv"]["kernel"], initial)


def test_bad_settings():
    for kwargs, match in [({"alpha": -1.0}, "expected alpha"), ({"threshold": 1.5}, "expected threshold"),
                          ({"objective": "l1"}, "expected objective"), ({"features": "noisy"}, "features")]:
        with pytest.raises(ValueError, match=match):
            _defense(**kwargs)
    with pytest.raises(ValueError, match="expected spec"):   # shapes from neither the arguments nor a spec
        _defense(feature_shape=None).init()
    spec = MODEL.defense_spec()
    state = _defense(feature_shape=None, key=None).init(jax.random.key(1), spec)   # from the run's key and spec
    assert jax.tree.map(jnp.shape, state["decoder"]) == jax.tree.map(jnp.shape, _defense().init()["decoder"])
