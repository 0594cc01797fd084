"""mijax.models.funnel and mijax.models.attention: each attention block against a NumPy reference of
its formula, and the funnel's transmitted shape."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mijax.models import classifier_4, pv4_classifier_4
from mijax.models.attention import CBAM, SE, TripletAttention, max_over

X = np.asarray(jax.random.normal(jax.random.key(0), (2, 6, 5, 8)), np.float64)
sig = lambda v: 1.0 / (1.0 + np.exp(-v))


def conv_loop(x, k):
    """'same' cross-correlation of NHWC x [B, H, W, Cin] with kernel [kh, kw, Cin, Cout], zero padding."""
    b, h, w, _ = x.shape
    kh, kw, _, cout = k.shape
    p = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros((b, h, w, cout))
    for i in range(h):
        for j in range(w):
            out[:, i, j] = np.einsum("bhwc,hwcd->bd", p[:, i:i + kh, j:j + kw], k)
    return out


def test_se_matches_numpy():
    se = SE(8, 4, rngs=nnx.Rngs(0))
    w1, w2 = np.asarray(se.fc1.kernel[...]), np.asarray(se.fc2.kernel[...])
    s = sig(np.maximum(X.mean(axis=(1, 2)) @ w1, 0) @ w2)
    np.testing.assert_allclose(se(jnp.asarray(X, jnp.float32)), X * s[:, None, None], rtol=1e-5, atol=1e-6)


def test_cbam_matches_numpy():
    cbam = CBAM(8, 2, rngs=nnx.Rngs(1))
    w1, w2 = np.asarray(cbam.fc1.kernel[...]), np.asarray(cbam.fc2.kernel[...])
    mlp = lambda v: np.maximum(v @ w1, 0) @ w2
    y = X * sig(mlp(X.mean(axis=(1, 2))) + mlp(X.max(axis=(1, 2))))[:, None, None]
    pooled = np.stack([y.mean(-1), y.max(-1)], -1)
    y = y * sig(conv_loop(pooled, np.asarray(cbam.spatial.conv.kernel[...], np.float64)))
    np.testing.assert_allclose(cbam(jnp.asarray(X, jnp.float32)), y, rtol=1e-4, atol=1e-5)


def test_triplet_attention_matches_numpy():
    ta = TripletAttention(rngs=nnx.Rngs(2))

    def gate(g, v):  # v with the pooled axis last; BN in eval mode with fresh statistics: x/√(1+eps)
        pooled = np.stack([v.max(-1), v.mean(-1)], -1)
        a = conv_loop(pooled, np.asarray(g.conv.conv.kernel[...], np.float64)) / np.sqrt(1 + 1e-5)
        return v * sig(a)

    cw = np.transpose(gate(ta.cw, np.transpose(X, (0, 3, 2, 1))), (0, 3, 2, 1))
    hc = np.transpose(gate(ta.hc, np.transpose(X, (0, 1, 3, 2))), (0, 1, 3, 2))
    hw = gate(ta.hw, X)
    np.testing.assert_allclose(ta(jnp.asarray(X, jnp.float32)), (cw + hc + hw) / 3, rtol=1e-4, atol=1e-5)
    assert ta.cw.bn.momentum == 0.99  # PyTorch momentum 0.01


def test_max_over_sends_the_gradient_to_the_first_maximum():
    x = jax.nn.relu(jax.random.normal(jax.random.key(3), (3, 4, 5, 6)))  # ReLU's exact zeros tie
    x = x.at[0, 1, 2].set(0.0)  # a row of ties at the maximum
    for axis in (-1, (1, 2)):
        np.testing.assert_array_equal(max_over(x, axis), jnp.max(x, axis=axis))
        grad = np.asarray(jax.jit(jax.grad(lambda v: jnp.sum(max_over(v, axis))))(x))
        # a NumPy loop: one 1 per reduced group, at its first maximum in row-major order
        xn = np.asarray(x)
        axes = (3,) if axis == -1 else axis
        moved = np.moveaxis(xn, axes, range(4 - len(axes), 4)).reshape(*[xn.shape[a] for a in range(4) if a not in axes], -1)
        expected = np.zeros_like(moved)
        for index in np.ndindex(moved.shape[:-1]):
            expected[index + (int(np.argmax(moved[index])),)] = 1.0
        shape = [xn.shape[a] for a in range(4) if a not in axes] + [xn.shape[a] for a in axes]
        back = np.moveaxis(expected.reshape(shape), range(4 - len(axes), 4), axes)
        np.testing.assert_array_equal(grad, back)
    assert np.isnan(max_over(x.at[0, 0, 0, 3].set(jnp.nan), -1)[0, 0, 0])


def test_funnel_transmits_12x16x16_at_64x64():
    model = pv4_classifier_4()
    assert model.feature_shape() == (16, 16, 12)                     # 3,072 values
    assert model.with_cut("block1").feature_shape() == (32, 32, 64)  # block_idx 1
    assert classifier_4().feature_shape() == (16, 16, 128)           # 32,768 values at block 2
    shapes = jax.eval_shape(lambda v, x: model.network.apply_tapped(v, x, taps=model.network.names)[2],
                            jax.eval_shape(model.init, jax.random.key(0)), jax.ShapeDtypeStruct((1, 64, 64, 3), "float32"))
    assert {k: v.shape[1:] for k, v in shapes.items() if k in ("up", "block3", "block4", "fc2")} == {
        "up": (16, 16, 128), "block3": (8, 8, 256), "block4": (4, 4, 512), "fc2": (10,)}


# --- the ResNet-18 and VGG-16-bn variants, and the reference's decoders --------------------------------

import pytest  # noqa: E402

from mijax.data.transforms import MNIST_HALF  # noqa: E402
from mijax.models import rn18_pv4, siftfunnel_cut, siftfunnel_decoder, vgg16_bn_pv4  # noqa: E402
from mijax.models.funnel import SIFTFUNNEL_RGB  # noqa: E402
from mijax.models.resnet18 import resnet18  # noqa: E402
from mijax.models.siftfunnel_decoders import SIFTFUNNEL_DECODER_BLOCKS, SIFTFUNNEL_TAPS  # noqa: E402
from mijax.nn import num_params  # noqa: E402

FACTORIES = {"classifier_4": classifier_4, "pv4_classifier_4": pv4_classifier_4, "rn18_pv4": rn18_pv4,
             "vgg16_bn_pv4": vgg16_bn_pv4}


def _tap_shapes(model):
    variables = jax.eval_shape(model.init, jax.random.key(0))
    x = jax.ShapeDtypeStruct((1, *model.input_shape), "float32")
    taps = jax.eval_shape(lambda v, x: model.network.apply_tapped(v, x, taps=model.network.names)[2], variables, x)
    return {name: tuple(a.shape[1:]) for name, a in taps.items()}


def test_variants_transmit_the_funnel_output_at_64x64():
    rn18, vgg = rn18_pv4(), vgg16_bn_pv4()
    assert rn18.feature_shape() == (32, 32, 6)                     # 6,144 values (block_idx 2)
    assert vgg.feature_shape() == (16, 16, 4)                      # 1,024 values (block_idx 3)
    assert siftfunnel_cut("rn18_pv4", 2) == siftfunnel_cut("vgg16_bn_pv4", 3) == "funnel"
    # the reference's feat lists, block_idx 1, 2, ...
    shapes = _tap_shapes(rn18)
    assert [shapes[name] for name in SIFTFUNNEL_TAPS["rn18_pv4"]] == [
        (64, 64, 64), (32, 32, 6), (32, 32, 128), (16, 16, 256), (16, 16, 256), (8, 8, 512), (8, 8, 512), (2048,)]
    shapes = _tap_shapes(vgg)
    taps = [shapes[name] for name in SIFTFUNNEL_TAPS["vgg16_bn_pv4"]]
    assert taps[:5] == [(32, 32, 64), (16, 16, 128), (16, 16, 4), (16, 16, 256), (16, 16, 256)]
    assert len(taps) == 29 and taps[-2:] == [(2, 2, 512), (2048,)] and shapes["fc3"] == (10,)


@pytest.mark.parametrize("factory", [rn18_pv4, vgg16_bn_pv4])
def test_every_layer_is_a_cut_and_edge_then_cloud_is_the_forward(factory):
    model = factory(width=8, image_size=32, num_classes=5)
    variables = model.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2, *model.input_shape))
    logits, _ = model.forward(variables, x)
    assert logits.shape == (2, 5)
    _, _, taps = model.network.apply_tapped(variables, model.normalization.normalize(x), taps=model.network.names)
    z, _ = model.edge_apply(variables, x)
    np.testing.assert_array_equal(z, taps["funnel"])
    names = model.network.names
    assert [model.with_cut(cut).cut for cut in names[:-1]] == list(names[:-1])  # every layer but the last
    # the cloud from the reference's edge cuts and two later ones (cloud_apply checks z's shape against
    # feature_shape(); every cut would run ~n²/2 layers and trace n edges)
    for cut in (*model.cuts, "up", names[-4]):
        out, _ = model.with_cut(cut).cloud_apply(variables, taps[cut])
        np.testing.assert_allclose(out, logits, rtol=1e-5, atol=1e-5, err_msg=cut)


def _conv(cin, cout, k, bias=True):  # PyTorch Conv2d / ConvTranspose2d parameters
    return cin * cout * k * k + (cout if bias else 0)


def _attention(c, r, kind):  # SE(c, r), CBAM(c, r) (bias-free MLPs, 7×7 spatial conv), triplet attention
    return {"se": 2 * c * (c // r), "cbam": 2 * c * (c // r) + 98, "triplet": 3 * (98 + 2)}[kind]


def _funnel(cin, hidden, k, bias, c):  # block2_mix of the variants (the squeeze conv, its BN, five convs)
    return (_conv(cin, hidden, k, bias) + 2 * hidden + _conv(hidden, c, 1) + 2 * _conv(c, c, 3) + _conv(c, c, 1)
            + _conv(c, c, 5))


def test_edge_parameters_against_the_reference_and_the_unprotected_edges():
    count = lambda model: num_params(model.edge_variables(jax.eval_shape(model.init, jax.random.key(0))))
    # the reference's layer lists at ndf = 64, 64×64 input (rn18_pv4 without its unused layer1)
    rn18 = (_conv(3, 64, 3, False) + 128 + _attention(64, 16, "se") + _attention(0, 1, "triplet")
            + _conv(64, 128, 3, False) + _conv(128, 128, 3, False) + 512 + _attention(128, 32, "se")
            + _attention(0, 1, "triplet") + _funnel(128, 32, 1, True, 6) + _attention(6, 3, "se")
            + _attention(6, 3, "cbam"))
    vgg = (_conv(3, 64, 3, False) + _conv(64, 64, 3, False) + _conv(64, 128, 3, False) + _conv(128, 128, 3, False)
           + 2 * (64 + 64 + 128 + 128) + _attention(64, 16, "se") + _attention(128, 32, "se")
           + 2 * _attention(0, 1, "triplet") + _funnel(128, 32, 3, False, 4) + _attention(4, 4, "se")
           + _attention(4, 4, "cbam"))
    assert (count(rn18_pv4()), count(vgg16_bn_pv4())) == (rn18, vgg) == (231_832, 300_574)
    # the unprotected edges that send a map of the same size: Classifier_4 to block2, ResNet-18 to
    # layer2 (its blocks are the reference rn18's), VGG-16-bn to its second pooling (4 convs with bias + BN)
    plain_cnn, funnel_cnn = count(classifier_4()), count(pv4_classifier_4())
    plain_rn18 = count(resnet18(width=64, image_size=64).with_cut("layer2_2"))
    plain_vgg = _conv(3, 64, 3) + _conv(64, 64, 3) + _conv(64, 128, 3) + _conv(128, 128, 3) + 2 * (64 + 64 + 128 + 128)
    assert funnel_cnn < plain_cnn / 7 and rn18 < plain_rn18 / 2.5
    # the VGG funnel edge is the plain edge (without conv biases) plus attention and the funnel: larger,
    # though it sends 32× fewer values
    assert plain_vgg < vgg < 1.2 * plain_vgg
    assert 128 * 16 * 16 == 32 * int(np.prod(vgg16_bn_pv4().feature_shape()))


# PyTorch parameter counts of the reference decoders at ngf = ndf = 64, nc = 3
_tail = 3 * _conv(12, 12, 3) + _conv(12, 16, 3) + _conv(16, 64, 4) + _conv(64, 3, 4)  # after the first BN/Tanh
REFERENCE_DECODER_PARAMS = {
    ("classifier_4", 1): _conv(64, 3, 4),
    ("classifier_4", 2): _conv(128, 64, 4) + 128 + _conv(64, 3, 4),
    ("classifier_4", 4): _conv(512, 256, 4) + 512 + _conv(256, 128, 4) + 256 + _conv(128, 64, 4) + 128 + _conv(64, 3, 4),
    ("pv4_classifier_4", 2): _conv(12, 12, 3) + 24 + _tail,
    ("pv4_classifier_4", 3): _conv(128, 256, 3) + 512 + _conv(256, 12, 3) + 24 + _tail,
    ("vgg16_bn_pv4", 3): (2 * _conv(4, 4, 3) + 8 + _conv(4, 32, 3) + _conv(32, 128, 4) + _conv(128, 128, 3) + 256
                          + _conv(128, 64, 4) + 128 + _conv(64, 64, 3) + 128 + _conv(64, 3, 3)),
    ("vgg16_bn_pv4", 4): (_conv(256, 256, 3) + 512 + _conv(256, 128, 4) + 256 + _conv(128, 128, 3) + 256
                          + _conv(128, 64, 4) + 128 + _conv(64, 3, 3)),
}


@pytest.mark.parametrize("name", list(SIFTFUNNEL_DECODER_BLOCKS))
def test_decoders_map_each_block_to_the_image(name):
    for width, size, channels in ((64, 64, 3), (8, 32, 1)):
        model = FACTORIES[name](width=width, image_size=size, channels=channels,
                                normalization=SIFTFUNNEL_RGB if channels == 3 else MNIST_HALF)
        for block in SIFTFUNNEL_DECODER_BLOCKS[name]:
            feature = model.with_cut(siftfunnel_cut(name, block)).feature_shape()
            decoder = siftfunnel_decoder(name, block, width=width, image_size=size, channels=channels)
            variables = jax.eval_shape(decoder.init, jax.random.key(0))
            out = jax.eval_shape(lambda v, z: decoder.apply(v, z)[0], variables,
                                 jax.ShapeDtypeStruct((2, *feature), jnp.float32))
            assert out.shape == (2, *model.input_shape), (name, block, width)
            if width == 64 and (name, block) in REFERENCE_DECODER_PARAMS:
                assert num_params(variables) == REFERENCE_DECODER_PARAMS[name, block], (name, block)


def test_decoder_runs_and_trains_its_batch_norm():
    z = jax.random.normal(jax.random.key(0), (2, 16, 16, 6))
    decoder = siftfunnel_decoder("rn18_pv4", 2, width=8, image_size=32)
    variables = decoder.init(jax.random.key(1))
    x, new = decoder.apply(variables, z, train=True)
    assert x.shape == (2, 32, 32, 3) and bool(jnp.all((x > 0) & (x < 1)))
    assert not np.allclose(new["batch_stats"]["bn1"]["bn"]["mean"], variables["batch_stats"]["bn1"]["bn"]["mean"])


def test_variant_and_decoder_argument_errors():
    for factory in (rn18_pv4, vgg16_bn_pv4):
        for kwargs, word in (({"image_size": 48}, "image_size"), ({"image_size": 16}, "image_size"),
                             ({"width": 0}, "width"), ({"channels": 2}, "channels"),
                             ({"num_classes": 0}, "num_classes"), ({"cut": "nope"}, "cut")):
            with pytest.raises(ValueError, match=word):
                factory(**kwargs)
    for args, kwargs, word in ((("resnet", 1), {}, "model_name"), (("pv4_classifier_4", 4), {}, "block_idx"),
                               (("vgg16_bn_pv4", 2), {}, "block_idx"), (("rn18_pv4", 1), {"width": 0}, "width"),
                               (("rn18_pv4", 1), {"channels": 4}, "channels"),
                               (("rn18_pv4", 1), {"image_size": 48}, "image_size")):
        with pytest.raises(ValueError, match=word):
            siftfunnel_decoder(*args, **kwargs)
    with pytest.raises(ValueError, match="block_idx"):
        siftfunnel_cut("rn18_pv4", 9)
