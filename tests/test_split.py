import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax.models import cifar10cnn, digits_cnn, lenet


def test_edge_then_cloud_equals_forward_and_uses_only_its_variables():
    model = digits_cnn(cut="relu1")
    variables = model.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 32, 32, 1))
    z, _ = model.edge_apply(model.edge_variables(variables), x)
    logits, _ = model.cloud_apply(model.cloud_variables(variables), z)
    np.testing.assert_allclose(logits, model.forward(variables, x)[0], rtol=1e-5, atol=1e-6)
    assert set(model.edge_variables(variables)["params"]) == {"conv1"}
    assert "conv1" not in model.cloud_variables(variables)["params"]


def test_with_cut_moves_the_cut_on_the_same_variables():
    model = digits_cnn(cut="relu1")
    variables = model.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 1))
    deeper = model.with_cut("sigmoid")
    assert deeper.feature_shape() == (16, 16, 8)
    np.testing.assert_allclose(deeper.forward(variables, x)[0], model.forward(variables, x)[0], rtol=1e-5)


def test_unknown_cut_lists_valid_names():
    with pytest.raises(ValueError, match="unknown cut 'relu99'; valid cuts: conv11, relu11"):
        cifar10cnn(cut="relu99")
    with pytest.raises(ValueError, match="unknown cut"):
        lenet(cut="fc3")  # the output layer is no cut


def test_wrong_input_shape_is_a_clear_error():
    model = lenet(cut="conv1")
    variables = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"expected x of shape \[batch, 28, 28, 1\], got \(2, 32, 32, 1\)"):
        model.edge_apply(variables, jnp.zeros((2, 32, 32, 1)))
    with pytest.raises(ValueError, match="expected x of shape"):
        model.edge_apply(variables, jnp.zeros((28, 28, 1)))
