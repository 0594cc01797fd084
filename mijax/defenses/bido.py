"""BiDO: bilateral dependency optimisation over named layers (other_defenses.md).

Peng et al., "Bilateral Dependency Optimization: Defending Against Model-inversion Attacks", KDD 2022
(arXiv 2206.05483), Eq. 4: for each chosen hidden layer h_j,

    L = CE + Σ_j [ λ_x·dep(x, h_j) − λ_y·dep(h_j, y) ],

so the layers forget the input while keeping the label. The dependency measure is a kernel one over
the batch, with Gaussian kernels of width σ = 5 on the flattened input and layer outputs and on the
one-hot labels:

- "hsic": normalised HSIC, HSIC(K, L)/√(HSIC(K, K)·HSIC(L, L)) with the biased estimator
  HSIC(K, L) = tr(K H L H)/(B − 1)², H = I − 11ᵀ/B (a value in [0, 1]);
- "hsic_cca": BiDO's code (`hsic_normalized_cca`): K_c = K H, R_K = K_c (K_c + ε·B·I)⁻¹ with
  ε = 1e-5, dep = Σ_ij (R_K)_ij (R_L)_ji = tr(R_K R_L);
- "coco": BiDO's COCO variant as in its code: √‖K̃ L̃‖_F / B with K̃ = H K H (the Frobenius norm
  where the COCO of Gretton et al. takes the largest singular value).

Kernel width (BiDO's code): k(u, v) = exp(−‖u − v‖² / (2σ²·d)) with d the flattened dimension of u,
so that σ means the same for images and for small layers (`scale_by_dim=False`: exp(−‖u−v‖²/(2σ²))).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mijax.data.transforms import Normalization
from mijax.defenses.base import Defense, LossInputs, check_scalar

MEASURES = ("hsic", "hsic_cca", "coco")
_CCA_EPSILON = 1e-5


def _flat(a: jax.Array) -> jax.Array:
    a = jnp.asarray(a, jnp.promote_types(jnp.asarray(a).dtype, jnp.float32))
    return a.reshape(a.shape[0], -1)


def gaussian_kernel(a: ArrayLike, *, sigma: ArrayLike = 5.0, scale_by_dim: bool = True) -> jax.Array:
    """The `[batch, batch]` Gaussian kernel matrix of the flattened rows of `a` `[batch, ...]`.

    k_ij = exp(−‖a_i − a_j‖² / (2σ²·d)) with d the flattened size (BiDO's code), or
    exp(−‖a_i − a_j‖² / (2σ²)) with `scale_by_dim=False`.
    """
    a = _flat(a)
    a = a - jnp.mean(a, axis=0)
    sq = jnp.sum(a * a, axis=1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * jnp.dot(a, a.T, precision=jax.lax.Precision.HIGHEST), 0.0)
    width = 2.0 * jnp.square(sigma) * (a.shape[1] if scale_by_dim else 1)
    return jnp.exp(-d2 / width)


def linear_kernel(a: ArrayLike) -> jax.Array:
    """The `[batch, batch]` linear kernel a·aᵀ of the flattened rows of `a`."""
    a = _flat(a)
    return jnp.dot(a, a.T, precision=jax.lax.Precision.HIGHEST)


def _centre(k: jax.Array) -> jax.Array:
    """H K H."""
    return k - jnp.mean(k, axis=0) - jnp.mean(k, axis=1, keepdims=True) + jnp.mean(k)


def hsic(k: ArrayLike, l: ArrayLike) -> jax.Array:
    """Biased HSIC of two `[batch, batch]` kernel matrices: tr(K H L H)/(B − 1)²."""
    k, l = jnp.asarray(k), jnp.asarray(l)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape != l.shape:
        raise ValueError(f"expected two [batch, batch] kernel matrices, got {k.shape} and {l.shape}")
    b = k.shape[0]
    return jnp.sum(_centre(k) * l) / (b - 1) ** 2


def _normalized_hsic(k, l):
    kc, lc = _centre(k), _centre(l)
    num = jnp.sum(kc * lc)
    den = jnp.sqrt(jnp.maximum(jnp.sum(kc * kc) * jnp.sum(lc * lc), 0.0))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _hsic_cca(k, l):
    b = k.shape[0]
    h = jnp.eye(b) - 1.0 / b

    def r(m):
        mc = m @ h
        # R = M_c (M_c + εB I)^{-1}, i.e. Rᵀ solves (M_c + εB I)ᵀ Rᵀ = M_cᵀ.
        return jnp.linalg.solve((mc + _CCA_EPSILON * b * jnp.eye(b)).T, mc.T).T

    return jnp.sum(r(k) * r(l).T)


def _coco(k, l):
    b = k.shape[0]
    prod = _centre(k) @ _centre(l)
    norm = jnp.sqrt(jnp.sum(prod * prod))
    return jnp.sqrt(norm) / b


def kernel_dependence(k: ArrayLike, l: ArrayLike, *, measure: str = "hsic") -> jax.Array:
    """dep(K, L) of two `[batch, batch]` kernel matrices by `measure` (see the module docstring)."""
    if measure not in MEASURES:
        raise ValueError(f"expected measure to be one of {MEASURES}, got {measure!r}")
    k, l = jnp.asarray(k, jnp.float32), jnp.asarray(l, jnp.float32)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape != l.shape:
        raise ValueError(f"expected two [batch, batch] kernel matrices, got {k.shape} and {l.shape}")
    return {"hsic": _normalized_hsic, "hsic_cca": _hsic_cca, "coco": _coco}[measure](k, l)


def dependence(a: ArrayLike, b: ArrayLike, *, measure: str = "hsic", sigma: ArrayLike = 5.0,
               scale_by_dim: bool = True) -> jax.Array:
    """Kernel dependence of two batches `[batch, ...]` with Gaussian kernels of width σ on both.

    Args:
        a, b: batches with a common leading axis (flattened per example).
        measure: "hsic" (normalised HSIC), "hsic_cca" (BiDO's code) or "coco".
        sigma: kernel width σ (> 0); traced when swept.
        scale_by_dim: divide the squared distances by the flattened dimension too (BiDO's code).

    Returns:
        A scalar.

    Raises:
        ValueError: if the batches differ, have fewer than 2 examples, or the measure is unknown.

    Example:
        >>> x = jax.random.normal(jax.random.key(0), (64, 10))
        >>> dependence(x, x)          # 1.0 for "hsic"; near 0 for an independent batch
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim < 1 or b.ndim < 1 or a.shape[0] != b.shape[0] or a.shape[0] < 2:
        raise ValueError(f"expected a and b of shape [batch, ...] with a common batch >= 2, got {a.shape} "
                         f"and {b.shape}")
    return kernel_dependence(gaussian_kernel(a, sigma=sigma, scale_by_dim=scale_by_dim),
                             gaussian_kernel(b, sigma=sigma, scale_by_dim=scale_by_dim), measure=measure)


def bilateral_dependency(*, lambda_x: ArrayLike, lambda_y: ArrayLike, taps: tuple[str, ...] = (), measure: str = "hsic",
         sigma: ArrayLike = 5.0, label_kernel: str = "gaussian", normalization: Normalization | None = None,
         scale_by_dim: bool = True) -> Defense:
    """BiDO's training term Σ_j λ_x·dep(x, h_j) − λ_y·dep(h_j, y) over the layers `taps`.

    Args:
        lambda_x: weight of the input dependence (BiDO's example 0.05); traced when swept.
        lambda_y: weight of the label dependence (0.5, 1 or 2.5); traced when swept.
        taps: names of the layers h_j (edge or cloud layers of a single-member model); empty: the
            transmitted clean z only.
        measure: "hsic", "hsic_cca" or "coco" (module docstring).
        sigma: kernel width σ (5).
        label_kernel: "gaussian" (σ on the one-hot labels) or "linear" (one-hot inner products).
        normalization: compare the layers with the normalised input the network sees (pass
            `model.normalization`); None uses the images in [0, 1].
        scale_by_dim: BiDO's per-dimension kernel width.

    Returns:
        A `Defense` whose `loss` returns the scalar term of the batch.

    Raises:
        ValueError: if a weight or σ is invalid, or the measure or label kernel is unknown.

    Example:
        >>> defense = bilateral_dependency(lambda_x=0.05, lambda_y=0.5, taps=("block1", "block2"))
    """
    if measure not in MEASURES:
        raise ValueError(f"expected measure to be one of {MEASURES}, got {measure!r}")
    if label_kernel not in ("gaussian", "linear"):
        raise ValueError(f"expected label_kernel 'gaussian' or 'linear', got {label_kernel!r}")
    settings = {"lambda_x": check_scalar("lambda_x", lambda_x), "lambda_y": check_scalar("lambda_y", lambda_y),
                "sigma": check_scalar("sigma", sigma, open_low=True)}
    taps = tuple(taps)

    def loss(state, inputs: LossInputs):
        x = inputs.images if normalization is None else normalization.normalize(inputs.images)
        sigma = state["sigma"]
        kx = gaussian_kernel(x, sigma=sigma, scale_by_dim=scale_by_dim)
        onehot = jax.nn.one_hot(inputs.labels, inputs.logits.shape[-1])
        ky = (gaussian_kernel(onehot, sigma=sigma, scale_by_dim=scale_by_dim) if label_kernel == "gaussian"
              else linear_kernel(onehot))
        layers = [inputs.taps[name] for name in taps] if taps else [inputs.z]
        total = jnp.zeros(())
        for h in layers:
            kh = gaussian_kernel(h, sigma=sigma, scale_by_dim=scale_by_dim)
            total = total + state["lambda_x"] * kernel_dependence(kx, kh, measure=measure) \
                - state["lambda_y"] * kernel_dependence(kh, ky, measure=measure)
        return total

    return Defense(init=lambda key=None, spec=None: dict(settings), loss=loss, taps=taps)
