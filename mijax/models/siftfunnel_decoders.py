"""SiftFunnel's per-block inversion decoders (Liu et al., arXiv 2501.00824; code `GOERAHG214/SiftFunnel`
`inversion_model_packages.py`, trained by `train_inversion.py`; siftfunnel.md "Attacks used for
evaluation").

`siftfunnel_decoder(model_name, block_idx)` returns the reference's inverse network for the
output of block `block_idx` (the reference's `feat[block_idx − 1]`, the cut `siftfunnel_cut(model_name,
block_idx)`) as a `Pure` mapping `[batch, *feature]` to `[batch, image_size, image_size, channels]`
with a sigmoid output in pixel space [0, 1], the space the reference trains in (MSE against the
unnormalised image): use it with `InverseNetworkConfig()` (no normalization). Layers are named
`deconv{i}` (transposed convolutions, PyTorch semantics: `ConvT k/s/p` = kernel, stride, padding),
`bn{i}`, `tanh{i}`, `res{i}` (residual blocks), `sigmoid`; BatchNorm is PyTorch's (momentum 0.1).
w is `width` (the reference's ndf = ngf = 64; it must equal the target's width since the inputs
depend on it); q = max(w // 4, 1) (16 in the reference).

| model            | block | feature (64×64 input) | decoder (reference)                                            |
|------------------|-------|-----------------------|----------------------------------------------------------------|
| classifier_4     | k=1-4 | w·2^(k−1) × 64/2^k    | `Inversion_4`: (k − 1) × [ConvT 4/2/1 (c → c/2) → BN → Tanh]    |
|                  |       |                       | → ConvT 4/2/1 (w → nc) → Sigmoid                               |
| pv4_classifier_4 | 1     | w × 32×32             | `pv4_Inversion_4`: ConvT 4/2/1 (w → nc) → Sigmoid               |
|                  | 2     | 12 × 16×16            | ConvT 3/1/1 (12→12) → BN → Tanh → TAIL                          |
|                  | 3     | 2w × 16×16 (`up`)     | ConvT 3/1/1 (2w→4w) → BN → Tanh → ConvT 3/1/1 (4w→12) → BN     |
|                  |       |                       | → Tanh → TAIL                                                  |
| rn18_pv4         | 1     | w × 64×64             | `inversion_resnet_pv4` [adapted]: HEAD(w) → RES(w) → OUT        |
|                  | 2     | 6 × 32×32             | HEAD(6) → UP(w) → RES(w) → OUT [adapted]                        |
|                  | 3     | 2w × 32×32 (`up`)     | HEAD(2w) → UP(w) → RES(w) → OUT [adapted]                       |
| vgg16_bn_pv4     | 3     | 4 × 16×16             | `inversion_vgg_pv4`: ConvT 3/1/1 (4→4) → BN → Tanh → ConvT 3/1/1 |
|                  |       |                       | (4→4) → Tanh → ConvT 3/1/1 (4→32) → ConvT 4/2/1 (32→2w)        |
|                  |       |                       | → ConvT 3/1/1 (2w→2w) → BN → Tanh → ConvT 4/2/1 (2w→w) → BN    |
|                  |       |                       | → Tanh → ConvT 3/1/1 (w→w) → BN → Tanh → ConvT 3/1/1 (w→nc)    |
|                  |       |                       | → Sigmoid                                                      |
|                  | 4     | 4w × 16×16 (`up`)     | `inversion_vgg`: ConvT 3/1/1 (4w→4w) → BN → Tanh → ConvT 4/2/1 |
|                  |       |                       | (4w→2w) → BN → Tanh → ConvT 3/1/1 (2w→2w) → BN → Tanh          |
|                  |       |                       | → ConvT 4/2/1 (2w→w) → BN → Tanh → ConvT 3/1/1 (w→nc) → Sigmoid |

- TAIL = ConvT 3/1/1 (12→12) → ConvT 3/1/1 (12→12) → Tanh → ConvT 3/1/1 (12→12) → ConvT 3/1/1
  (12→q) → ConvT 4/2/1 (q→w) → ConvT 4/2/1 (w→nc) → Sigmoid.
- Fixed at every width: 12, 6 and 4 (the funnels' outputs) and the VGG decoder's 32 (its funnel's
  hidden width); the reference's 256, 128 and 64 are 4w, 2w and w here, its 16 is q.
- HEAD(C) = ConvT 3/1/1 (C→q) → BN → Tanh → ConvT 3/1/1 (q→q) → ConvT 3/1/1 (q→q) → Tanh → ConvT
  3/1/1 (q→q) → ConvT 3/1/1 (q→w); RES(w) = `InversionResidualBlock_pv4(w, w)`: [ConvT 3/1/1 (no
  bias) → BN → Tanh → ConvT 3/1/1 (no bias) → BN] + identity, no activation after the sum;
  UP(w) = `InversionResidualBlock(w, w, stride 2, kernel 4)`: [ConvT 4/2/1 (no bias) → BN → Tanh →
  ConvT 3/1/1 (no bias) → BN] + [ConvT 2/2/0 (no bias) → BN]; OUT = ConvT 3/1/1 (w→nc) → Sigmoid.

Where the reference is incomplete or does not fit its own models:
- `Inversion_4`'s and `pv4_Inversion_4`'s block 5 (from the class vector) cannot be reached: the
  classifiers' feature lists end at block 4 (Classifier_4) or give block4's 512×4×4 map there
  (pv4_classifier_4); `pv4_Inversion_4` has no block 4 decoder. Not provided.
- [adapted] `inversion_resnet_pv4` (what `train_inversion.py` trains against `rn18_pv4`) defines a
  decoder only for block_idx ≤ 3 and its HEAD takes 2 channels at full resolution (2×64×64, the
  summary shape in `train_inversion.py`), which matches no tap of the shipped `rn18_pv4` (64×64×64,
  6×32×32, 128×32×32) — apparently an earlier, 2-channel stride-1 funnel. Here HEAD takes the tap's
  channels, and the two 32×32 taps get one UP block, the reference's own upsampling residual block
  (from `InversionResNet`, its decoder of the unprotected ResNet-18's 32×32 taps), before RES. The
  reference's unused `decoder1` and `deconv_layers1/2` are not built.
- `inversion_vgg_pv4` ignores block_idx and takes 4 channels: the funnel output, block 3. Pairing
  `inversion_vgg` (256 channels at 16×16, 4× upsampling) with block 4 is by shape [unverified: the
  code does not say which tap it was used on].
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx

from mijax.models.decoders import ConvTranspose2d
from mijax.models.funnel import FUNNEL_CHANNELS
from mijax.models.funnel_variants import (
    RN18_FUNNEL_CHANNELS,
    RN18_PV4_TAPS,
    VGG16_BN_PV4_TAPS,
    VGG_FUNNEL_CHANNELS,
)
from mijax.nn import BatchNorm, Layer, Pure, Sequential, pure

#: `siftfunnel_cut(model, block_idx)` reads these: the layer of the reference's `feat[block_idx − 1]`.
SIFTFUNNEL_TAPS = {
    "classifier_4": ("block1", "block2", "block3", "block4"),
    "pv4_classifier_4": ("block1", "funnel", "up", "block3", "block4"),
    "rn18_pv4": RN18_PV4_TAPS,
    "vgg16_bn_pv4": VGG16_BN_PV4_TAPS,
}

#: The blocks `siftfunnel_decoder` has a decoder for.
SIFTFUNNEL_DECODER_BLOCKS = {
    "classifier_4": (1, 2, 3, 4),
    "pv4_classifier_4": (1, 2, 3),
    "rn18_pv4": (1, 2, 3),
    "vgg16_bn_pv4": (3, 4),
}


def siftfunnel_cut(model_name: str, block_idx: int) -> str:
    """The mijax cut (layer name) of the reference's `feat[block_idx − 1]` for a SiftFunnel model.

    Raises:
        ValueError: for an unknown model name or a block_idx out of the reference's range.

    Example:
        >>> siftfunnel_cut("vgg16_bn_pv4", 3)     # "funnel"
    """
    if model_name not in SIFTFUNNEL_TAPS:
        raise ValueError(f"expected model_name in {tuple(SIFTFUNNEL_TAPS)}, got {model_name!r}")
    taps = SIFTFUNNEL_TAPS[model_name]
    if not isinstance(block_idx, int) or not 1 <= block_idx <= len(taps):
        raise ValueError(f"expected block_idx in [1, {len(taps)}] for {model_name}, got {block_idx!r}")
    return taps[block_idx - 1]


# --- layer specifications ----------------------------------------------------------------------------


class _T(NamedTuple):
    """ConvTranspose2d(cin → cout, kernel k, stride s, padding p), with bias."""

    cin: int
    cout: int
    k: int = 3
    s: int = 1
    p: int = 1


class _BN(NamedTuple):
    channels: int


class _Res(NamedTuple):
    """An inversion residual block at `channels`: stride 1 (`InversionResidualBlock_pv4`, identity
    shortcut) or stride 2 (`InversionResidualBlock` with kernel 4: ConvT 2/2/0 + BN shortcut)."""

    channels: int
    stride: int = 1


_TANH, _SIGMOID = "tanh", "sigmoid"


def _up(cin: int, cout: int) -> _T:
    return _T(cin, cout, 4, 2, 1)


class InversionResidualBlock(nnx.Module):
    """[ConvT k/s/1 (no bias) → BN → Tanh → ConvT 3/1/1 (no bias) → BN] + shortcut, no activation
    after the sum; the shortcut is the identity at stride 1, else ConvT 2/2/0 (no bias) → BN (k = 4)."""

    def __init__(self, channels: int, stride: int, *, method: str = "auto", rngs: nnx.Rngs):
        k = 4 if stride == 2 else 3
        convt = lambda k, s, p: ConvTranspose2d(channels, channels, k, stride=s, padding=p, use_bias=False,
                                                method=method, rngs=rngs)
        self.conv_a, self.bn_a = convt(k, stride, 1), BatchNorm(channels, rngs=rngs)
        self.conv_b, self.bn_b = convt(3, 1, 1), BatchNorm(channels, rngs=rngs)
        self.project = stride != 1
        if self.project:
            self.conv_s, self.bn_s = convt(2, stride, 0), BatchNorm(channels, rngs=rngs)

    def __call__(self, x, *, train=False, key=None):
        y = jax.nn.tanh(self.bn_a(self.conv_a(x), train=train))
        y = self.bn_b(self.conv_b(y), train=train)
        return y + (self.bn_s(self.conv_s(x), train=train) if self.project else x)


def _build(spec: list, method: str) -> Pure:
    layers, counts = [], {}

    def name(kind: str) -> str:
        counts[kind] = counts.get(kind, 0) + 1
        return f"{kind}{counts[kind]}"

    for item in spec:
        if isinstance(item, _T):
            layers.append(Layer(name("deconv"), pure(lambda rngs, t=item: ConvTranspose2d(
                t.cin, t.cout, t.k, stride=t.s, padding=t.p, method=method, rngs=rngs))))
        elif isinstance(item, _BN):
            layers.append(Layer(name("bn"), pure(lambda rngs, c=item.channels: BatchNorm(c, rngs=rngs))))
        elif isinstance(item, _Res):
            layers.append(Layer(name("res"), pure(lambda rngs, r=item: InversionResidualBlock(
                r.channels, r.stride, method=method, rngs=rngs))))
        elif item == _TANH:
            layers.append(Layer(name("tanh"), jax.nn.tanh))
        else:
            layers.append(Layer(_SIGMOID, jax.nn.sigmoid))
    return Sequential(tuple(layers)).as_pure()


def _spec(model_name: str, block_idx: int, w: int, nc: int) -> list:
    q, f = max(w // 4, 1), FUNNEL_CHANNELS
    if model_name == "classifier_4":  # Inversion_4._create_decoder
        spec, c = [], w * 2 ** (block_idx - 1)
        for _ in range(block_idx - 1):
            spec += [_up(c, c // 2), _BN(c // 2), _TANH]
            c //= 2
        return spec + [_up(c, nc), _SIGMOID]
    if model_name == "pv4_classifier_4":
        tail = [_T(f, f), _T(f, f), _TANH, _T(f, f), _T(f, q), _up(q, w), _up(w, nc), _SIGMOID]
        return {1: lambda: [_up(w, nc), _SIGMOID],
                2: lambda: [_T(f, f), _BN(f), _TANH, *tail],
                3: lambda: [_T(2 * w, 4 * w), _BN(4 * w), _TANH, _T(4 * w, f), _BN(f), _TANH, *tail]}[block_idx]()
    if model_name == "rn18_pv4":
        cin = {1: w, 2: RN18_FUNNEL_CHANNELS, 3: 2 * w}[block_idx]
        head = [_T(cin, q), _BN(q), _TANH, _T(q, q), _T(q, q), _TANH, _T(q, q), _T(q, w)]
        return [*head, *([_Res(w, 2)] if block_idx > 1 else []), _Res(w), _T(w, nc), _SIGMOID]
    # vgg16_bn_pv4
    v = VGG_FUNNEL_CHANNELS
    if block_idx == 3:  # inversion_vgg_pv4: decoderx, then decoder
        return [_T(v, v), _BN(v), _TANH, _T(v, v), _TANH, _T(v, 32), _up(32, 2 * w),
                _T(2 * w, 2 * w), _BN(2 * w), _TANH, _up(2 * w, w), _BN(w), _TANH, _T(w, w), _BN(w), _TANH,
                _T(w, nc), _SIGMOID]
    return [_T(4 * w, 4 * w), _BN(4 * w), _TANH, _up(4 * w, 2 * w), _BN(2 * w), _TANH,  # inversion_vgg
            _T(2 * w, 2 * w), _BN(2 * w), _TANH, _up(2 * w, w), _BN(w), _TANH, _T(w, nc), _SIGMOID]


def siftfunnel_decoder(model_name: str, block_idx: int, *, width: int = 64, channels: int = 3,
                       image_size: int = 64, method: str = "auto") -> Pure:
    """The reference's inverse network for block `block_idx` of a SiftFunnel model (module docstring).

    Args:
        model_name: "classifier_4", "pv4_classifier_4", "rn18_pv4" or "vgg16_bn_pv4" (the mijax
            factory of the target).
        block_idx: the reference's block index (`SIFTFUNNEL_DECODER_BLOCKS[model_name]`); the
            decoder's input is the output of the cut `siftfunnel_cut(model_name, block_idx)`.
        width: the target's `width` (ndf; 64 in the reference); the decoder's widths scale with it.
        channels: image channels (nc), 1 or 3.
        image_size: the target's input size (a multiple of 16 for the two CNNs, of 32 for the
            ResNet and VGG variants); the decoders are fully convolutional and map the tap's
            size (`image_size` / 2, 4, 8 or 16) to `image_size`.
        method: how the transposed convolutions are computed (`mijax.models.decoders.conv_transpose`).

    Returns:
        A `Pure` mapping `[batch, *feature]` to `[batch, image_size, image_size, channels]` in (0, 1).

    Raises:
        ValueError: for an unknown model, a block without a decoder, or bad width, channels or
            image_size.

    Example:
        >>> model = mijax.models.rn18_pv4(width=8, image_size=32)
        >>> decoder = siftfunnel_decoder("rn18_pv4", 2, width=8, image_size=32)
        >>> variables = decoder.init(jax.random.key(0))
        >>> x_hat, _ = decoder.apply(variables, z)      # z: [batch, 16, 16, 6] -> [batch, 32, 32, 3]
    """
    if model_name not in SIFTFUNNEL_DECODER_BLOCKS:
        raise ValueError(f"expected model_name in {tuple(SIFTFUNNEL_DECODER_BLOCKS)}, got {model_name!r}")
    blocks = SIFTFUNNEL_DECODER_BLOCKS[model_name]
    if block_idx not in blocks:
        raise ValueError(f"expected block_idx in {blocks} for {model_name} (the reference has no decoder "
                         f"for the others), got {block_idx!r}")
    if width < 1:
        raise ValueError(f"expected width >= 1, got {width}")
    if channels not in (1, 3):
        raise ValueError(f"expected channels 1 or 3, got {channels}")
    multiple = 16 if model_name.endswith("classifier_4") else 32
    if image_size < multiple or image_size % multiple:
        raise ValueError(f"expected image_size to be a positive multiple of {multiple} for {model_name}, "
                         f"got {image_size}")
    return _build(_spec(model_name, block_idx, width, channels), method)
