import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax.attacks import BlackBox, GanConfig, TrainedDecoder, gan_finetune
from mijax.attacks.gan import GanState, _adam_direction, gradient_penalty, make_gan_step
from mijax.models import dgwgan32, res_norm_decoder
from mijax.models.critics import InstanceNorm
from mijax.nn import pure


def _key(seed):
    # XLA-CPU compiles threefry for every new shape in ~0.5-2 s; RBG keys keep these tests fast
    return jax.random.key(seed, impl="rbg")


# --- critic ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 48, 64])
def test_critic_gives_one_score_per_image(size):
    critic = dgwgan32(image_shape=(size, size, 3))
    variables = jax.eval_shape(critic.init, jax.random.key(0))
    scores = jax.eval_shape(lambda v, x: critic.apply(v, x)[0], variables,
                            jax.ShapeDtypeStruct((5, size, size, 3), jnp.float32))
    assert scores.shape == (5,)
    # the last conv covers the whole 4×4 / 6×6 / 8×8 map
    assert variables["params"]["score"]["conv"]["kernel"].shape == (size // 8, size // 8, 256, 1)


def test_critic_rejects_bad_shapes():
    for shape in [(32, 32), (0, 32, 3), (8, 8, 1)]:
        with pytest.raises(ValueError, match="image_shape"):
            dgwgan32(image_shape=shape)


def test_instance_norm_equals_numpy():
    norm = pure(lambda rngs: InstanceNorm(3, rngs=rngs))
    variables = norm.init(_key(0))
    variables["params"] = {"scale": jnp.array([1.0, 2.0, 0.5]), "bias": jnp.array([0.0, 1.0, -1.0])}
    x = np.asarray(jax.random.normal(_key(1), (2, 4, 5, 3)), np.float64) * 3 + 1
    got, _ = norm.apply(variables, jnp.asarray(x, jnp.float32))
    mean, var = x.mean((1, 2), keepdims=True), x.var((1, 2), keepdims=True)
    want = (x - mean) / np.sqrt(var + 1e-5) * np.array([1.0, 2.0, 0.5]) + np.array([0.0, 1.0, -1.0])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# --- gradient penalty -------------------------------------------------------------------------------------

W = np.asarray(jax.random.normal(jax.random.key(3), (2 * 3 * 1, 4)), np.float32)


def _critic_fn(x):
    """A smooth per-example critic `Σ tanh(x·W)²` (no coupling between examples)."""
    return jnp.sum(jnp.tanh(x.reshape(len(x), -1) @ W) ** 2, axis=-1)


def test_gradient_penalty_equals_a_per_example_loop_and_finite_differences():
    real = jax.random.uniform(_key(1), (5, 2, 3, 1))
    fake = jax.random.uniform(_key(2), (5, 2, 3, 1))
    key = _key(4)
    got = np.asarray(gradient_penalty(_critic_fn, real, fake, key))
    alpha = jax.random.uniform(key, (5, 1, 1, 1))           # the documented draw: one α per example
    interpolates = np.asarray(real + alpha * (fake - real), np.float64)
    loop, finite = [], []
    for i in range(5):
        g = jax.grad(lambda x: _critic_fn(x[None])[0])(jnp.asarray(interpolates[i], jnp.float32))
        loop.append((np.linalg.norm(np.asarray(g)) - 1) ** 2)
        f = lambda x: float(np.sum(np.tanh(x.reshape(-1) @ W.astype(np.float64)) ** 2))
        eps, grad = 1e-5, np.zeros(6)
        for j in range(6):
            step = np.zeros(6)
            step[j] = eps
            grad[j] = (f(interpolates[i].reshape(-1) + step) - f(interpolates[i].reshape(-1) - step)) / (2 * eps)
        finite.append((np.linalg.norm(grad) - 1) ** 2)
    assert got.shape == (5,)
    np.testing.assert_allclose(got, loop, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, finite, rtol=1e-3, atol=1e-5)
    # same key, same α; the penalty is differentiable (twice) and finite at a zero input gradient
    np.testing.assert_array_equal(got, gradient_penalty(_critic_fn, real, fake, key))
    quadratic = lambda theta: lambda x: theta * jnp.sum(x.reshape(len(x), -1) ** 2, axis=-1)
    at_zero = jax.grad(lambda theta: jnp.sum(gradient_penalty(quadratic(theta), real, fake, key)))(0.0)
    assert np.isfinite(at_zero)     # ∇ₓD = 0 at θ = 0: the norm's gradient must not be NaN
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(_critic_fn, real, fake[:4], key)


# --- the step and the loop ------------------------------------------------------------------------------

FEATURE, IMAGE = (8, 8, 2), (16, 16, 1)


def _networks():
    generator = res_norm_decoder(feature_shape=FEATURE, image_shape=IMAGE, num_blocks=0, channels=4,
                                 method="dilated")
    return generator, dgwgan32(image_shape=IMAGE, width=4)


def _changed(a, b):
    return any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_step_updates_the_critic_every_step_and_the_generator_every_n_critic():
    generator, critic = _networks()
    config = GanConfig(n_critic=2)
    adam = _adam_direction(config)
    g_vars, c_vars = generator.init(_key(0)), critic.init(_key(1))
    state = GanState(jnp.zeros((), jnp.int32), g_vars, c_vars, adam.init(g_vars["params"]), adam.init(c_vars["params"]))
    images = jax.random.uniform(_key(2), (6, *IMAGE))
    z = jax.random.normal(_key(3), (2, 6, *FEATURE))
    update = jax.jit(make_gan_step(generator, critic, config, steps_per_epoch=4))

    first, m1 = update(state, images, z[0], z[1], _key(4))
    assert _changed(first.critic["params"], state.critic["params"])
    assert not _changed(first.generator, state.generator)       # step 1 of 2: critic only
    assert np.isnan(m1["generator_loss"])
    second, m2 = update(first, images, z[0], z[1], _key(5))
    assert _changed(second.critic["params"], first.critic["params"])
    assert _changed(second.generator["params"], first.generator["params"])        # step 2: both
    assert _changed(second.generator["batch_stats"], first.generator["batch_stats"])   # G in train mode
    assert int(second.step) == 2
    for tree in (second, m2):
        assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(tree))
    # the generator's loss is -E D(G(z̃)) + 1500·MSE at its step
    np.testing.assert_allclose(m2["critic_loss"], -m2["wasserstein"] + 10 * m2["gp"], rtol=1e-5, atol=1e-5)


def test_finetune_sweeps_over_stacked_models_and_keeps_the_callers_variables():
    generator, critic = _networks()
    a = np.asarray(jax.random.normal(_key(6), (int(np.prod(IMAGE)), int(np.prod(FEATURE)))), np.float32) / 4
    edges = jnp.stack([a, -a])            # two "encoders": a linear map and its negative

    def query(edges, x, key):
        z = jnp.einsum("bi,mij->mbj", x.reshape(len(x), -1), edges).reshape(2, len(x), *FEATURE)
        return z + 0.05 * jax.random.normal(key, z.shape)

    oracle = BlackBox(query, input_shape=IMAGE, state=edges, stochastic=True)
    stacked = jax.vmap(generator.init)(jax.random.split(_key(7), 2))
    images = np.asarray(jax.random.uniform(_key(8), (16, *IMAGE)))
    config = GanConfig(epochs=1, batch_size=4, n_critic=2)
    tuned = gan_finetune(TrainedDecoder(generator, stacked), critic, oracle, images, config=config, key=_key(9),
                         progress=False, sweep=True)
    assert isinstance(tuned, TrainedDecoder) and tuned.decoder is generator
    tuned = tuned.variables
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tuned))
    assert jax.tree.map(jnp.shape, tuned) == jax.tree.map(jnp.shape, stacked)
    for m in range(2):
        assert _changed(jax.tree.map(lambda t: t[m], tuned["params"]), jax.tree.map(lambda t: t[m], stacked["params"]))
    np.asarray(stacked["params"]["block0"]["conv1"]["conv"]["kernel"])   # not donated away
    with pytest.raises(ValueError, match="stacked"):
        gan_finetune(TrainedDecoder(generator, generator.init(_key(0))), critic, oracle, images, config=config,
                     key=_key(9), sweep=True)


def test_finetune_rejects_bad_inputs():
    generator, critic = _networks()
    oracle = BlackBox(lambda _, x, key: jnp.zeros((len(x), *FEATURE)), input_shape=IMAGE)
    trained = TrainedDecoder(generator, generator.init(_key(0)))
    images = np.full((8, *IMAGE), 0.5, np.float32)
    config = GanConfig(epochs=1, batch_size=4)
    with pytest.raises(ValueError, match="n_critic"):
        gan_finetune(trained, critic, oracle, images, config=GanConfig(n_critic=0), key=_key(0))
    with pytest.raises(ValueError, match="batch_size"):
        gan_finetune(trained, critic, oracle, images, config=GanConfig(batch_size=9), key=_key(0))
    with pytest.raises(ValueError, match="critic"):
        gan_finetune(trained, dgwgan32(image_shape=(32, 32, 1)), oracle, images, config=config,
                     key=_key(0))
    with pytest.raises(ValueError, match="generator_variables"):
        gan_finetune(TrainedDecoder(generator, {"params": {}, "batch_stats": {}}), critic, oracle, images,
                     config=config, key=_key(0))
    with pytest.raises(TypeError, match="TrainedDecoder"):
        gan_finetune(generator, critic, oracle, images, config=config, key=_key(0))
    with pytest.raises(ValueError, match="aux_images"):
        gan_finetune(trained, critic, oracle, images[..., :4, :], config=config, key=_key(0))
