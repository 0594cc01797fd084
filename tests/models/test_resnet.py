import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax.models import resnet20_cem
from mijax.models.resnet import BasicBlock
from mijax.nn import num_params, pure
from tests.models.test_vgg import init_layers, random_variables

KEY = jax.random.key(0)


@pytest.mark.parametrize("size", [32, 48, 64])
def test_feature_and_output_shapes(size):
    model = resnet20_cem(image_size=size)
    assert model.feature_shape() == (size // 4, size // 4, 8)
    variables = jax.eval_shape(model.init, KEY)
    logits = jax.eval_shape(lambda v, x: model.forward(v, x)[0], variables,
                            jax.ShapeDtypeStruct((2, size, size, 3), "float32"))
    assert logits.shape == (2, 200)


def test_layer_names_and_integer_cuts():
    model = resnet20_cem()
    assert model.edge_names == ("stem", "block1_1", "block1_2", "block1_3", "block2_1", "bottleneck",
                                "bottleneck_sigmoid")
    assert model.cloud_names == ("expand", "block2_2", "block2_3", "block3_1", "block3_2", "block3_3",
                                 "pool", "fc")
    assert resnet20_cem(cut=1).feature_shape() == (64, 64, 8)
    assert resnet20_cem(cut=10).feature_shape() == (8, 8, 8)
    assert resnet20_cem(cut="block2_1").feature_shape() == (16, 16, 64)
    assert resnet20_cem(bottleneck_stride=2).feature_shape() == (8, 8, 8)
    with pytest.raises(ValueError, match="expected cut"):
        resnet20_cem(cut=11)


def test_parameter_count_by_hand():
    variables = jax.eval_shape(resnet20_cem().init, KEY)

    def block(cin, cout):
        return 9 * cin * cout + 9 * cout * cout + 4 * cout  # two bias-free convs, two BatchNorms

    blocks = block(16, 32) + 2 * block(32, 32) + block(32, 64) + 2 * block(64, 64) + block(64, 128)
    blocks += 2 * block(128, 128)
    stem = 25 * 3 * 16 + 2 * 16
    bottleneck = (9 * 64 * 8 + 8) + (9 * 8 * 64 + 64)
    assert num_params(variables) == stem + blocks + bottleneck + 128 * 200 + 200


def test_edge_output_in_unit_interval():
    model = resnet20_cem()
    variables = random_variables(model)
    x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
    z, _ = jax.jit(model.edge_apply)(variables, x)
    assert z.shape == (2, 16, 16, 8) and bool(jnp.all((z > 0) & (z < 1)))


def test_option_a_shortcut():
    """With conv_b = 0 and BN bias 0 the block outputs ReLU(shortcut): x subsampled by 2, zero channels appended."""
    block = pure(lambda rngs: BasicBlock(4, 8, 2, rngs=rngs))
    variables = random_variables(block)
    variables["params"]["conv_b"]["conv"]["kernel"] = jnp.zeros((3, 3, 8, 8))
    variables["params"]["bn_b"]["bn"]["bias"] = jnp.zeros(8)
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 4))
    y, _ = jax.jit(block.apply)(variables, x)
    expected = np.maximum(np.concatenate([np.asarray(x)[:, ::2, ::2], np.zeros((2, 3, 3, 4))], -1), 0)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_initialisation_follows_the_reference():
    model = resnet20_cem()
    params = init_layers(model, ["stem", "block1_1", "bottleneck", "expand", "block3_3"])["params"]
    for kernel, out in [(params["stem"]["conv"]["conv"]["kernel"], 16),
                        (params["block1_1"]["conv_b"]["conv"]["kernel"], 32),
                        (params["expand"]["conv"]["kernel"], 64)]:
        size = kernel.shape[0] * kernel.shape[1]
        np.testing.assert_allclose(np.std(kernel), np.sqrt(2 / (size * out)), rtol=0.1)  # He fan-out
    np.testing.assert_array_equal(params["expand"]["conv"]["bias"], 0)
    assert np.abs(np.asarray(params["bottleneck"]["conv"]["bias"])).max() > 0  # PyTorch default bias
    server = np.asarray(params["block3_3"]["conv_a"]["conv"]["kernel"])  # PyTorch default, uniform
    assert np.abs(server).max() <= 1 / np.sqrt(9 * 128) and np.abs(server).max() > 0.95 / np.sqrt(9 * 128)
