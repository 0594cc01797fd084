import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax import nn


def _bn_net():
    return nn.Sequential((
        nn.Layer("conv", nn.pure(lambda rngs: nn.Conv2d(1, 4, 3, padding=1, rngs=rngs))),
        nn.Layer("bn", nn.pure(lambda rngs: nn.BatchNorm(4, rngs=rngs))),
        nn.Layer("relu", jax.nn.relu),
        nn.Layer("fc", nn.pure(lambda rngs: nn.Linear(4 * 8 * 8, 3, rngs=rngs))),
    ))


def test_variables_are_plain_dicts_keyed_by_layer():
    net = _bn_net()
    variables = net.init(jax.random.key(0))
    assert set(variables["params"]) == {"conv", "bn", "fc"}
    assert variables["params"]["conv"]["conv"]["kernel"].shape == (3, 3, 1, 4)
    assert set(variables["batch_stats"]["bn"]["bn"]) == {"mean", "var"}
    assert nn.num_params(variables) == 3 * 3 * 4 + 4 + 8 + 256 * 3 + 3


def test_torch_default_init_bounds():
    variables = nn.pure(lambda rngs: nn.Linear(100, 50, rngs=rngs)).init(jax.random.key(1))
    kernel, bias = variables["params"]["linear"]["kernel"], variables["params"]["linear"]["bias"]
    assert np.abs(kernel).max() <= 1 / np.sqrt(100) + 1e-6  # kaiming_uniform(a=√5) bound = 1/√fan_in
    assert np.abs(bias).max() <= 1 / np.sqrt(100) + 1e-6
    assert np.abs(kernel).max() > 0.8 / np.sqrt(100)


def test_batchnorm_statistics_update_only_in_train_mode():
    net = _bn_net()
    variables = net.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, 8, 8, 1)) + 3.0
    _, same = net.apply(variables, x, train=False)
    assert jax.tree.all(jax.tree.map(lambda a, b: jnp.array_equal(a, b), same, variables))
    _, updated = net.apply(variables, x, train=True)
    conv_out, _ = net.apply(variables, x, stop="conv")
    expected_mean = 0.1 * np.mean(np.asarray(conv_out), axis=(0, 1, 2))  # PyTorch momentum 0.1
    np.testing.assert_allclose(updated["batch_stats"]["bn"]["bn"]["mean"], expected_mean, rtol=1e-5, atol=1e-6)


def test_ranges_compose_and_read_only_their_layers():
    net = _bn_net()
    variables = net.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(2), (2, 8, 8, 1))
    full, _ = net.apply(variables, x)
    head, _ = net.apply(net.subset(variables, ("conv", "bn", "relu")), x, stop="relu")
    tail, _ = net.apply(net.subset(variables, ("fc",)), head, start="fc")
    np.testing.assert_allclose(full, tail, rtol=1e-6)


def test_unknown_layer_and_duplicate_names():
    net = _bn_net()
    with pytest.raises(ValueError, match="unknown layer 'nope'.*conv, bn, relu, fc"):
        net.index("nope")
    with pytest.raises(ValueError, match="unique"):
        nn.Sequential((nn.Layer("a", jax.nn.relu), nn.Layer("a", jax.nn.relu)))


def test_apply_is_jittable_and_differentiable():
    net = _bn_net()
    variables = net.init(jax.random.key(0))
    x = jnp.ones((2, 8, 8, 1))
    loss = lambda p: jnp.sum(net.apply({**variables, "params": p}, x, train=True)[0] ** 2)
    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])


@pytest.mark.parametrize("window", [2, 3])
def test_max_pool_matches_reduce_window_values_and_gradient(window):
    from flax import nnx
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 7, 6, 3)))  # many ties at 0
    x = x.at[0, 0, 0, 0].set(5.0).at[0, 0, 1, 0].set(5.0)  # a tie at the maximum
    reference = lambda x: nnx.max_pool(x, (window, window), strides=(window, window))
    weights = jax.random.normal(jax.random.key(1), reference(x).shape)
    np.testing.assert_array_equal(jax.jit(lambda x: nn.max_pool(x, window))(x), reference(x))
    grad = lambda pool: jax.jit(jax.grad(lambda x: jnp.sum(pool(x) * weights)))(x)
    np.testing.assert_array_equal(grad(lambda x: nn.max_pool(x, window)), grad(reference))
    with_nan = x.at[1, 1, 1, 1].set(jnp.nan)
    np.testing.assert_array_equal(nn.max_pool(with_nan, window), reference(with_nan))
