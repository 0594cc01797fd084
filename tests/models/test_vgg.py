import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax.models import vgg11_bn_sgm
from mijax.models.vgg import dropout_layer
from mijax.nn import num_params

KEY = jax.random.key(0)


def random_variables(model, seed=0):
    """Variables of the right structure (of a model or a `Pure`) filled by NumPy, with fan-in scaled kernels and unit BN stats.

    Much cheaper than `model.init` in tests: XLA compiles one random generator per parameter shape.
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "var" in name or "scale" in name:
            return np.ones(leaf.shape, leaf.dtype)
        if "mean" in name:
            return np.zeros(leaf.shape, leaf.dtype)
        std = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 0.05
        return (std * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree.map(jnp.asarray, jax.tree_util.tree_map_with_path(fill, jax.eval_shape(model.init, KEY)))


def init_layers(model, names, key=KEY):
    """Real initial variables of some layers only (as `model.init` gives them)."""
    network = model.network
    variables = {"params": {}, "batch_stats": {}}
    for name in names:
        index = network.index(name)
        fn = network.layers[index].fn
        if hasattr(fn, "init"):
            v = fn.init(jax.random.fold_in(key, index))
            variables["params"][name], variables["batch_stats"][name] = v["params"], v["batch_stats"]
    return variables


def _abstract_logits(model, batch=2):
    variables = jax.eval_shape(model.init, KEY)
    x = jax.ShapeDtypeStruct((batch, *model.input_shape), "float32")
    return variables, jax.eval_shape(lambda v, x: model.forward(v, x)[0], variables, x)


@pytest.mark.parametrize("size,side", [(32, 8), (48, 12), (64, 16)])
def test_feature_and_output_shapes(size, side):
    model = vgg11_bn_sgm(image_size=size, num_classes=7)
    assert model.cut == "bottleneck_sigmoid"
    assert model.feature_shape() == (side, side, 8)
    _, logits = _abstract_logits(model)
    assert logits.shape == (2, 7)


def _convs(pairs):
    return sum(cin * cout * 9 + cout for cin, cout in pairs)


def test_parameter_counts_by_hand():
    variables, _ = _abstract_logits(vgg11_bn_sgm())
    client = _convs([(3, 64), (64, 128), (128, 8)]) + 2 * (64 + 128)
    server = _convs([(8, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512), (512, 512)])
    server += 2 * (256 + 256 + 512 * 4)
    classifier = 512 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    assert num_params(variables) == client + server + classifier
    # 64 px: the flattened map is 2×2×512, the first Linear 2048 → 512 (the reference's `upsize`).
    big, _ = _abstract_logits(vgg11_bn_sgm(image_size=64))
    assert num_params(big) - num_params(variables) == (2048 - 512) * 512


def test_edge_output_is_in_unit_interval_and_names_the_reference_cut():
    model = vgg11_bn_sgm()
    assert model.edge_names == ("conv1", "bn1", "relu1", "pool2", "conv3", "bn3", "relu3", "pool4",
                                "bottleneck", "bottleneck_sigmoid")
    assert model.cloud_names[0] == "expand"
    variables = init_layers(model, model.edge_names)
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
    z, _ = jax.jit(model.edge_apply)(variables, x)
    assert z.shape == (4, 8, 8, 8) and bool(jnp.all((z > 0) & (z < 1)))


def test_integer_and_named_cuts():
    assert vgg11_bn_sgm(cut=3).feature_shape() == (16, 16, 8)  # [64, M, 128] then the bottleneck
    assert vgg11_bn_sgm(cut=6).feature_shape() == (8, 8, 8)
    assert vgg11_bn_sgm(cut="pool4").feature_shape() == (8, 8, 128)
    assert vgg11_bn_sgm(sigmoid=False).cut == "bottleneck_bn"
    with pytest.raises(ValueError, match="unknown cut"):
        vgg11_bn_sgm(cut="conv99")
    with pytest.raises(ValueError, match="expected cut"):
        vgg11_bn_sgm(cut=0)
    with pytest.raises(ValueError, match="image_size"):
        vgg11_bn_sgm(image_size=16)


def test_bottleneck_options():
    model = vgg11_bn_sgm(bottleneck_channels=4, bottleneck_stride=2)
    assert model.feature_shape() == (4, 4, 4)
    _, logits = _abstract_logits(model)
    assert logits.shape == (2, 10)
    relu = vgg11_bn_sgm(bottleneck_relu=True, bottleneck_stride=4)
    assert relu.edge_names[-5:] == ("bottleneck", "bottleneck_relu1", "bottleneck2", "bottleneck_relu",
                                    "bottleneck_sigmoid")
    assert relu.cloud_names[:4] == ("expand1", "expand_relu1", "expand", "expand_relu")
    for kwargs, match in [({"bottleneck_stride": 3}, "power of two"), ({"bottleneck_kernel": 2}, "odd"),
                          ({"bottleneck_channels": 0}, "channels")]:
        with pytest.raises(ValueError, match=match):
            vgg11_bn_sgm(**kwargs)


def test_dropout_only_in_train_mode():
    model = vgg11_bn_sgm()
    variables = random_variables(model)
    h = jax.random.normal(jax.random.key(1), (4, 512))  # the flattened map entering the classifier
    head = jax.jit(lambda h, key, train: model.network.apply(variables, h, train=train, key=key,
                                                             start="dropout1")[0], static_argnums=2)
    np.testing.assert_array_equal(head(h, jax.random.key(2), False), head(h, jax.random.key(3), False))
    assert not np.allclose(head(h, jax.random.key(2), True), head(h, jax.random.key(3), True))
    with pytest.raises(ValueError, match="key"):
        model.network.apply(variables, h, train=True, start="dropout1")
    drop = dropout_layer(0.5)
    x = jnp.ones((1000,))
    y, _ = drop.apply(drop.init(KEY), x, train=True, key=KEY)
    assert set(np.unique(y).tolist()) == {0.0, 2.0} and abs(float(jnp.mean(y == 0)) - 0.5) < 0.05


def test_initialisation_statistics():
    params = init_layers(vgg11_bn_sgm(), ["conv1", "conv3", "bottleneck", "expand", "conv12", "bn3"])["params"]
    for name, cin, cout in [("conv1", 3, 64), ("conv3", 64, 128), ("bottleneck", 128, 8)]:
        kernel = np.asarray(params[name]["conv"]["kernel"])
        bound = np.sqrt(6 / (9 * cin + 9 * cout))  # Xavier uniform
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
        assert abs(kernel.std() - bound / np.sqrt(3)) < 0.1 * bound
        np.testing.assert_array_equal(params[name]["conv"]["bias"], 0)
    for name, cin in [("expand", 8), ("conv12", 512)]:
        kernel = np.asarray(params[name]["conv"]["kernel"])
        bound = 1 / np.sqrt(9 * cin)  # PyTorch default
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
        assert np.abs(np.asarray(params[name]["conv"]["bias"])).max() > 0
    np.testing.assert_array_equal(params["bn3"]["bn"]["scale"], 1)


def test_width_multiplier_scales_all_but_bottleneck_and_classes():
    model = vgg11_bn_sgm(width_multiplier=1 / 8, num_classes=7)
    assert model.feature_shape() == (8, 8, 8)  # the bottleneck keeps its 8 channels
    variables, logits = _abstract_logits(model)
    assert logits.shape == (2, 7)
    params = variables["params"]
    assert params["conv1"]["conv"]["kernel"].shape == (3, 3, 3, 8)
    assert params["bottleneck"]["conv"]["kernel"].shape == (3, 3, 16, 8)
    assert params["expand"]["conv"]["kernel"].shape == (3, 3, 8, 16)
    assert params["conv12"]["conv"]["kernel"].shape == (3, 3, 64, 64)
    assert params["fc1"]["linear"]["kernel"].shape == (64, 64)
    assert params["fc3"]["linear"]["kernel"].shape == (64, 7)
    # the default is the reference network, unchanged
    full, _ = _abstract_logits(vgg11_bn_sgm(width_multiplier=1.0))
    assert jax.tree.map(jnp.shape, full) == jax.tree.map(jnp.shape, _abstract_logits(vgg11_bn_sgm())[0])
    with pytest.raises(ValueError, match="width_multiplier"):
        vgg11_bn_sgm(width_multiplier=0)
