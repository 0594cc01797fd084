"""Attacker-aware training against a simulated inverse network (ResSFL; DeepObfuscator).

ResSFL (Li et al., CVPR 2022, `zlijingtao/ResSFL`; the CEM code's `gan_adv`, cem.md §10): a decoder
D_φ learns to invert the edge, trained on detached clean features; the edge is trained with
CE + α·max(0, SSIM(D_φ(z), x) − t), i.e. to make the current decoder's reconstructions bad.
DeepObfuscator (Li et al., IoTDI 2021): the same alternation with the encoder term −γ·‖D_φ(z) − x‖².

Both players advance once per training step: the encoder through the train step's gradient (φ is
a constant in its loss) and the decoder in `Defense.update`, a pure optax step inside the jitted
train step, whose parameters and optimiser state live in the defense state (so a sweep stacks one
decoder per model).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mijax import metrics
from mijax.defenses.base import Defense, LossInputs, check_scalar, require_spec
from mijax.nn import Conv2d, Pure, pure
from mijax.steps import descend

_OBJECTIVES = ("ssim", "mse")
_FEATURES = ("clean", "transmitted")


class _UpsamplingDecoder(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, channels: int, upsamplings: int, *,
                 rngs: nnx.Rngs):
        self.upsamplings = upsamplings
        self.convs = nnx.List([Conv2d(in_channels, channels, 3, padding=1, rngs=rngs)]
                              + [Conv2d(channels, channels, 3, padding=1, rngs=rngs)
                                 for _ in range(upsamplings)])
        self.out = Conv2d(channels, out_channels, 3, padding=1, rngs=rngs)

    def __call__(self, z, *, train=False, key=None):
        h = jax.nn.relu(self.convs[0](z))
        for conv in self.convs[1:]:
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest ×2
            h = jax.nn.relu(conv(h))
        return jax.nn.sigmoid(self.out(h))


def upsampling_decoder(feature_shape: tuple[int, ...], image_shape: tuple[int, int, int], *,
                       channels: int = 64) -> Pure:
    """A small inverse network from features `[h, w, c]` to images `[H, W, C]` in (0, 1).

    Conv3×3(c→channels)+ReLU, then log2(H/h) × [nearest upsampling ×2 → Conv3×3+ReLU], then
    Conv3×3(→C) → sigmoid. Upsampling + convolution rather than transposed convolutions, which
    are slow under XLA on CPU (DESIGN.md).

    Args:
        feature_shape: `(h, w, c)` of one feature map (`model.feature_shape()`).
        image_shape: `(H, W, C)` of one image (`model.input_shape`); H/h = W/w a power of two.
        channels: hidden width.

    Raises:
        ValueError: for flat features or a size ratio that is not a power of two.
    """
    if len(feature_shape) != 3 or len(image_shape) != 3:
        raise ValueError(f"expected feature_shape (h, w, c) and image_shape (H, W, C), got "
                         f"{tuple(feature_shape)} and {tuple(image_shape)}; pass your own decoder for "
                         "flat features")
    (h, w, c), (height, width, out) = feature_shape, image_shape
    ratio = height // h
    if height % h or ratio & (ratio - 1) or width != w * ratio:
        raise ValueError(f"expected the image size {(height, width)} to be the feature size {(h, w)} "
                         "times a common power of two")
    upsamplings = int(math.log2(ratio))
    return pure(lambda rngs: _UpsamplingDecoder(c, out, channels, upsamplings, rngs=rngs))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"expected {name} to be one of {choices}, got {value!r}")


@functools.lru_cache(maxsize=None)
def _default_decoder(feature_shape, image_shape) -> Pure:
    return upsampling_decoder(feature_shape, image_shape)


def adversarial_decoder(*, alpha, key: jax.Array | None = None, decoder: Pure | None = None,
                        feature_shape: tuple[int, ...] | None = None,
                        image_shape: tuple[int, int, int] | None = None, objective: str = "ssim",
                        threshold=0.5, decoder_objective: str = "mse", learning_rate=1e-3,
                        optimizer: optax.GradientTransformation | None = None,
                        features: str = "clean", ssim_compat: str = "cem") -> Defense:
    """ResSFL's attacker-aware training with a simulated inverse network D_φ (cem.md §10).

    Encoder term (`loss`, φ held constant, the gradient reaches the edge through z only):
    - `objective="ssim"`: α·max(0, SSIM(D_φ(z), x) − t) with SSIM the batch mean (a scalar), or
      α·SSIM when t = 0 (ResSFL / the CEM code's `gan_adv`);
    - `objective="mse"`: −α·‖D_φ(z) − x‖²/d per example (DeepObfuscator's −γ·MSE; see `deep_obfuscator`).

    Decoder step (`update`, once per training step on the detached batch): one optimiser step on
    MSE(D_φ(z), x) (`decoder_objective="mse"`) or on −SSIM (`"ssim"`, which the CEM code uses after
    pretraining the decoder with MSE for 30 epochs; run `update` over batches with a frozen edge for
    that). Decoder BatchNorm layers run in train mode there and in eval mode in the encoder term.

    Reference settings (CEM code): α = 0.3 (`run_exp.sh`) or 1, t = 0.5 (0.6 for FaceScrub and
    TinyImageNet), Adam lr 1e-3 with MultiStep [60, 150, 240, 260] × 0.2 (pass `optimizer` for a
    schedule), decoder res_normN4C64 + sigmoid (pass it as `decoder`).

    Args:
        alpha: weight α >= 0 of the encoder term; traced when swept.
        key: initialises the decoder; None: the key `init(key, spec)` gets from the run.
        decoder: any `Pure` from features to images in [0, 1]; default `upsampling_decoder`
            sized from `feature_shape` and `image_shape`.
        feature_shape, image_shape: shapes of one z and one x for the default decoder; None: the
            spec's.
        objective: the encoder term, "ssim" or "mse".
        threshold: t in [0, 1] of the SSIM hinge; traced when swept.
        decoder_objective: what the decoder minimises, "mse" or "ssim" (−SSIM).
        learning_rate: the default Adam's learning rate (kept in the optimiser state: traced).
        optimizer: the decoder's optax transformation (default Adam).
        features: the decoder sees the "clean" z (ResSFL) or the "transmitted" z̃ (a noise-aware
            attacker).
        ssim_compat: SSIM mode of `mijax.metrics.ssim` ("cem" = pytorch-ssim, as the reference);
            images must be at least 11×11.

    Returns:
        A `Defense` with `init`, `loss` and `update`; its state holds α, t, the decoder's variables,
        its optimiser state and its last training loss (`decoder_loss`).

    Raises:
        ValueError: for negative α, t outside [0, 1], unknown options or missing shapes.

    Example:
        >>> model = mijax.models.digits_cnn(image_size=16)
        >>> defense = chain(gaussian_noise(sigma=0.1), adversarial_decoder(
        ...     alpha=0.3, key=jax.random.key(1), feature_shape=model.feature_shape(),
        ...     image_shape=model.input_shape))
    """
    _check_choice("objective", objective, _OBJECTIVES)
    _check_choice("decoder_objective", decoder_objective, _OBJECTIVES)
    _check_choice("features", features, _FEATURES)
    alpha = check_scalar("alpha", alpha)
    threshold = check_scalar("threshold", threshold, high=1.0)
    if decoder is None and None not in (feature_shape, image_shape):
        _default_decoder(tuple(feature_shape), tuple(image_shape))  # fail early on shapes it cannot decode

    def decoder_for(feature_shape, image_shape):
        return decoder if decoder is not None else _default_decoder(tuple(feature_shape), tuple(image_shape))

    if optimizer is None:
        learning_rate = check_scalar("learning_rate", learning_rate)
        optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)

    def _ssim(x_hat, x):
        return jnp.mean(metrics.ssim(x_hat, x, compat=ssim_compat))

    def _features(inputs: LossInputs):
        return inputs.z if features == "clean" else inputs.z_tilde

    def init(init_key=None, spec=None):
        shapes = (feature_shape, image_shape)
        if decoder is None and None in shapes:
            spec = require_spec("adversarial_decoder", spec)
            shapes = (feature_shape or spec.feature_shape, image_shape or spec.input_shape)
        if key is None and init_key is None:
            raise ValueError("expected a key: adversarial_decoder(key=...) or init(key, spec)")
        variables = decoder_for(*shapes).init(init_key if key is None else key)
        return {"alpha": alpha, "threshold": threshold, "decoder": variables,
                "opt_state": optimizer.init(variables["params"]), "decoder_loss": jnp.zeros(())}

    def loss(state, inputs: LossInputs):
        variables = jax.lax.stop_gradient(state["decoder"])
        z = _features(inputs)
        x_hat, _ = decoder_for(z.shape[1:], inputs.images.shape[1:]).apply(variables, z, train=False)
        if objective == "mse":
            return -state["alpha"] * jnp.mean((x_hat - inputs.images) ** 2, axis=tuple(range(1, x_hat.ndim)))
        similarity = _ssim(x_hat, inputs.images)
        t = state["threshold"]
        return state["alpha"] * jnp.where(t > 0, jax.nn.relu(similarity - t), similarity)

    def update(state, inputs: LossInputs, key):
        z = jax.lax.stop_gradient(_features(inputs))
        x = jax.lax.stop_gradient(inputs.images)

        def decoder_loss(params):
            x_hat, variables = decoder_for(z.shape[1:], x.shape[1:]).apply(
                {**state["decoder"], "params": params}, z, train=True, key=key)
            value = jnp.mean((x_hat - x) ** 2) if decoder_objective == "mse" else -_ssim(x_hat, x)
            return value, variables

        params, opt_state, value, variables = descend(decoder_loss, optimizer, state["decoder"]["params"],
                                                      state["opt_state"])
        variables = {**variables, "params": params}
        return {**state, "decoder": variables, "opt_state": opt_state, "decoder_loss": value}

    return Defense(init=init, loss=loss, update=update)


def deep_obfuscator(*, gamma, key: jax.Array | None = None, **kwargs) -> Defense:
    """DeepObfuscator's adversarial training (Li et al., IoTDI 2021): CE − γ·MSE(D_φ(z), x).

    `adversarial_decoder(alpha=gamma, objective="mse", decoder_objective="mse", ...)`; GLASS uses
    γ = 2. Other keyword arguments as `adversarial_decoder`.
    """
    return adversarial_decoder(alpha=gamma, key=key, objective="mse", decoder_objective="mse", **kwargs)
