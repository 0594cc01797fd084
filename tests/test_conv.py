import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax import conv

PLANS = [conv.ConvPlan(*forms) for forms in itertools.product(conv.FORMS, repeat=3)]
UNIFORM_PLANS = [None] + [conv.ConvPlan(form, form, form) for form in conv.FORMS]  # None: the rules
# (kernel, stride, padding): every combination the models use, plus padding >= kernel size
CASES = [(3, 1, 1), (3, 1, 0), (5, 1, 2), (1, 1, 0), (3, 2, 1), (5, 2, 2), (3, 1, 3), (4, 2, 1)]


def _lax_conv(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _value_and_grads(fn, x, kernel):
    loss = lambda x, k: jnp.sum(jnp.sin(fn(x, k)))
    return (fn(x, kernel), *jax.grad(loss, (0, 1))(x, kernel))


@pytest.mark.parametrize("kernel_size,stride,padding", CASES)
def test_every_plan_equals_lax_conv_values_and_gradients(kernel_size, stride, padding):
    # every combination of forms on the common 3×3 cases, each form alone on the others
    x = jax.random.normal(jax.random.key(1), (2, 9, 8, 5))
    kernel = jax.random.normal(jax.random.key(2), (kernel_size, kernel_size, 5, 4))
    want = _value_and_grads(lambda x, k: _lax_conv(x, k, stride, padding), x, kernel)
    run = jax.jit(lambda x, k, plan: _value_and_grads(
        lambda x, k: conv.conv2d(x, k, stride=stride, padding=padding, plan=plan), x, k), static_argnums=2)
    for plan in PLANS if (kernel_size, stride, padding) in [(3, 1, 1), (3, 2, 1)] else UNIFORM_PLANS:
        for got, expected in zip(run(x, kernel, plan), want):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=str(plan))


@pytest.mark.parametrize("plan", [conv.ConvPlan("xla", "xla", "xla"), conv.ConvPlan("xla", "xla", "shift"),
                                  conv.ConvPlan("im2col", "im2col", "im2col")])
def test_gradients_under_vmap_over_kernels_and_inside_scan(plan):
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
    kernels = 0.3 * jax.random.normal(jax.random.key(2), (4, 3, 3, 3, 2))

    def descend(conv_fn):
        def steps(kernel):  # descent on the input and the kernel together, three steps
            def step(carry, _):
                x, k = carry
                gx, gk = jax.grad(lambda x, k: jnp.sum(jnp.sin(conv_fn(x, k))), (0, 1))(x, k)
                return (x - 0.1 * gx, k - 0.1 * gk), None
            return jax.lax.scan(step, (x, kernel), None, length=3)[0]
        return jax.jit(jax.vmap(steps))(kernels)

    got = descend(lambda x, k: conv.conv2d(x, k, padding=1, plan=plan))
    want = descend(lambda x, k: _lax_conv(x, k, 1, 1))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _dim_labels_of_scanned_step(conv_fn, x, kernel):
    def step(carry, _):
        x, k = carry
        gx, gk = jax.grad(lambda x, k: jnp.sum(conv_fn(x, k) ** 2), (0, 1))(x, k)
        return (x - gx, k - gk), None
    text = jax.jit(lambda x, k: jax.lax.scan(step, (x, k), None, length=2)[0]).lower(x, kernel).compile().as_text()
    return set(re.findall(r"dim_labels=(\S+?)[,}\s]", text))


@pytest.mark.parametrize("shape", [(2, 8, 8, 4, 4), (2, 2, 2, 64, 64), (64, 32, 32, 32, 32)])
def test_scanned_training_step_never_runs_jax_transpose_rules(shape):
    # JAX's transpose rules give kernel labels "01oi" (input gradient) and "f01b_i01o" or
    # "01bf_o01i" (weight gradient, depending on the layout XLA picks), which XLA-CPU runs 20x and
    # 75x slower inside a loop than in a plain step (benchmarks/xla_cpu_findings.py). The rules' plans run plain NHWC/HWIO convolutions only.
    b, h, w, cin, cout = shape
    x, kernel = jnp.ones((b, h, w, cin)), jnp.ones((3, 3, cin, cout))
    slow = {"f01b_i01o->01bf", "b01f_01oi->b01f", "01bf_o01i->f01b"}
    assert slow & _dim_labels_of_scanned_step(lambda x, k: _lax_conv(x, k, 1, 1), x, kernel)
    for plan in UNIFORM_PLANS:
        labels = _dim_labels_of_scanned_step(lambda x, k: conv.conv2d(x, k, padding=1, plan=plan), x, kernel)
        assert not labels & slow, (plan, labels)
        if plan is None:
            assert labels <= {"b01f_01io->b01f"}, labels


def test_plan_rules():
    cpu = lambda x_shape, k_shape, **kw: conv.plan_conv(x_shape, k_shape, backend="cpu", **kw)
    # 2×2 maps: XLA-CPU's convolution is ~100x slower than a matrix product there
    assert cpu((128, 2, 2, 512), (3, 3, 512, 512), padding=1) == ("im2col", "im2col", "im2col")
    assert cpu((128, 32, 32, 64), (3, 3, 64, 64), padding=1) == ("xla", "xla", "shift")
    assert cpu((32, 32, 32, 64), (3, 3, 64, 3), padding=1).weight_grad == "xla"
    assert cpu((128, 32, 32, 16), (3, 3, 16, 32), stride=2, padding=1) == ("xla", "im2col", "im2col")
    assert cpu((2, 8, 8, 4), (3, 3, 4, 4), padding=3).input_grad == "im2col"  # padding >= kernel
    assert cpu((128, 32, 32, 64), (3, 3, 64, 64), padding=1, stacked=True) == ("im2col",) * 3
    with conv.stacked_kernels():
        assert cpu((128, 32, 32, 64), (3, 3, 64, 64), padding=1) == ("im2col",) * 3
    assert cpu((128, 32, 32, 64), (3, 3, 64, 64), padding=1).forward == "xla"


def test_shift_is_replaced_where_it_does_not_apply():
    plan = conv.ConvPlan("shift", "shift", "shift")
    x = jax.random.normal(jax.random.key(0), (1, 7, 7, 2))
    k = jax.random.normal(jax.random.key(1), (3, 3, 2, 3))
    np.testing.assert_allclose(conv.conv2d(x, k, stride=2, padding=1, plan=plan), _lax_conv(x, k, 2, 1),
                               rtol=1e-5, atol=1e-5)


def test_bad_shapes_name_the_arguments():
    with pytest.raises(ValueError, match=r"expected x \[batch, height, width, 3\]"):
        conv.conv2d(jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 3, 2)))
    with pytest.raises(ValueError, match="kernel"):
        conv.conv2d(jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4)))
