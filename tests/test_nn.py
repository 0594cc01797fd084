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


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0), (2, 2)])
def test_matmul_convolution_equals_lax_conv(stride, padding):
    from flax import nnx
    native = nn.Conv2d(5, 7, 3, stride=stride, padding=padding, rngs=nnx.Rngs(0))
    matmul = nn.Conv2d(5, 7, 3, stride=stride, padding=padding, matmul=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 9, 9, 5))
    np.testing.assert_allclose(matmul(x), native(x), rtol=1e-5, atol=1e-5)
    grad = lambda m: jax.grad(lambda x: jnp.sum(m(x) ** 2))(x)
    np.testing.assert_allclose(grad(matmul), grad(native), rtol=1e-4, atol=1e-4)


def _lax_conv(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("kernel_size,stride,padding", [(3, 1, 1), (3, 1, 0), (5, 1, 2), (1, 1, 0),
                                                        (3, 2, 1), (3, 1, 3)])
def test_conv2d_values_and_gradients_equal_lax_conv(kernel_size, stride, padding):
    x = jax.random.normal(jax.random.key(1), (2, 9, 8, 5))
    kernel = jax.random.normal(jax.random.key(2), (kernel_size, kernel_size, 5, 4))
    ours = lambda x, k: nn.conv2d(x, k, stride=stride, padding=padding)
    theirs = lambda x, k: _lax_conv(x, k, stride, padding)
    np.testing.assert_allclose(ours(x, kernel), theirs(x, kernel), rtol=1e-5, atol=1e-5)
    loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k)))
    for got, want in zip(jax.grad(loss(ours), (0, 1))(x, kernel), jax.grad(loss(theirs), (0, 1))(x, kernel)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv2d_gradient_under_vmap_over_kernels_and_inside_scan():
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
    kernels = jax.random.normal(jax.random.key(2), (4, 3, 3, 3, 2))

    def descend(conv):
        def steps(kernel):
            step = lambda x, _: (x - 0.1 * jax.grad(lambda x: jnp.sum(jnp.sin(conv(x, kernel))))(x), None)
            return jax.lax.scan(step, x, None, length=3)[0]
        return jax.jit(jax.vmap(steps))(kernels)

    np.testing.assert_allclose(descend(lambda x, k: nn.conv2d(x, k, padding=1)),
                               descend(lambda x, k: _lax_conv(x, k, 1, 1)), rtol=1e-4, atol=1e-4)


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


def test_conv2d_input_gradient_inside_scan_is_a_plain_convolution():
    # JAX's own transpose rule yields kernel labels "01oi", which XLA-CPU runs 2.5x slower in a loop.
    x = jnp.ones((2, 8, 8, 4))
    kernel = jnp.ones((3, 3, 4, 4))

    def descend(conv):
        step = lambda x, _: (x - jax.grad(lambda x: jnp.sum(conv(x, kernel) ** 2))(x), None)
        return jax.jit(lambda x: jax.lax.scan(step, x, None, length=2)[0]).lower(x).compile().as_text()

    assert "_01oi->" in descend(lambda x, k: _lax_conv(x, k, 1, 1))  # the behaviour being avoided
    assert "_01oi->" not in descend(lambda x, k: nn.conv2d(x, k, padding=1))
