import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax.models import cifar10cnn, lenet
from mijax.models.decoders import (
    HE2019_DECODERS,
    ConvTranspose2d,
    ShiftAddConv2d,
    conv_transpose,
    decoder_for,
    he2019_decoder,
)
from mijax.nn import Conv2d, num_params, pure


def _conv_transpose_numpy(x, w, stride, padding, output_padding):
    """torch.nn.ConvTranspose2d written as a scatter loop: y[i·s + a − p] += x[i]·W[a]."""
    b, n_h, n_w, _ = x.shape
    k, cout = w.shape[0], w.shape[3]
    out_h = (n_h - 1) * stride - 2 * padding + k + output_padding
    out_w = (n_w - 1) * stride - 2 * padding + k + output_padding
    full = np.zeros((b, out_h + 2 * padding + k, out_w + 2 * padding + k, cout))
    for i in range(n_h):
        for j in range(n_w):
            for a in range(k):
                for c in range(k):
                    full[:, i * stride + a, j * stride + c] += x[:, i, j] @ w[a, c]
    return full[:, padding:padding + out_h, padding:padding + out_w]


# (kernel, stride, padding, output_padding): stride 1 (plain conv), the paper's layers, odd cases
CASES = [(1, 1, 0, 0), (3, 1, 1, 0), (5, 1, 0, 0), (3, 2, 1, 1), (5, 2, 0, 1), (4, 2, 1, 0), (2, 3, 0, 2),
         (5, 3, 2, 1)]


@pytest.mark.parametrize("method,matmul", [("dilated", False), ("subpixel", False), ("subpixel", True),
                                           ("col2im", False)])
def test_conv_transpose_matches_a_scatter_loop(method, matmul):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
    kernels = [rng.normal(size=(k, k, 3, 2)).astype(np.float32) for k, _, _, _ in CASES]
    got = jax.jit(lambda x, kernels: [  # one program for all cases
        conv_transpose(x, w, stride=s, padding=p, output_padding=op, method=method, matmul=matmul)
        for w, (_, s, p, op) in zip(kernels, CASES)])(x, kernels)
    for y, w, (k, s, p, op) in zip(got, kernels, CASES):
        np.testing.assert_allclose(y, _conv_transpose_numpy(x, w, s, p, op), rtol=1e-4, atol=1e-4,
                                   err_msg=f"k={k} s={s} p={p} op={op}")


@pytest.mark.parametrize("k,s,p,op", CASES)
def test_conv_transpose_gradients_agree_across_methods(k, s, p, op):
    # "dilated" is differentiated by JAX's own rules; "col2im" has a hand-written backward pass.
    x = jax.random.normal(jax.random.key(0), (2, 5, 4, 4))
    w = jax.random.normal(jax.random.key(1), (k, k, 4, 3))
    grads = [jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv_transpose(
        x, w, stride=s, padding=p, output_padding=op, method=m))), argnums=(0, 1)))(x, w)
        for m in ("dilated", "subpixel", "col2im")]
    for g in grads[1:]:
        np.testing.assert_allclose(g[0], grads[0][0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(g[1], grads[0][1], rtol=1e-4, atol=1e-4)


def test_conv_transpose_bad_input():
    x = jnp.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match=r"expected kernel of shape \[k, k, 3, out\]"):
        conv_transpose(x, jnp.zeros((3, 3, 2, 1)))
    with pytest.raises(ValueError, match="output_padding < stride"):
        conv_transpose(x, jnp.zeros((3, 3, 3, 1)), stride=1, output_padding=1)
    with pytest.raises(ValueError, match="expected method"):
        conv_transpose(x, jnp.zeros((3, 3, 3, 1)), method="fft")


def test_conv_transpose_init_is_pytorchs():
    # PyTorch takes the fan-in of a transposed conv from weight.size(1) = out_channels: U(±1/√(out·k²)).
    variables = pure(lambda rngs: ConvTranspose2d(64, 4, 3, rngs=rngs)).init(jax.random.key(0))
    bound = 1 / np.sqrt(4 * 9)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    assert kernel.shape == (3, 3, 64, 4) and bias.shape == (4,)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
    assert np.abs(bias).max() <= bound


def test_shift_add_conv_is_the_same_function_as_conv2d():
    make = lambda cls: pure(lambda rngs: cls(16, 3, 3, padding=1, rngs=rngs))
    conv, shift_add = make(Conv2d), make(ShiftAddConv2d)
    variables = conv.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 7, 6, 16))
    apply = lambda net: jax.jit(lambda v, x: net.apply(v, x)[0])(variables, x)
    np.testing.assert_allclose(apply(shift_add), apply(conv), rtol=1e-5, atol=1e-5)
    assert shift_add.init(jax.random.key(0))["params"]["conv"]["kernel"].shape == (3, 3, 16, 3)


# (PyTorch parameter counts of the authors' decoders: ConvT weight in·out·k² + bias out)
PAPER_PARAMS = {
    ("cifar10", "conv11"): 64 * 3 * 9 + 3,
    ("cifar10", "relu22"): 128 * 64 * 9 + 64 + 64 * 3 * 9 + 3,
    ("cifar10", "relu32"): 128 * 128 * 9 + 128 + 128 * 64 * 9 + 64 + 64 * 3 * 9 + 3,
    ("mnist", "conv1"): 8 * 25 + 1,
    ("mnist", "relu2"): 16 * 8 * 25 + 8 + 8 * 1 * 25 + 1,
}


@pytest.mark.parametrize("dataset,cut", list(HE2019_DECODERS))
def test_paper_decoders_map_the_cut_features_to_images(dataset, cut):
    model = (cifar10cnn if dataset == "cifar10" else lenet)(cut=cut)
    feature_shape, image_shape = HE2019_DECODERS[dataset, cut]
    assert model.feature_shape() == feature_shape and model.input_shape == image_shape
    decoder = he2019_decoder(cut, dataset)
    variables = jax.eval_shape(decoder.init, jax.random.key(0))
    out = jax.eval_shape(lambda v, z: decoder.apply(v, z)[0], variables,
                         jax.ShapeDtypeStruct((2, *feature_shape), jnp.float32))
    assert out.shape == (2, *image_shape)
    assert num_params(variables) == PAPER_PARAMS[dataset, cut]
    assert decoder_for(feature_shape, image_shape, architecture="paper").init is not None


def test_paper_decoder_is_the_same_function_for_every_method():
    z = jax.random.normal(jax.random.key(1), (2, 8, 8, 16))
    variables = he2019_decoder("relu2", "mnist").init(jax.random.key(0))
    outputs = [jax.jit(he2019_decoder("relu2", "mnist", method=m, matmul=mm).apply)(variables, z)[0]
               for m, mm in [("dilated", False), ("col2im", False)]]
    for out in outputs[1:]:
        np.testing.assert_allclose(out, outputs[0], rtol=1e-4, atol=1e-4)


def _all_cuts():
    for factory in (cifar10cnn, lenet):
        model = factory()
        for cut in model.network.names[:-1]:
            yield model.with_cut(cut)


@pytest.mark.parametrize("upsample", ["resize", "subpixel", "transpose"])
def test_decoder_for_fits_every_cut_of_both_targets(upsample):
    for model in _all_cuts():
        feature_shape = model.feature_shape()
        decoder = decoder_for(feature_shape, model.input_shape, width=8, upsample=upsample)
        variables = jax.eval_shape(decoder.init, jax.random.key(0))
        out = jax.eval_shape(lambda v, z: decoder.apply(v, z)[0], variables,
                             jax.ShapeDtypeStruct((2, *feature_shape), jnp.float32))
        assert out.shape == (2, *model.input_shape), (model.cut, upsample)


def test_decoder_for_outputs():
    z = 100 * jax.random.normal(jax.random.key(0), (2, 4, 4, 16))
    for output in ("sigmoid", "linear"):
        decoder = decoder_for((4, 4, 16), (8, 8, 1), width=4, output=output)
        x = jax.jit(lambda v, z: decoder.apply(v, z)[0])(decoder.init(jax.random.key(1)), z)
        assert x.shape == (2, 8, 8, 1)
        inside = float(x.min()) >= 0 and float(x.max()) <= 1
        assert inside == (output == "sigmoid")


def test_decoder_for_bad_input():
    with pytest.raises(ValueError, match=r"expected feature_shape \(height, width, channels\) or \(features,\)"):
        decoder_for((4, 4), (28, 28, 1))
    with pytest.raises(ValueError, match="expected image_shape"):
        decoder_for((4, 4, 8), (28, 28))
    with pytest.raises(ValueError, match="expected upsample in"):
        decoder_for((4, 4, 8), (28, 28, 1), upsample="bicubic")
    with pytest.raises(ValueError, match="expected output in"):
        decoder_for((4, 4, 8), (28, 28, 1), output="tanh")
    with pytest.raises(ValueError, match="no He et al. decoder maps features"):
        decoder_for((4, 4, 8), (28, 28, 1), architecture="paper")
    with pytest.raises(ValueError, match="no He et al. decoder for dataset 'mnist', cut 'relu22'"):
        he2019_decoder("relu22", "mnist")
