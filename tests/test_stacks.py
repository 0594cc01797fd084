import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax import conv, stacks


def test_stack_modes_give_the_same_numbers():
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 4))
    kernels = 0.2 * jax.random.normal(jax.random.key(1), (5, 3, 3, 4, 6))
    scales = jnp.arange(5.0)

    def loss_and_grad(kernel, x, scale):
        return jax.value_and_grad(lambda k: scale * jnp.sum(jnp.tanh(conv.conv2d(x, k, padding=1))))(kernel)

    outs = [jax.jit(stacks.map_models(loss_and_grad, (0, None, 0), mode=mode))(kernels, x, scales)
            for mode in stacks.STACK_MODES]
    for out in outs[1:]:
        for a, b in zip(out, outs[0]):
            # the modes are different programs: float32 sums over 192 positions in another order
            # (measured 12-02 at XLA's O1: 1.8e-5 apart on a gradient entry of 0.17)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert outs[0][1].shape == kernels.shape
    with pytest.raises(ValueError, match="mode"):
        stacks.map_models(loss_and_grad, (0, None, 0), mode="pmap")


def test_stack_mode_rules(monkeypatch):
    assert stacks.stack_mode(15, backend="cpu") == "map"  # pairs run concurrently, 2 compiled copies
    assert stacks.stack_mode(15, backend="gpu") == "vmap"
    monkeypatch.setenv("MIJAX_STACK_MODE", "unroll")
    assert stacks.stack_mode(15, backend="cpu") == "unroll"
    monkeypatch.setenv("MIJAX_STACK_MODE", "pmap")
    with pytest.raises(ValueError, match="MIJAX_STACK_MODE"):
        stacks.stack_mode(15)
