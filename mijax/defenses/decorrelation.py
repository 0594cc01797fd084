"""NoPeek: distance correlation between the input and the transmitted features (other_defenses.md).

Vepakomma et al., "NoPeek: Information leakage reduction to share activations in distributed deep
learning", ICDMW 2020 (arXiv 2008.09161): train with L = CE + α·dCor(x, z), which decorrelates the
features from the raw input over each batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mijax.data.transforms import Normalization
from mijax.defenses.base import Defense, LossInputs, check_scalar


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """√max(x, 0) with a zero (not NaN) gradient at 0."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _centred_distances(a: jax.Array) -> jax.Array:
    """Double-centred pairwise Euclidean distance matrix of the rows of `a` `[batch, dim]`."""
    a = a - jnp.mean(a, axis=0)  # distances are shift-invariant; centring reduces cancellation
    sq = jnp.sum(a * a, axis=1)
    gram = jnp.dot(a, a.T, precision=jax.lax.Precision.HIGHEST)
    d = _safe_sqrt(sq[:, None] + sq[None, :] - 2.0 * gram)
    return d - jnp.mean(d, axis=0) - jnp.mean(d, axis=1, keepdims=True) + jnp.mean(d)


def distance_correlation(x: jax.typing.ArrayLike, z: jax.typing.ArrayLike, *,
                         squared: bool = False) -> jax.Array:
    """Sample distance correlation of a batch of pairs (Székely, Rizzo & Bakirov, Ann. Stat. 2007).

    With a_ij = ‖x_i − x_j‖ and b_ij = ‖z_i − z_j‖ double-centred to A and B:
    dCov² = mean(A⊙B), dVar²_x = mean(A⊙A), dVar²_z = mean(B⊙B),
    dCor² = dCov² / √(dVar²_x·dVar²_z), and dCor = √dCor² (the V-statistic, as NoPeek and the
    `dcor` package's `distance_correlation`). Distances come from Gram matrices with a square root
    whose gradient is 0 (not NaN) on the diagonal. A batch in which x or z is constant has dCor = 0.

    Args:
        x: `[batch, ...]`, flattened per example (e.g. images).
        z: `[batch, ...]`, flattened per example (e.g. features).
        squared: return dCor² (SiftFunnel's term) instead of dCor.

    Returns:
        A scalar in [0, 1].

    Raises:
        ValueError: if x and z have different batch sizes or fewer than 2 examples.

    Example:
        >>> x = jax.random.normal(jax.random.key(0), (64, 10))
        >>> distance_correlation(x, 3.0 * x + 1.0)        # 1.0
    """
    x, z = jnp.asarray(x), jnp.asarray(z)
    if x.ndim < 1 or z.ndim < 1 or x.shape[0] != z.shape[0] or x.shape[0] < 2:
        raise ValueError(f"expected x and z of shape [batch, ...] with a common batch >= 2, "
                         f"got {x.shape} and {z.shape}")
    return _distance_correlation(x, z, squared)


@functools.partial(jax.jit, static_argnums=2)
def _distance_correlation(x: jax.Array, z: jax.Array, squared: bool) -> jax.Array:
    # Jitted so that eager calls compile once instead of dispatching a dozen small ops.
    dtype = jnp.promote_types(jnp.result_type(x, z), jnp.float32)
    a = _centred_distances(x.reshape(x.shape[0], -1).astype(dtype))
    b = _centred_distances(z.reshape(z.shape[0], -1).astype(dtype))
    dcov2 = jnp.maximum(jnp.mean(a * b), 0.0)
    denominator = _safe_sqrt(jnp.mean(a * a) * jnp.mean(b * b))
    dcor2 = jnp.where(denominator > 0, dcov2 / jnp.where(denominator > 0, denominator, 1.0), 0.0)
    return dcor2 if squared else _safe_sqrt(dcor2)


def nopeek(*, alpha, normalization: Normalization | None = None, squared: bool = False) -> Defense:
    """NoPeek's training term α·dCor(x, z) over each batch (Vepakomma et al. 2020).

    `z` is the clean edge output (before the feature transform), as in the CEM code. Which `x`: the
    CEM/ResSFL code correlates z with the *normalised* input x_n = (x − m)/s that the network sees;
    pass the model's normalisation (`normalization=model.normalization`) for that. With None the
    pixel-space images in [0, 1] are used, as in NoPeek's paper. (dCor is invariant to one global
    scale and shift of x, so only the per-channel differences of s matter.)

    The CEM code uses α1·dCor for CIFAR-10 and 0.1·α1·dCor for the other datasets: choose `alpha`
    accordingly.

    Args:
        alpha: weight α >= 0; traced when swept.
        normalization: the input normalisation applied before the dCor, or None.
        squared: use dCor² (SiftFunnel's variant).

    Returns:
        A `Defense` whose `loss` returns the scalar α·dCor of the batch.

    Raises:
        ValueError: if alpha is negative.

    Example:
        >>> defense = chain(gaussian_noise(sigma=0.1), nopeek(alpha=0.5, normalization=model.normalization))
    """
    alpha = check_scalar("alpha", alpha)

    def loss(state, inputs: LossInputs):
        x = inputs.images if normalization is None else normalization.normalize(inputs.images)
        return state["alpha"] * distance_correlation(x, inputs.z, squared=squared)

    return Defense(init=lambda key=None, spec=None: {"alpha": alpha}, loss=loss)
