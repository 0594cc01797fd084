import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax.models import res_norm_decoder
from mijax.nn import num_params


def _key(seed):
    # XLA-CPU compiles threefry for every new shape in ~0.5-2 s; RBG keys keep these tests fast
    return jax.random.key(seed, impl="rbg")


def _shape(decoder, feature_shape):
    variables = jax.eval_shape(decoder.init, jax.random.key(0))
    return jax.eval_shape(lambda v, z: decoder.apply(v, z)[0], variables,
                          jax.ShapeDtypeStruct((2, *feature_shape), jnp.float32)).shape


@pytest.mark.parametrize("side,size,upsample", [(8, 32, "transpose"), (12, 48, "transpose"), (16, 64, "transpose"),
                                                (8, 32, "resize"), (8, 32, "subpixel")])
def test_output_is_the_image_size(side, size, upsample):
    decoder = res_norm_decoder(feature_shape=(side, side, 8), image_shape=(size, size, 3), upsample=upsample)
    assert _shape(decoder, (side, side, 8)) == (2, size, size, 3)


def test_parameter_count_equals_the_reference():
    # res_normN_AE(N=8, internal_nc=64, input_nc=8, output_nc=3, 8 -> 32) in PyTorch: 711,539 parameters
    decoder = res_norm_decoder(feature_shape=(8, 8, 8), image_shape=(32, 32, 3))
    assert num_params(jax.eval_shape(decoder.init, jax.random.key(0))) == 711_539


def test_bad_shapes_and_options():
    for feature, image in [((8, 8, 8), (24, 24, 3)), ((8, 8, 8), (12, 12, 3)), ((8, 8, 8), (32, 16, 3)),
                           ((8, 8), (32, 32, 3)), ((8, 8, 8), (32, 32))]:
        with pytest.raises(ValueError, match="feature|image|ratio"):
            res_norm_decoder(feature_shape=feature, image_shape=image)
    with pytest.raises(ValueError, match="upsample"):
        res_norm_decoder(feature_shape=(8, 8, 8), image_shape=(32, 32, 3), upsample="bilinear")
    with pytest.raises(ValueError, match="method"):
        res_norm_decoder(feature_shape=(8, 8, 8), image_shape=(32, 32, 3), method="fft")


# --- a NumPy port of the reference (PyTorch semantics, NHWC) ------------------------------------------


def _conv(x, w, b=None, pad=0):
    k = w.shape[0]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, wd = xp.shape[1] - k + 1, xp.shape[2] - k + 1
    y = sum(xp[:, a:a + h, c:c + wd] @ w[a, c] for a in range(k) for c in range(k))
    return y if b is None else y + b


def _conv_transpose(x, w, b, stride=2, pad=1, out_pad=1):
    """torch.nn.ConvTranspose2d as a scatter loop: y[i·s + a − p] += x[i]·W[a]."""
    n, h, wd, _ = x.shape
    k = w.shape[0]
    out_h, out_w = (h - 1) * stride - 2 * pad + k + out_pad, (wd - 1) * stride - 2 * pad + k + out_pad
    full = np.zeros((n, out_h + 2 * pad + k, out_w + 2 * pad + k, w.shape[3]))
    for i in range(h):
        for j in range(wd):
            for a in range(k):
                for c in range(k):
                    full[:, i * stride + a, j * stride + c] += x[:, i, j] @ w[a, c]
    return full[:, pad:pad + out_h, pad:pad + out_w] + b


def _bn(x, p, s, train):
    mean, var = (x.mean((0, 1, 2)), x.var((0, 1, 2))) if train else (s["bn"]["mean"], s["bn"]["var"])
    return (x - mean) / np.sqrt(var + 1e-5) * p["bn"]["scale"] + p["bn"]["bias"]


def _resblock(x, p, s, train):
    relu = lambda a: np.maximum(a, 0)
    out = relu(_bn(x, p["bn0"], s["bn0"], train))
    out = relu(_bn(_conv(out, p["conv1"]["conv"]["kernel"], p["conv1"]["conv"]["bias"], 1), p["bn1"], s["bn1"], train))
    out = _conv(out, p["conv2"]["conv"]["kernel"], p["conv2"]["conv"]["bias"], 1)
    if "shortcut" in p:
        return out + _bn(_conv(x, p["shortcut"]["conv"]["kernel"]), p["shortcut_bn"], s["shortcut_bn"], train)
    return out + x


def _reference(variables, z, num_blocks, stages, train):
    p, s = variables["params"], variables["batch_stats"]
    relu = lambda a: np.maximum(a, 0)
    x = relu(_resblock(z, p["block0"], s["block0"], train))
    for i in range(1, num_blocks + 1):
        x = relu(_resblock(x, p[f"block{i}"], s[f"block{i}"], train))
    for i in range(1, max(stages, 2) + 1):
        name = f"stage{i}"
        if i <= stages:
            x = _conv_transpose(x, p[name]["conv"]["kernel"], p[name]["conv"]["bias"])
            x = relu(_bn(x, p[name]["bn"], s[name]["bn"], train))
        else:
            x = relu(_resblock(x, p[name], s[name], train))
    return 1 / (1 + np.exp(-_resblock(x, p["out_block"], s["out_block"], train)))


def _randomised(variables, key):
    """Random BatchNorm scales, biases and running statistics, so that BN is not the identity."""
    leaves, tree = jax.tree.flatten_with_path(variables)
    out = []
    for i, (path, leaf) in enumerate(leaves):
        name = jax.tree_util.keystr(path)
        k = jax.random.fold_in(key, i)
        if "'var'" in name:
            leaf = jax.random.uniform(k, leaf.shape, minval=0.5, maxval=2.0)
        elif any(n in name for n in ("'mean'", "'scale'")) or ("'bn'" in name and "'bias'" in name):
            leaf = leaf + 0.3 * jax.random.normal(k, leaf.shape)
        out.append(np.asarray(leaf, np.float64))
    return jax.tree.unflatten(tree, out)


@pytest.mark.parametrize("feature,image,stages", [((4, 4, 3), (8, 8, 2), 1), ((2, 2, 3), (16, 16, 2), 3)])
def test_transpose_variant_equals_a_numpy_port_of_the_reference(feature, image, stages):
    decoder = res_norm_decoder(feature_shape=feature, image_shape=image, num_blocks=1, channels=4)
    variables = _randomised(decoder.init(_key(0)), _key(2))
    as_f32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), variables)
    z = np.asarray(jax.random.normal(_key(1), (3, *feature)), np.float32)
    for train in (False, True):
        got, new = decoder.apply(as_f32, z, train=train)
        want = _reference(variables, z.astype(np.float64), 1, stages, train)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"train={train}")
        assert 0 < float(got.min()) and float(got.max()) < 1
    assert not np.allclose(new["batch_stats"]["block0"]["bn0"]["bn"]["mean"],
                           as_f32["batch_stats"]["block0"]["bn0"]["bn"]["mean"])


def test_upsampling_stage_equals_lax_conv_transpose_for_every_method():
    x = jax.random.normal(_key(1), (2, 4, 4, 6))
    variables = None
    for method in ("auto", "col2im", "subpixel", "dilated"):
        decoder = res_norm_decoder(feature_shape=(4, 4, 3), image_shape=(16, 16, 3), num_blocks=0, channels=6,
                                   method=method)
        variables = variables or decoder.init(_key(0))   # the same parameters for every method
        got, _ = decoder.apply(variables, x, start="stage1", stop="stage1")   # ConvT -> BN (eval, fresh stats)
        conv = variables["params"]["stage1"]["conv"]
        want = jax.lax.conv_transpose(x, conv["kernel"], (2, 2), ((1, 2), (1, 2)),
                                      dimension_numbers=("NHWC", "HWOI", "NHWC"), transpose_kernel=True)
        np.testing.assert_allclose(got, (want + conv["bias"]) / np.sqrt(1 + 1e-5), rtol=1e-5, atol=1e-5,
                                   err_msg=method)


def test_cpu_variants_are_upsampling_then_conv_or_conv_then_pixel_shuffle():
    x = np.asarray(jax.random.normal(_key(1), (2, 3, 3, 4)), np.float64)
    for upsample in ("resize", "subpixel"):
        decoder = res_norm_decoder(feature_shape=(3, 3, 2), image_shape=(6, 6, 1), num_blocks=0, channels=4,
                                   upsample=upsample)
        variables = decoder.init(_key(0))
        got, _ = decoder.apply(variables, jnp.asarray(x, jnp.float32), start="stage1", stop="stage1")
        conv = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"]["stage1"]["conv"]["conv"])
        if upsample == "resize":
            want = _conv(x.repeat(2, axis=1).repeat(2, axis=2), conv["kernel"], conv["bias"], 1)
        else:   # channel (r_h·2 + r_w)·C + c of the conv output goes to pixel (2i + r_h, 2j + r_w), channel c
            y = _conv(x, conv["kernel"], conv["bias"], 1).reshape(2, 3, 3, 2, 2, 4)
            want = y.transpose(0, 1, 3, 2, 4, 5).reshape(2, 6, 6, 4)
        np.testing.assert_allclose(got, want / np.sqrt(1 + 1e-5), rtol=1e-4, atol=1e-5, err_msg=upsample)
