import jax
import pytest

from mijax.models import cifar10cnn, lenet

CIFAR_SHAPES = {
    "conv11": (32, 32, 64), "relu12": (32, 32, 64), "pool1": (16, 16, 64), "conv22": (16, 16, 128),
    "relu22": (16, 16, 128), "pool2": (8, 8, 128), "relu32": (8, 8, 128), "pool3": (4, 4, 128),
    "fc1": (512,), "fc1_sigmoid": (512,),
}
LENET_SHAPES = {"conv1": (24, 24, 8), "relu1": (24, 24, 8), "pool1": (12, 12, 8), "conv2": (8, 8, 16),
                "relu2": (8, 8, 16), "pool2": (4, 4, 16), "fc1": (120,), "fc2": (84,)}


@pytest.mark.parametrize("cut,shape", CIFAR_SHAPES.items())
def test_cifar10cnn_feature_shapes(cut, shape):
    assert cifar10cnn(cut=cut).feature_shape() == shape


@pytest.mark.parametrize("cut,shape", LENET_SHAPES.items())
def test_lenet_feature_shapes(cut, shape):
    assert lenet(cut=cut).feature_shape() == shape


def test_outputs_and_parameter_counts():
    from mijax.nn import num_params
    model = cifar10cnn()
    variables = jax.eval_shape(model.init, jax.random.key(0))
    logits = jax.eval_shape(lambda v, x: model.forward(v, x)[0], variables,
                            jax.ShapeDtypeStruct((2, 32, 32, 3), "float32"))
    assert logits.shape == (2, 10)
    convs = 3 * 64 * 9 + 64 + 64 * 64 * 9 + 64 + 64 * 128 * 9 + 128 + 3 * (128 * 128 * 9 + 128)
    assert num_params(variables) == convs + 2048 * 512 + 512 + 512 * 10 + 10
    lenet_vars = jax.eval_shape(lenet().init, jax.random.key(0))
    assert num_params(lenet_vars) == (25 * 8 + 8) + (200 * 16 + 16) + (256 * 120 + 120) + (120 * 84 + 84) + 850
