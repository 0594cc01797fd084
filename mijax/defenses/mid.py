"""MID: a variational information bottleneck on the transmitted features (other_defenses.md).

Wang, Zhang & Jia, "Improving Robustness to Model Inversion Attacks via Mutual Information
Regularization", AAAI 2021 (arXiv 2009.05241), Eq. 7: the network predicts the mean μ and a scale
parameter s of a Gaussian code, samples it with the reparameterisation trick and adds
β·KL(q(z|x) ‖ N(0, I)) to the task loss, an upper bound on β·I(x; z). The form here is the one of the
SiftFunnel and CEM code bases: std = softplus(s − 5), a bottleneck of half the input size, sampling
at training **and at inference** (their `forward` always draws ε).

In mijax the bottleneck is a defense with `Trainable` parameters placed on the edge output z
(`[batch, ..., C]`): a dense map on the last (channel) axis gives (μ, s) with k channels, the sample
u = μ + std⊙ε is transmitted, and a dense up-projection k → C (the cloud's first layer, owned by the
defense so the cloud keeps its input shape) turns it back into a C-channel tensor. On a flat feature
vector this is the reference's `st_layer` + bottleneck; on a feature map it is the same map per
spatial position (a 1×1 convolution), because a dense map over a flattened 12×16×16 or 128×16×16
map would need 10⁷–10⁹ weights. The attacker sees the up-projected sample, an affine image of u.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mijax.defenses.base import Defense, LossInputs, Trainable, check_scalar, require_spec

_STD_SHIFT = 5.0  # std = softplus(s − 5) (the reference)


def _log_softplus(t: jax.Array) -> jax.Array:
    """log(softplus(t)), finite for very negative t (where softplus(t) ≈ e^t)."""
    return jnp.where(t < -30.0, t, jnp.log(jax.nn.softplus(jnp.maximum(t, -30.0))))


def vib_kl(mu: ArrayLike, std: ArrayLike) -> jax.Array:
    """KL(N(μ, diag std²) ‖ N(0, I)) per example: ½ Σ_d (μ_d² + std_d² − 2·log std_d − 1).

    Args:
        mu: `[batch, ...]` means.
        std: `[batch, ...]` standard deviations (> 0), the shape of `mu`.

    Returns:
        `[batch]` KL divergences in nats (summed over all non-batch axes).

    Raises:
        ValueError: if the shapes differ or there is no batch axis.

    Example:
        >>> vib_kl(jnp.zeros((2, 3)), jnp.ones((2, 3)))      # [0., 0.]
    """
    mu, std = jnp.asarray(mu), jnp.asarray(std)
    if mu.shape != std.shape or mu.ndim < 1:
        raise ValueError(f"expected mu and std of one shape [batch, ...], got {mu.shape} and {std.shape}")
    terms = jnp.square(mu) + jnp.square(std) - 2.0 * jnp.log(std) - 1.0
    return 0.5 * jnp.sum(terms.reshape(mu.shape[0], -1), axis=1)


def _uniform(key, shape, fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def init_bottleneck(key: jax.Array, channels: int, bottleneck: int) -> dict:
    """The bottleneck's parameters, PyTorch-default (uniform ±1/√fan_in) initialised.

    Returns:
        `{"encoder": {"kernel": [C, 2k], "bias": [2k]}, "decoder": {"kernel": [k, C], "bias": [C]}}`.
    """
    keys = jax.random.split(key, 4)
    return {"encoder": {"kernel": _uniform(keys[0], (channels, 2 * bottleneck), channels),
                        "bias": _uniform(keys[1], (2 * bottleneck,), channels)},
            "decoder": {"kernel": _uniform(keys[2], (bottleneck, channels), bottleneck),
                        "bias": _uniform(keys[3], (channels,), bottleneck)}}


def bottleneck_statistics(params: dict, z: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(μ, std, log std) of the code for features `z` `[batch, ..., C]` (the last axis mapped).

    μ and s are the two halves of `z·W + b`; std = softplus(s − 5).
    """
    z = jnp.asarray(z)
    stats = z @ params["encoder"]["kernel"] + params["encoder"]["bias"]
    mu, s = jnp.split(stats, 2, axis=-1)
    return mu, jax.nn.softplus(s - _STD_SHIFT), _log_softplus(s - _STD_SHIFT)


def vib_bottleneck(*, beta: ArrayLike, bottleneck: int | None = None, sample_at_inference: bool = True) -> Defense:
    """MID's variational bottleneck with its β·KL training term (Wang et al., AAAI 2021, Eq. 7).

    State: `{"beta": β, "bottleneck": Trainable(params)}`; the parameters train jointly with the
    model through `mijax.train.fit`'s one optimiser.

    Args:
        beta: KL weight β >= 0 (CEM's vendored values 0.003, 0.01, 0.02); traced when swept.
        bottleneck: code channels k (None: C // 2, the reference's d/2, at least 1).
        sample_at_inference: draw ε at inference too (the reference); False transmits μ's up-projection.

    Returns:
        A `Defense` whose `feature_transform` samples and up-projects the code and whose `loss`
        returns the per-example β·KL. `init(key, spec)` needs the model's `DefenseSpec`.

    Raises:
        ValueError: if beta is negative or bottleneck < 1.

    Example:
        >>> defense = vib_bottleneck(beta=0.01)
        >>> state = fit(model, x, y, optimizer=optax.adam(1e-3), defense=defense, ...)
    """
    beta = check_scalar("beta", beta)
    if bottleneck is not None and bottleneck < 1:
        raise ValueError(f"expected bottleneck >= 1 or None, got {bottleneck}")

    def init(key=None, spec=None):
        spec = require_spec("vib_bottleneck", spec)
        channels = spec.feature_shape[-1]
        k = bottleneck or max(channels // 2, 1)
        key = jax.random.key(0) if key is None else key
        return {"beta": beta, "bottleneck": Trainable(init_bottleneck(key, channels, k))}

    def transform(state, z, key, *, train):
        params = state["bottleneck"].params
        mu, std, _ = bottleneck_statistics(params, z)
        code = mu + std * jax.random.normal(key, mu.shape) if (train or sample_at_inference) else mu
        return code @ params["decoder"]["kernel"] + params["decoder"]["bias"]

    def loss(state, inputs: LossInputs):
        mu, std, log_std = bottleneck_statistics(state["bottleneck"].params, inputs.z)
        terms = jnp.square(mu) + jnp.square(std) - 2.0 * log_std - 1.0
        return state["beta"] * 0.5 * jnp.sum(terms.reshape(mu.shape[0], -1), axis=1)

    return Defense(init=init, feature_transform=transform, loss=loss)
