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
