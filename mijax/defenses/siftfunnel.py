"""SiftFunnel's edge objective (Liu et al., arXiv 2501.00824; code `GOERAHG214/SiftFunnel`
`project_infodr_v4.py`; siftfunnel.md "Edge training loss"):

    L = α·KL(ỹ ‖ p) + β·dCor²(x, z) + 0.03·mean|z| + γ·mean_{b,c,c'} ρ_b[c,c']²,   α = 5, β = 2, γ = 2

with ỹ the label-smoothed target (1 − ε on the true class, ε/(K − 1) on each other, ε = 0.25),
p = softmax(logits), x the *normalised* input batch, z the constrained edge feature (the transmitted
one by default), dCor² the squared distance correlation over the batch
(`mijax.defenses.distance_correlation(..., squared=True)`), and ρ_b the per-sample channel
correlation over spatial positions (`channel_correlation_penalty`). Every weight is a traced setting
in the defense state, so a sweep compiles once.

Train with `task_loss=no_task_loss` (the α·KL task term is part of this defense, so its α and ε are
traced too), or keep a task loss and set `alpha=0`.

Also here: the effective information volume δ_z (mean count of non-zero entries per sample), the
quantity the paper's criterion ties to the difficulty of inversion.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mijax.data.transforms import Normalization
from mijax.defenses.base import Defense, LossInputs, check_scalar
from mijax.defenses.decorrelation import _safe_sqrt, distance_correlation

_STD_GUARD = 1e-12  # the reference adds it to the product of the standard deviations


def channel_correlation_penalty(z: ArrayLike) -> jax.Array:
    """Per-sample mean squared channel correlation, mean_{c,c'} ρ_b[c,c']², diagonal included.

    For sample b with s = h·w spatial positions: cov_b[c,c'] = Σ_s (z_sc − z̄_c)(z_sc' − z̄_c') / s,
    std_c unbiased (÷ (s − 1)), ρ_b = cov_b / (std_c·std_c' + 1e-12) (the reference's conventions,
    so ρ_b[c,c] = (s − 1)/s, not 1; constant channels give 0).

    Args:
        z: `[batch, height, width, channels]` features (NHWC), or `[batch, positions, channels]`.

    Returns:
        `[batch]` penalties.

    Raises:
        ValueError: if z is not 3-D or 4-D or has fewer than 2 positions.

    Example:
        >>> channel_correlation_penalty(jax.random.normal(key, (8, 16, 16, 12))).shape   # (8,)
    """
    z = jnp.asarray(z)
    if z.ndim not in (3, 4):
        raise ValueError(f"expected z of shape [batch, height, width, channels] or [batch, positions, "
                         f"channels], got {z.shape}")
    z = z.reshape(z.shape[0], -1, z.shape[-1]).astype(jnp.promote_types(z.dtype, jnp.float32))
    positions = z.shape[1]
    if positions < 2:
        raise ValueError(f"expected at least 2 spatial positions, got z of shape {z.shape}")
    centred = z - jnp.mean(z, axis=1, keepdims=True)
    cov = jnp.einsum("bsc,bsd->bcd", centred, centred, precision=jax.lax.Precision.HIGHEST) / positions
    std = _safe_sqrt(jnp.sum(centred * centred, axis=1) / (positions - 1))  # gradient 0, not NaN, at 0
    rho = cov / (std[:, :, None] * std[:, None, :] + _STD_GUARD)
    return jnp.mean(jnp.square(rho), axis=(1, 2))


def smoothed_kl(logits: ArrayLike, labels: ArrayLike, *, epsilon: ArrayLike = 0.25) -> jax.Array:
    """Per-example KL(ỹ ‖ softmax(logits)) with ỹ = 1 − ε on the label and ε/(K − 1) elsewhere."""
    logits = jnp.asarray(logits)
    k = logits.shape[-1]
    target = jnp.where(jax.nn.one_hot(labels, k) > 0, 1.0 - epsilon, epsilon / (k - 1))
    log_target = jnp.log(jnp.where(target > 0, target, 1.0))
    return jnp.sum(jnp.where(target > 0, target * (log_target - jax.nn.log_softmax(logits)), 0.0), axis=-1)


def no_task_loss(logits, labels, step=None) -> jax.Array:
    """A zero task loss, for training with `siftfunnel_objective(...)`, which carries its own α·KL term."""
    del step
    return jnp.zeros(logits.shape[:1])


def effective_information_volume(z: ArrayLike) -> jax.Array:
    """δ_z: the mean over samples of the number of non-zero entries of z (the reference's count).

    Args:
        z: `[batch, ...]` (transmitted) features.

    Returns:
        A scalar.
    """
    z = jnp.asarray(z)
    if z.ndim < 1 or z.shape[0] < 1:
        raise ValueError(f"expected z of shape [batch, ...] with batch >= 1, got {z.shape}")
    return jnp.mean(jnp.sum((z != 0).reshape(z.shape[0], -1), axis=1).astype(jnp.float32))


def siftfunnel_objective(*, alpha: ArrayLike = 5.0, beta: ArrayLike = 2.0, gamma: ArrayLike = 2.0, l1: ArrayLike = 0.03,
               epsilon: ArrayLike = 0.25, normalization: Normalization | None = None,
               tap: str | None = None) -> Defense:
    """SiftFunnel's objective as a `Defense` (module docstring); train with `task_loss=no_task_loss`.

    Args:
        alpha: weight of KL(ỹ ‖ p) (5; 0 leaves the task to the `task_loss`).
        beta: weight of dCor²(x, z) (2).
        gamma: weight of the channel-correlation penalty (2).
        l1: weight of mean|z| (0.03; the reference's "entropy" term, Σ|z| / numel(z)).
        epsilon: label smoothing ε (0.25).
        normalization: correlate z with the normalised input the network sees (the reference; pass
            `model.normalization`); None uses the images in [0, 1].
        tap: constrain the output of this layer (the reference's `block_idx − 1`) instead of the
            transmitted z (None, the default: the funnel output when the model is cut there).

    Returns:
        A `Defense` whose `loss` returns per-example values (the batch-level dCor² broadcast).

    Raises:
        ValueError: for negative weights or ε outside [0, 1).

    Example:
        >>> model = pv4_classifier_4()
        >>> fit(model, x, y, optimizer=..., defense=siftfunnel_objective(normalization=model.normalization),
        ...     task_loss=no_task_loss, ...)
    """
    settings = {"alpha": check_scalar("alpha", alpha), "beta": check_scalar("beta", beta),
                "gamma": check_scalar("gamma", gamma), "l1": check_scalar("l1", l1),
                "epsilon": check_scalar("epsilon", epsilon, high=0.999)}

    def loss(state, inputs: LossInputs):
        z = inputs.z if tap is None else inputs.taps[tap]
        x = inputs.images if normalization is None else normalization.normalize(inputs.images)
        task = state["alpha"] * smoothed_kl(inputs.logits, inputs.labels, epsilon=state["epsilon"])
        dcor2 = distance_correlation(x, z, squared=True)
        sparsity = jnp.mean(jnp.abs(z))
        correlation = channel_correlation_penalty(z) if z.ndim in (3, 4) else jnp.zeros(z.shape[:1])
        return task + state["beta"] * dcor2 + state["l1"] * sparsity + state["gamma"] * correlation

    return Defense(init=lambda key=None, spec=None: dict(settings), loss=loss, taps=() if tap is None else (tap,))
