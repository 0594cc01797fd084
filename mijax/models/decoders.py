"""Decoders (inverse networks) that map edge features `z` back to images.

Two families:

- `he2019_decoder(cut, dataset)` — the transposed-convolution decoders of He et al.'s code
  (`zechenghe/Inverse_Collaborative_Inference`, `net.py`) for their split points, PyTorch-initialised,
  with a linear output in the edge's *normalised* input space, as the authors train them (MSE against
  normalised images; de-normalise and clip for metrics — `InverseNetworkConfig(normalization=...)`).
- `decoder_for(feature_shape, image_shape)` — a factory that sizes itself from the shapes and fits
  every cut of every target: upsample stages (nearest-neighbour resize + 3×3 conv, sub-pixel conv, or
  transposed conv) on spatial features, a Linear to a small map first on flat (fc) features, and by
  default a sigmoid output in pixel space [0, 1].

Transposed convolutions (`ConvTranspose2d`, PyTorch semantics) compute the *same function* by one of
three methods (`conv_transpose`; tested equal to a NumPy scatter loop):
- "dilated": XLA's native form, a stride-1 conv over the zero-dilated input (what
  `jax.lax.conv_transpose` does); best on GPU/TPU, ~10× slower than PyTorch on XLA-CPU;
- "subpixel": one stride-1 conv with ⌈k/s⌉² taps to s²·out channels, then a pixel shuffle;
- "col2im" (the CPU default): one matmul `x·W` to k²·out channels per input pixel (exactly the MACs
  of the transposed conv, no inserted zeros), shifted adds per output phase and a pixel shuffle.
  On CPU this trains He et al.'s ReLU22 decoder ~2× faster than PyTorch (`benchmarks/inverse_network.py`).
Last layers with few output channels (`ShiftAddConv2d`) use the same trick for ordinary convs.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mijax.nn import Conv2d, Layer, Linear, Pure, Sequential, conv2d, conv_as_matmul, im2col, pure

METHODS = ("auto", "col2im", "subpixel", "dilated")
UPSAMPLE = ("resize", "subpixel", "transpose")
OUTPUTS = ("sigmoid", "linear")


# --- transposed convolution --------------------------------------------------------------------------


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"expected method in {METHODS}, got {method!r}")
    if method == "auto":  # col2im on CPU (XLA's dilated form is ~10x slower there), native elsewhere
        return "col2im" if jax.default_backend() == "cpu" else "dilated"
    return method


def conv_transpose(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding: int = 0,
                   output_padding: int = 0, method: str = "auto", matmul: bool = False) -> jax.Array:
    """A 2-D transposed convolution with PyTorch's `ConvTranspose2d` semantics (no bias), NHWC.

    Output size per spatial axis: `(n − 1)·stride − 2·padding + k + output_padding`, i.e.
    `y[o] = Σ_{i, a : i·stride + a = o + padding} x[i] · kernel[a]` (the gradient of a strided conv).

    Args:
        x: `[batch, height, width, in_channels]`.
        kernel: `[k, k, in_channels, out_channels]`, i.e. PyTorch's weight `[in, out, k, k]`
            transposed by `(2, 3, 0, 1)` (not flipped).
        stride, padding, output_padding: as in PyTorch (`output_padding < stride`).
        method: "dilated" (`lax.conv_general_dilated` with `lhs_dilation`, what XLA and
            `jax.lax.conv_transpose` do), "subpixel" (exact sub-pixel decomposition: one stride-1
            conv to `stride²·out` channels and a pixel shuffle), or "auto" (sub-pixel on CPU).
        matmul: compute the stride-1 conv of the sub-pixel form as an im2col matmul.

    Returns:
        `[batch, out_height, out_width, out_channels]`.

    Raises:
        ValueError: on a non-square or mismatched kernel, or invalid stride/padding settings.
    """
    k = kernel.shape[0]
    if kernel.ndim != 4 or kernel.shape[1] != k or kernel.shape[2] != x.shape[-1]:
        raise ValueError(f"expected kernel of shape [k, k, {x.shape[-1]}, out], got {kernel.shape}")
    if stride < 1 or padding < 0 or not 0 <= output_padding < max(stride, 1):
        raise ValueError(f"expected stride >= 1, padding >= 0, 0 <= output_padding < stride, got "
                         f"stride={stride}, padding={padding}, output_padding={output_padding}")
    method = _check_method(method)
    if method == "dilated":
        flipped = kernel[::-1, ::-1]
        pad = [(k - 1 - padding, k - 1 - padding + output_padding)] * 2
        return jax.lax.conv_general_dilated(x, flipped, (1, 1), pad, lhs_dilation=(stride, stride),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if method == "col2im":
        return _col2im(x, kernel, stride, padding, output_padding)
    return _subpixel(x, kernel, stride, padding, output_padding, matmul)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _col2im(x, kernel, s, p, op):
    # One matmul gives every tap's contribution, cols[i, a] = x[i]·W[a] (exactly k²·in·out MACs per
    # input pixel, no zeros); output phase r collects cols[q − j, j·s + r] by shifted adds (pads), and
    # a pixel shuffle interleaves the phases.
    k, _, cin, cout = kernel.shape
    b, n_h, n_w, _ = x.shape
    j = -(-k // s)
    cols = (x.reshape(-1, cin) @ kernel.transpose(2, 0, 1, 3).reshape(cin, k * k * cout))
    cols = cols.reshape(b, n_h, n_w, k, k, cout)
    zeros = jnp.zeros((b, n_h + j - 1, n_w + j - 1, cout), x.dtype)
    phases = []
    for r_h in range(s):
        for r_w in range(s):
            y = zeros
            for j_h in range(j):
                for j_w in range(j):
                    a, c = j_h * s + r_h, j_w * s + r_w
                    if a < k and c < k:
                        y = y + jnp.pad(cols[:, :, :, a, c], ((0, 0), (j_h, j - 1 - j_h), (j_w, j - 1 - j_w), (0, 0)))
            phases.append(y)
    q_h, q_w = n_h + j - 1, n_w + j - 1
    y = jnp.stack(phases, axis=3).reshape(b, q_h, q_w, s, s, cout)
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(b, q_h * s, q_w * s, cout)
    len_h, len_w = (n_h - 1) * s - 2 * p + k + op, (n_w - 1) * s - 2 * p + k + op
    y = jnp.pad(y, ((0, 0), (0, max(0, p + len_h - q_h * s)), (0, max(0, p + len_w - q_w * s)), (0, 0)))
    return y[:, p:p + len_h, p:p + len_w]


def _col2im_fwd(x, kernel, s, p, op):
    return _col2im(x, kernel, s, p, op), (x, kernel)


def _col2im_bwd(s, p, op, residuals, dy):
    # The adjoint of a transposed conv is the strided conv: cols'[i, a] = dy[i·s + a − p], the im2col
    # of the padded gradient (one write), then two matmuls. Autodiff of the forward
    # instead pads every tap's slice back to the full `cols` shape, about 2× slower on XLA-CPU.
    x, kernel = residuals
    k, _, cin, cout = kernel.shape
    b, n_h, n_w, _ = x.shape
    extent_h, extent_w = (n_h - 1) * s + k, (n_w - 1) * s + k
    dy = jnp.pad(dy, ((0, 0), (p, max(0, extent_h - p - dy.shape[1])),
                      (p, max(0, extent_w - p - dy.shape[2])), (0, 0)))[:, :extent_h, :extent_w]
    cols = im2col(dy, k, k, stride=s).reshape(-1, k * k * cout)
    weights = kernel.transpose(2, 0, 1, 3).reshape(cin, k * k * cout)
    dx = (cols @ weights.T).reshape(x.shape)
    dweights = x.reshape(-1, cin).T @ cols
    return dx, dweights.reshape(cin, k, k, cout).transpose(1, 2, 0, 3)


_col2im.defvjp(_col2im_fwd, _col2im_bwd)


def _subpixel(x, kernel, s, p, op, matmul):
    # Output position t = q·s + r (phase r) receives x[q − j]·W[j·s + r] for j < J = ⌈k/s⌉, a stride-1
    # correlation of x with a J×J kernel per phase; the phases become channels, then a pixel shuffle.
    k, _, cin, cout = kernel.shape
    n_h, n_w = x.shape[1], x.shape[2]
    j = -(-k // s)
    w = jnp.pad(kernel, ((0, j * s - k), (0, j * s - k), (0, 0), (0, 0)))
    w = w.reshape(j, s, j, s, cin, cout)[::-1, :, ::-1]          # [m_h, r_h, m_w, r_w, in, out]
    w = w.transpose(0, 2, 4, 1, 3, 5).reshape(j, j, cin, s * s * cout)

    def window(n):  # the range of q needed for outputs [p, p + out_len), and the input slice for it
        out_len = (n - 1) * s - 2 * p + k + op
        q0, q1 = p // s, (p + out_len - 1) // s
        return out_len, q0, q1, (j - 1, max(0, q1 + 1 - n))

    len_h, q0_h, q1_h, pad_h = window(n_h)
    len_w, q0_w, q1_w, pad_w = window(n_w)
    xp = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))[:, q0_h:q1_h + j, q0_w:q1_w + j]
    y = (conv_as_matmul if matmul else conv2d)(xp, w)
    b, qh, qw, _ = y.shape
    y = y.reshape(b, qh, qw, s, s, cout).transpose(0, 1, 3, 2, 4, 5).reshape(b, qh * s, qw * s, cout)
    top, left = p - q0_h * s, p - q0_w * s
    return y[:, top:top + len_h, left:left + len_w]


class ShiftAddConv2d(Conv2d):
    """`mijax.nn.Conv2d` (same parameters, same initialisation, same function, stride 1) computed as
    one matmul to `k²·out` channels and k² shifted adds, i.e. the transposed conv of the flipped kernel
    by "col2im". XLA-CPU runs convolutions with few output channels (a decoder's last layer) slowly;
    this form is about 10× faster there, forward and backward.
    """

    def __call__(self, x, *, train=False, key=None):
        if self.stride != 1 or self.padding >= self.conv.kernel.shape[0]:
            return super().__call__(x)
        kernel = self.conv.kernel[...]
        k = kernel.shape[0]
        y = conv_transpose(x, kernel[::-1, ::-1], padding=k - 1 - self.padding, method="col2im")
        return y if self.conv.bias is None else y + self.conv.bias[...]


class ConvTranspose2d(nnx.Module):
    """`torch.nn.ConvTranspose2d` (square kernel), NHWC, with PyTorch's default initialisation.

    PyTorch computes the fan-in of a transposed conv from its weight's second axis, so kernel and
    bias are both drawn from U(−1/√(out·k²), 1/√(out·k²)). `method` and `matmul` choose how the
    same function is computed (see `conv_transpose`); the kernel is `[k, k, in, out]`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int = 0, output_padding: int = 0, use_bias: bool = True,
                 method: str = "auto", matmul: bool = False, rngs: nnx.Rngs):
        _check_method(method)
        bound = 1.0 / math.sqrt(out_channels * kernel_size * kernel_size)
        shape = (kernel_size, kernel_size, in_channels, out_channels)
        self.kernel = nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound))
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (out_channels,), jnp.float32, -bound, bound)) \
            if use_bias else None
        self.stride, self.padding, self.output_padding = stride, padding, output_padding
        self.method, self.matmul = method, matmul

    def __call__(self, x, *, train=False, key=None):
        y = conv_transpose(x, self.kernel[...], stride=self.stride, padding=self.padding,
                           output_padding=self.output_padding, method=self.method, matmul=self.matmul)
        return y if self.bias is None else y + self.bias[...]


# --- He et al.'s decoders ----------------------------------------------------------------------------


def _convt(name, cin, cout, k, *, stride=1, padding=0, output_padding=0, method="auto", matmul=False):
    return Layer(name, pure(lambda rngs: ConvTranspose2d(
        cin, cout, k, stride=stride, padding=padding, output_padding=output_padding, method=method,
        matmul=matmul, rngs=rngs)))


def _conv(name, cin, cout, k, padding, matmul=False, shift_add=False):
    cls = ShiftAddConv2d if shift_add else Conv2d
    return Layer(name, pure(lambda rngs: cls(cin, cout, k, padding=padding, matmul=matmul, rngs=rngs)))


HE2019_DECODERS = {
    # (dataset, cut): (feature shape, image shape) — the split points of ACSAC 2019 Table 4
    ("cifar10", "conv11"): ((32, 32, 64), (32, 32, 3)),
    ("cifar10", "relu22"): ((16, 16, 128), (32, 32, 3)),
    ("cifar10", "relu32"): ((8, 8, 128), (32, 32, 3)),
    ("mnist", "conv1"): ((24, 24, 8), (28, 28, 1)),
    ("mnist", "relu2"): ((8, 8, 16), (28, 28, 1)),
}


def he2019_decoder(cut: str, dataset: str, *, method: str = "auto", matmul: bool = False) -> Pure:
    """He et al.'s inverse network for a split point (ACSAC 2019 §4.2; `net.py` of the authors' code).

    | dataset | cut    | feature   | layers (ConvT = transposed conv; s2 = stride 2, p1 = padding 1, ...) |
    |---------|--------|-----------|-----------------------------------------------------------------------|
    | cifar10 | conv11 | 32×32×64  | ConvT(64→3, k3, p1)                                                   |
    | cifar10 | relu22 | 16×16×128 | ConvT(128→64, k3, s2, p1, op1) → ReLU → ConvT(64→3, k3, p1)           |
    | cifar10 | relu32 | 8×8×128   | ConvT(128→128, k3, s2, p1, op1) → ReLU → ConvT(128→64, k3, s2, p1,    |
    |         |        |           | op1) → ReLU → ConvT(64→3, k3, p1)                                     |
    | mnist   | conv1  | 24×24×8   | Conv(8→1, k5, p4) (the same function class as one ConvT(8→1, k5))     |
    | mnist   | relu2  | 8×8×16    | ConvT(16→8, k5) → ReLU → ConvT(8→1, k5, s2, op1)                      |

    The output is linear, in the edge's normalised input space, as the authors train it: use it with
    `InverseNetworkConfig(normalization=model.normalization)`, which trains with MSE against
    normalised images and de-normalises and clips the reconstruction.

    Args:
        cut: "conv11", "relu22", "relu32" (cifar10) or "conv1", "relu2" (mnist).
        dataset: "cifar10" (CIFAR10CNN) or "mnist" (LeNet).
        method, matmul: how the transposed convolutions are computed (`conv_transpose`); the
            function and the parameters are the same for every choice.

    Returns:
        A `Pure` mapping `[batch, *feature]` to `[batch, *image]`; its layers are named as in the code.

    Raises:
        ValueError: on a split point the paper has no decoder for.

    Example:
        >>> decoder = he2019_decoder("relu22", "cifar10")
        >>> variables = decoder.init(jax.random.key(0))
        >>> x, _ = decoder.apply(variables, z)     # z: [batch, 16, 16, 128] -> x: [batch, 32, 32, 3]
    """
    if (dataset, cut) not in HE2019_DECODERS:
        raise ValueError(f"no He et al. decoder for dataset {dataset!r}, cut {cut!r}; valid: "
                         f"{', '.join(f'{d}/{c}' for d, c in HE2019_DECODERS)}")
    kw = dict(method=method, matmul=matmul)
    up = dict(stride=2, padding=1, output_padding=1)
    layers = {
        ("cifar10", "conv11"): [_convt("deconv11", 64, 3, 3, padding=1, **kw)],
        ("cifar10", "relu22"): [
            _convt("deconv11", 128, 64, 3, **up, **kw), Layer("relu11", jax.nn.relu),
            _convt("deconv21", 64, 3, 3, padding=1, **kw)],
        ("cifar10", "relu32"): [
            _convt("deconv11", 128, 128, 3, **up, **kw), Layer("relu11", jax.nn.relu),
            _convt("deconv21", 128, 64, 3, **up, **kw), Layer("relu21", jax.nn.relu),
            _convt("deconv31", 64, 3, 3, padding=1, **kw)],
        ("mnist", "conv1"): [_conv("conv1", 8, 1, 5, 4, matmul, _check_method(method) == "col2im")],
        ("mnist", "relu2"): [
            _convt("deconv1", 16, 8, 5, **kw), Layer("relu1", jax.nn.relu),
            _convt("deconv2", 8, 1, 5, stride=2, output_padding=1, **kw)],
    }[dataset, cut]
    return Sequential(tuple(layers)).as_pure()


# --- the shape-driven factory ------------------------------------------------------------------------


def _upsample2(x):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _pixel_shuffle(x, r=2):
    b, h, w, c = x.shape
    return x.reshape(b, h, w, r, r, c // (r * r)).transpose(0, 1, 3, 2, 4, 5).reshape(b, h * r, w * r, c // (r * r))


def _stages(side: int, target: int) -> int:
    """×2 upsampling stages that bring `side` closest to `target` (a final resize fixes the rest)."""
    return max(0, round(math.log2(target / side)))


def decoder_for(feature_shape: Sequence[int], image_shape: Sequence[int], *, width: int = 64,
                upsample: str = "resize", output: str = "sigmoid", architecture: str = "generic",
                method: str = "auto", matmul: bool = False) -> Pure:
    """A decoder sized from the feature and image shapes; works for every cut of every target.

    Generic architecture (`architecture="generic"`):
    - spatial features `[h, w, c]`: `n = round(log2(H/h))` upsampling stages (×2 each), each
      "resize" (nearest-neighbour ×2 + 3×3 conv), "subpixel" (3×3 conv to 4·width + pixel shuffle)
      or "transpose" (ConvT k4, s2, p1), followed by ReLU; with no stage, one 3×3 conv + ReLU;
    - flat features `[d]` (fc cuts): Linear(d → width·h0·w0) + ReLU reshaped to an `h0×w0` map with
      `h0 = ⌈H/2ⁿ⌉ ≤ 4`, then `n` stages;
    - a bilinear resize to exactly `H×W` if the stages do not land on it, a 3×3 conv to the image's
      channels, and the `output` activation.

    `architecture="paper"` returns `he2019_decoder` for the split point with these shapes.

    Args:
        feature_shape: shape of one `z`: `(height, width, channels)` or `(features,)`.
        image_shape: `(height, width, channels)` of the images.
        width: channels of the hidden layers.
        upsample: "resize" (default; fast everywhere), "subpixel" or "transpose".
        output: "sigmoid" (default; pixels in (0, 1), for `InverseNetworkConfig()` in pixel space) or
            "linear" (for training in normalised space, `InverseNetworkConfig(normalization=...)`).
        architecture: "generic" or "paper".
        method, matmul: transposed-conv method (`conv_transpose`) and im2col convs (`Conv2d`).

    Returns:
        A `Pure` mapping `[batch, *feature_shape]` to `[batch, *image_shape]`.

    Raises:
        ValueError: on shapes of the wrong rank or non-positive sizes, an unknown option, or (paper)
            a pair of shapes the paper has no decoder for.

    Example:
        >>> model = mijax.models.cifar10cnn(cut="pool2")
        >>> decoder = decoder_for(model.feature_shape(), model.input_shape, width=32)
    """
    feature_shape, image_shape = tuple(int(d) for d in feature_shape), tuple(int(d) for d in image_shape)
    if len(feature_shape) not in (1, 3) or min(feature_shape, default=0) < 1:
        raise ValueError(f"expected feature_shape (height, width, channels) or (features,) of positive "
                         f"sizes, got {feature_shape}")
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"expected image_shape (height, width, channels), got {image_shape}")
    for name, value, valid in (("upsample", upsample, UPSAMPLE), ("output", output, OUTPUTS),
                               ("architecture", architecture, ("generic", "paper"))):
        if value not in valid:
            raise ValueError(f"expected {name} in {valid}, got {value!r}")
    _check_method(method)
    if architecture == "paper":
        for (dataset, cut), shapes in HE2019_DECODERS.items():
            if shapes == (feature_shape, image_shape):
                return he2019_decoder(cut, dataset, method=method, matmul=matmul)
        raise ValueError(f"no He et al. decoder maps features {feature_shape} to images {image_shape}; "
                         f"paper shapes: {sorted(set(HE2019_DECODERS.values()))}")
    if width < 1:
        raise ValueError(f"expected width >= 1, got {width}")

    height, wide, channels = image_shape
    layers: list[Layer] = []
    if len(feature_shape) == 1:
        n = max(0, math.ceil(math.log2(max(height, wide) / 4)))
        h0, w0 = -(-height // 2 ** n), -(-wide // 2 ** n)
        d = feature_shape[0]
        layers += [Layer("fc", pure(lambda rngs: Linear(d, width * h0 * w0, rngs=rngs))),
                   Layer("fc_relu", jax.nn.relu),
                   Layer("reshape", lambda x: x.reshape(x.shape[0], h0, w0, width))]
        side, cin = (h0, w0), width
    else:
        h, w, cin = feature_shape
        n = _stages(min(h, w), min(height, wide))
        side = (h, w)
    if n == 0:
        layers += [_conv("conv0", cin, width, 3, 1, matmul), Layer("relu0", jax.nn.relu)]
        cin = width
    for i in range(1, n + 1):
        if upsample == "resize":
            layers += [Layer(f"up{i}", _upsample2), _conv(f"conv{i}", cin, width, 3, 1, matmul)]
        elif upsample == "subpixel":
            layers += [_conv(f"conv{i}", cin, 4 * width, 3, 1, matmul), Layer(f"shuffle{i}", _pixel_shuffle)]
        else:
            layers += [_convt(f"deconv{i}", cin, width, 4, stride=2, padding=1, method=method, matmul=matmul)]
        layers.append(Layer(f"relu{i}", jax.nn.relu))
        cin = width
    side = (side[0] * 2 ** n, side[1] * 2 ** n)
    if side != (height, wide):
        layers.append(Layer("resize", lambda x: jax.image.resize(
            x, (x.shape[0], height, wide, x.shape[-1]), "bilinear")))
    layers.append(_conv("out", cin, channels, 3, 1, matmul, _check_method(method) == "col2im"))
    if output == "sigmoid":
        layers.append(Layer("sigmoid", jax.nn.sigmoid))
    return Sequential(tuple(layers)).as_pure()
