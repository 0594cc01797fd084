"""Reconstruction and accuracy metrics for model inversion (spec: `methods/metrics.md`).

Every reconstruction metric compares a reconstruction `x_hat` with the private input `x`, both
`[batch, height, width, channels]` (NHWC) float images in **pixel space [0, 1]** (de-normalise and
clip outputs of a normalised pipeline first). Metrics are returned **per image** (shape `[batch]`);
the caller reduces (usually the mean over a named evaluation set). Everything is pure JAX and works
under `jax.jit`, `jax.vmap` and `jax.grad`.

Modes (`compat=`) reproduce the numbers of published reference code:

* `"canonical"` (mijax default): SSIM of Wang et al., IEEE TIP 2004 -- Gaussian 11x11 window,
  sigma 1.5, valid filtering, K1 0.01, K2 0.03, data range 1; identical to `dm_pix.ssim` defaults.
* `"he2019"`: He et al., ACSAC 2019 / IoT-J 2020 evaluation with scikit-image `compare_ssim`
  defaults -- 7x7 uniform window, sample covariance, data range max(x_hat_i) - min(x_hat_i).
* `"cem"`: Xia et al., CVPR 2025 (CEM) reference -- Gaussian 11x11, sigma 1.5, zero padding 5
  ("same" size map, borders included); its PSNR is per batch (`batch_psnr`).

Input checks (rank, matching shapes, values in [0, 1]) raise `ValueError`; shape checks always run,
value checks only when the arrays are concrete (not traced inside `jit`/`vmap`/`grad`).

Example:
    >>> import jax.numpy as jnp
    >>> from mijax import metrics
    >>> x = jnp.full((2, 32, 32, 3), 0.5)
    >>> scores = metrics.reconstruction_metrics(x * 0.9, x)
    >>> sorted(scores)
    ['mse', 'psnr', 'ssim']
"""

from __future__ import annotations

import functools
import math

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from mijax import checks

__all__ = [
    "COMPAT_MODES",
    "MIN_MSE",
    "accuracy",
    "batch_psnr",
    "mse",
    "psnr",
    "psnr_of_mean_mse",
    "reconstruction_metrics",
    "ssim",
    "top_k_accuracy",
]

COMPAT_MODES = ("canonical", "he2019", "cem")
"""The supported `compat=` modes."""

MIN_MSE = 1e-10
"""Default floor of the per-image MSE in PSNR: identical images give 10*log10(1/1e-10) = 100 dB."""

_RANGE_TOLERANCE = 1e-5
_IMAGE_SHAPE = "[batch, height, width, channels]"

# Window sizes per mode (checked before any SSIM is computed).
_WINDOW = {"canonical": 11, "he2019": 7, "cem": 11}
_GAUSSIAN_SIZE = 11
_GAUSSIAN_SIGMA = 1.5
_K1 = 0.01
_K2 = 0.03


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------


def _as_float(a) -> jax.Array:
    a = jnp.asarray(a)
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def _check_images(x_hat, x) -> tuple[jax.Array, jax.Array]:
    """Validates and converts an (x_hat, x) pair of NHWC images in [0, 1]."""
    x_shape = tuple(np.shape(x))
    x_hat_shape = tuple(np.shape(x_hat))
    if len(x_shape) != 4:
        raise ValueError(f"expected x of shape {_IMAGE_SHAPE}, got {x_shape}")
    if x_hat_shape != x_shape:
        raise ValueError(
            f"expected x_hat of shape {_IMAGE_SHAPE} matching x {x_shape}, got {x_hat_shape}"
        )
    checks.nonempty("x", x_shape)
    if checks.is_concrete(x_hat, x):
        for name, a in (("x_hat", x_hat), ("x", x)):
            values = np.asarray(a)
            if values.size == 0:
                continue
            if not np.issubdtype(values.dtype, np.number) or np.issubdtype(
                values.dtype, np.complexfloating
            ):
                raise ValueError(f"expected {name} to hold real numbers, got dtype {values.dtype}")
            if not np.all(np.isfinite(values)):
                raise ValueError(
                    f"expected {name} with finite values in [0, 1] (pixel space), "
                    f"got {int(np.size(values) - np.count_nonzero(np.isfinite(values)))} "
                    "non-finite values"
                )
            low, high = float(values.min()), float(values.max())
            if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
                raise ValueError(
                    f"expected {name} with values in [0, 1] (pixel space: de-normalise and clip "
                    f"first), got values in [{low:.6g}, {high:.6g}]"
                )
    dtype = jnp.promote_types(jnp.result_type(x_hat, x), jnp.float32)
    return jnp.asarray(x_hat).astype(dtype), jnp.asarray(x).astype(dtype)


def _check_compat(compat: str) -> str:
    if compat not in COMPAT_MODES:
        raise ValueError(f"expected compat to be one of {COMPAT_MODES}, got {compat!r}")
    return compat


def _check_window(shape: tuple[int, ...], window: int, compat: str) -> None:
    height, width = shape[1], shape[2]
    if height < window or width < window:
        raise ValueError(
            f"expected images of at least {window}x{window} pixels for SSIM (compat={compat!r} "
            f"uses a {window}x{window} window), got images of {height}x{width} pixels"
        )


def _check_min_mse(min_mse) -> None:
    if checks.is_concrete(min_mse) and not float(np.asarray(min_mse)) > 0:
        raise ValueError(f"expected min_mse > 0, got {min_mse}")


def _check_logits(logits, labels) -> tuple[jax.Array, jax.Array]:
    logits_shape = tuple(np.shape(logits))
    labels_shape = tuple(np.shape(labels))
    if len(labels_shape) != 1:
        raise ValueError(f"expected labels of shape [batch] (integer classes), got {labels_shape}")
    if len(logits_shape) != 2 or logits_shape[0] != labels_shape[0]:
        raise ValueError(
            f"expected logits of shape [batch, classes] matching labels {labels_shape}, "
            f"got {logits_shape}"
        )
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"expected integer labels, got dtype {labels.dtype}")
    if checks.is_concrete(labels) and labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= logits_shape[1]:
            raise ValueError(
                f"expected labels in [0, {logits_shape[1]}) for {logits_shape[1]} classes, "
                f"got labels in [{low}, {high}]"
            )
    return jnp.asarray(logits), labels


# ----------------------------------------------------------------------------------------------
# MSE and PSNR
# ----------------------------------------------------------------------------------------------


def mse(x_hat: jax.typing.ArrayLike, x: jax.typing.ArrayLike) -> jax.Array:
    """Per-image mean squared error, MSE_i = mean over H, W, C of (x_hat_i - x_i)^2.

    The mean over images equals the global per-pixel MSE (all images have the same size), which is
    also the `"he2019"` and `"cem"` MSE.

    Args:
        x_hat: reconstructions `[batch, height, width, channels]` in [0, 1].
        x: original images `[batch, height, width, channels]` in [0, 1].

    Returns:
        `[batch]` per-image MSE.

    Raises:
        ValueError: if the shapes are not rank 4 and equal, or the values are outside [0, 1].

    Example:
        >>> x = jnp.zeros((2, 8, 8, 1))
        >>> mse(x + 0.1, x).shape
        (2,)
    """
    x_hat, x = _check_images(x_hat, x)
    return _mse(x_hat, x)


def _mse(x_hat: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(x_hat - x), axis=(1, 2, 3))


def _psnr_from_mse(value: jax.Array, min_mse) -> jax.Array:
    return -10.0 * jnp.log10(jnp.maximum(value, min_mse))


def psnr(
    x_hat: jax.typing.ArrayLike, x: jax.typing.ArrayLike, *, min_mse: float = MIN_MSE
) -> jax.Array:
    """Per-image peak signal-to-noise ratio with peak 1: PSNR_i = 10 log10(1 / max(MSE_i, min_mse)).

    This is the canonical and `"he2019"` PSNR (report the mean over images). Identical images would
    give +inf; the MSE is clamped at `min_mse` (default `MIN_MSE` = 1e-10, i.e. at most 100 dB).
    `"cem"` reports a per-batch PSNR instead: see `batch_psnr`.

    Args:
        x_hat: reconstructions `[batch, height, width, channels]` in [0, 1].
        x: original images `[batch, height, width, channels]` in [0, 1].
        min_mse: floor of the per-image MSE (> 0).

    Returns:
        `[batch]` PSNR in dB.

    Raises:
        ValueError: on bad shapes, values outside [0, 1], or `min_mse <= 0`.

    Example:
        >>> x = jnp.zeros((1, 8, 8, 1))
        >>> round(float(psnr(x + 0.1, x)[0]), 3)  # 10 log10(1 / 0.01)
        20.0
    """
    _check_min_mse(min_mse)
    x_hat, x = _check_images(x_hat, x)
    return _psnr_from_mse(_mse(x_hat, x), min_mse)


def psnr_of_mean_mse(
    x_hat: jax.typing.ArrayLike, x: jax.typing.ArrayLike, *, min_mse: float = MIN_MSE
) -> jax.Array:
    """PSNR of the mean MSE over the batch, 10 log10(1 / mean_i MSE_i) -- not the mean PSNR.

    Some papers report this; it is never larger than the mean of `psnr` (Jensen), so name it when
    you report it.

    Args:
        x_hat: reconstructions `[batch, height, width, channels]` in [0, 1].
        x: original images `[batch, height, width, channels]` in [0, 1].
        min_mse: floor of the mean MSE (> 0).

    Returns:
        A scalar, in dB.

    Raises:
        ValueError: on bad shapes, values outside [0, 1], or `min_mse <= 0`.

    Example:
        >>> x = jnp.zeros((2, 8, 8, 1))
        >>> psnr_of_mean_mse(x + 0.1, x).shape
        ()
    """
    _check_min_mse(min_mse)
    x_hat, x = _check_images(x_hat, x)
    return _psnr_from_mse(jnp.mean(_mse(x_hat, x)), min_mse)


def batch_psnr(
    x_hat: jax.typing.ArrayLike,
    x: jax.typing.ArrayLike,
    *,
    batch_size: int = 256,
    min_mse: float = MIN_MSE,
) -> jax.Array:
    """The CEM reference's PSNR (`compat="cem"`): per batch, then averaged weighted by batch size.

    Xia et al., CVPR 2025 (CEM) evaluate in consecutive batches of `batch_size` images b (the last
    one may be smaller) and report

        sum_b n_b * 10 log10(1 / MSE_b) / sum_b n_b,   MSE_b = mean over the batch's pixels,

    so the value depends on the batch size and the order of the images. MSE_b is clamped at
    `min_mse` (the reference would give +inf for a perfect batch).

    Args:
        x_hat: reconstructions `[batch, height, width, channels]` in [0, 1].
        x: original images `[batch, height, width, channels]` in [0, 1].
        batch_size: the evaluation batch size of the reference (256), a Python int >= 1.
        min_mse: floor of each batch MSE (> 0).

    Returns:
        A scalar, in dB.

    Raises:
        ValueError: on bad shapes, values outside [0, 1], an empty batch, `batch_size < 1`, or
            `min_mse <= 0`.

    Example:
        >>> x = jnp.zeros((300, 8, 8, 1))
        >>> batch_psnr(x + 0.1, x, batch_size=256).shape
        ()
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"expected batch_size to be an int >= 1, got {batch_size!r}")
    _check_min_mse(min_mse)
    x_hat, x = _check_images(x_hat, x)
    n = x.shape[0]
    if n == 0:
        raise ValueError(f"expected at least one image, got x of shape {tuple(x.shape)}")
    num_batches = math.ceil(n / batch_size)
    ids = jnp.arange(n) // batch_size
    per_image = _mse(x_hat, x)
    counts = jnp.bincount(ids, length=num_batches).astype(per_image.dtype)
    batch_mse = jax.ops.segment_sum(per_image, ids, num_segments=num_batches) / counts
    return jnp.sum(counts * _psnr_from_mse(batch_mse, min_mse)) / n


# ----------------------------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------------------------


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    # Same taps as dm_pix.ssim and pytorch-ssim (the CEM reference) for odd sizes.
    t = np.arange(size, dtype=np.float64) - size // 2
    w = np.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def _filter_valid(z: jax.Array, taps: np.ndarray) -> jax.Array:
    """Separable correlation of NHWC `z` with the 1-D `taps` along H and W, valid output.

    Written as a sum of shifted slices: exact, cheap for small windows, and jit/vmap/grad friendly.
    """
    k = len(taps)
    height, width = z.shape[1], z.shape[2]
    taps = [float(t) for t in taps]
    z = sum(t * z[:, i : i + height - k + 1] for i, t in enumerate(taps))
    z = sum(t * z[:, :, i : i + width - k + 1] for i, t in enumerate(taps))
    return z


def _ssim_map(
    x_hat: jax.Array,
    x: jax.Array,
    taps: np.ndarray,
    *,
    pad: int,
    c1,
    c2,
    cov_norm: float = 1.0,
) -> jax.Array:
    """SSIM map (Wang et al. 2004, Eq. 13) with a separable window, after zero padding `pad`.

    Local moments are computed on images centred by their per-channel mean (the moments are
    shift-invariant), which avoids float32 cancellation in w*x^2 - (w*x)^2.
    """
    if pad:
        widths = ((0, 0), (pad, pad), (pad, pad), (0, 0))
        x_hat, x = jnp.pad(x_hat, widths), jnp.pad(x, widths)
    shift_a = jnp.mean(x_hat, axis=(1, 2), keepdims=True)
    shift_b = jnp.mean(x, axis=(1, 2), keepdims=True)
    a, b = x_hat - shift_a, x - shift_b
    mu_a_c, mu_b_c = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = cov_norm * (_filter_valid(a * a, taps) - mu_a_c * mu_a_c)
    var_b = cov_norm * (_filter_valid(b * b, taps) - mu_b_c * mu_b_c)
    cov_ab = cov_norm * (_filter_valid(a * b, taps) - mu_a_c * mu_b_c)
    mu_a, mu_b = mu_a_c + shift_a, mu_b_c + shift_b
    numerator = (2.0 * mu_a * mu_b + c1) * (2.0 * cov_ab + c2)
    denominator = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return numerator / denominator


def ssim(
    x_hat: jax.typing.ArrayLike, x: jax.typing.ArrayLike, *, compat: str = "canonical"
) -> jax.Array:
    """Per-image structural similarity (SSIM, Wang et al., IEEE TIP 2004), in one of three modes.

    For every mode the local statistics are mu_x = w*x, sigma_x^2 = w*x^2 - mu_x^2,
    sigma_xy = w*(xy) - mu_x mu_y (w the window, * correlation), and the map is (Eq. 13)

        SSIM = (2 mu_x mu_y + C1)(2 sigma_xy + C2)
               / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),

    computed per channel; SSIM_i is the mean of the map over positions and channels.

    * `"canonical"`: Gaussian 11x11 window, sigma 1.5 (normalised), **valid** filtering (map
      (H-10)x(W-10)), C1 = 0.01^2, C2 = 0.03^2 (data range 1). Computed by `dm_pix.ssim` with its
      defaults (which also clamps variances at >= eps^2 and |sigma_xy| <= sigma_x sigma_y).
    * `"he2019"`: He et al. 2019 evaluation = scikit-image `compare_ssim` defaults: 7x7 uniform
      window, sample covariance (x 49/48), K1 = 0.01, K2 = 0.03, data range
      L_i = max(x_hat_i) - min(x_hat_i) of each *reconstruction* (all channels),
      C1 = (K1 L_i)^2, C2 = (K2 L_i)^2; the map mean after cropping a 3-pixel border (= the valid
      map). As in scikit-image, a constant
      reconstruction has L_i = 0 and can give NaN.
    * `"cem"`: the CEM reference (Xia et al., CVPR 2025; pytorch-ssim): Gaussian 11x11, sigma 1.5,
      **zero padding 5** (an HxW map, borders included, which lowers border values; not comparable
      with valid-mode SSIM), C1 = 0.01^2, C2 = 0.03^2, no clamping. The reference's number is the
      mean over all images of this per-image value.

    Args:
        x_hat: reconstructions `[batch, height, width, channels]` in [0, 1].
        x: original images `[batch, height, width, channels]` in [0, 1].
        compat: `"canonical"`, `"he2019"` or `"cem"`.

    Returns:
        `[batch]` per-image SSIM.

    Raises:
        ValueError: on bad shapes, values outside [0, 1], an unknown `compat`, or images smaller
            than the mode's window (11x11, or 7x7 for `"he2019"`).

    Example:
        >>> x = jnp.linspace(0, 1, 2 * 16 * 16 * 3).reshape(2, 16, 16, 3)
        >>> ssim(x, x).round(4).tolist()
        [1.0, 1.0]
        >>> ssim(x * 0.5, x, compat="he2019").shape
        (2,)
    """
    compat = _check_compat(compat)
    x_hat, x = _check_images(x_hat, x)
    _check_window(x.shape, _WINDOW[compat], compat)
    return _ssim(x_hat, x, compat)


@functools.partial(jax.jit, static_argnums=2)
def _ssim(x_hat: jax.Array, x: jax.Array, compat: str) -> jax.Array:
    # Jitted so that eager calls compile once instead of dispatching dozens of small ops.
    if compat == "canonical":
        return dm_pix.ssim(
            x_hat, x, max_val=1.0, filter_size=_GAUSSIAN_SIZE, filter_sigma=_GAUSSIAN_SIGMA,
            k1=_K1, k2=_K2,
        )
    if compat == "he2019":
        window = _WINDOW["he2019"]
        data_range = jnp.max(x_hat, axis=(1, 2, 3)) - jnp.min(x_hat, axis=(1, 2, 3))
        data_range = data_range[:, None, None, None]
        n = window * window
        ssim_map = _ssim_map(
            x_hat, x, np.full(window, 1.0 / window), pad=0, c1=(_K1 * data_range) ** 2,
            c2=(_K2 * data_range) ** 2, cov_norm=n / (n - 1),
        )
        return jnp.mean(ssim_map, axis=(1, 2, 3))
    # cem
    ssim_map = _ssim_map(
        x_hat, x, _gaussian_1d(_GAUSSIAN_SIZE, _GAUSSIAN_SIGMA), pad=_GAUSSIAN_SIZE // 2,
        c1=_K1**2, c2=_K2**2,
    )
    return jnp.mean(ssim_map, axis=(1, 2, 3))


def reconstruction_metrics(
    x_hat: jax.typing.ArrayLike, x: jax.typing.ArrayLike, *, compat: str = "canonical"
) -> dict[str, jax.Array]:
    """Per-image MSE, PSNR and SSIM in one call (what reports tabulate).

    MSE and PSNR (peak 1, floor `MIN_MSE`) are the same in every mode; `compat` selects the SSIM
    (see `ssim`). For `compat="cem"` the paper's PSNR is per batch: report `batch_psnr` alongside.

    Args:
        x_hat: reconstructions `[batch, height, width, channels]` in [0, 1].
        x: original images `[batch, height, width, channels]` in [0, 1].
        compat: `"canonical"`, `"he2019"` or `"cem"`.

    Returns:
        `{"mse": [batch], "psnr": [batch], "ssim": [batch]}`.

    Raises:
        ValueError: as `ssim`.

    Example:
        >>> x = jnp.full((4, 32, 32, 1), 0.5)
        >>> {k: v.shape for k, v in reconstruction_metrics(x * 0.8, x).items()}
        {'mse': (4,), 'psnr': (4,), 'ssim': (4,)}
    """
    compat = _check_compat(compat)
    x_hat, x = _check_images(x_hat, x)
    _check_window(x.shape, _WINDOW[compat], compat)
    per_image_mse = _mse(x_hat, x)
    return {
        "mse": per_image_mse,
        "psnr": _psnr_from_mse(per_image_mse, MIN_MSE),
        "ssim": _ssim(x_hat, x, compat),
    }


# ----------------------------------------------------------------------------------------------
# Accuracy
# ----------------------------------------------------------------------------------------------


def accuracy(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    """Per-example top-1 correctness: 1.0 where argmax(logits) == label, else 0.0.

    Used for utility (the split model on the test set) and attack accuracy (an evaluation
    classifier on the reconstructions, `methods/metrics.md` §3). Ties go to the lowest class index.

    Args:
        logits: `[batch, classes]` scores (logits or probabilities).
        labels: `[batch]` integer classes in [0, classes).

    Returns:
        `[batch]` float32 of 1.0/0.0; its mean is the accuracy.

    Raises:
        ValueError: if the shapes do not match, labels are not integers or out of range.

    Example:
        >>> accuracy(jnp.array([[0.1, 2.0], [3.0, 0.0]]), jnp.array([1, 1])).tolist()
        [1.0, 0.0]
    """
    logits, labels = _check_logits(logits, labels)
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def top_k_accuracy(
    logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *, k: int
) -> jax.Array:
    """Per-example top-k correctness: 1.0 where the label is among the k highest logits.

    Ties are broken towards the lowest class index (as `jax.lax.top_k`), so `k=1` equals
    `accuracy`.

    Args:
        logits: `[batch, classes]` scores.
        labels: `[batch]` integer classes in [0, classes).
        k: a Python int, 1 <= k <= classes.

    Returns:
        `[batch]` float32 of 1.0/0.0.

    Raises:
        ValueError: on mismatched shapes, bad labels, or k outside [1, classes].

    Example:
        >>> logits = jnp.array([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1]])
        >>> top_k_accuracy(logits, jnp.array([2, 2]), k=2).tolist()
        [1.0, 0.0]
    """
    logits, labels = _check_logits(logits, labels)
    classes = logits.shape[1]
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= classes:
        raise ValueError(
            f"expected k to be an int in [1, {classes}] for {classes} classes, got {k!r}"
        )
    _, top = jax.lax.top_k(logits, int(k))
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# SiftFunnel compatibility mode (Liu et al., arXiv 2501.00824; siftfunnel.md "Metric compatibility")
# ----------------------------------------------------------------------------------------------

__all__ += ["cosine_similarity", "siftfunnel_metrics", "ssim_3d"]


def cosine_similarity(x_hat: jax.typing.ArrayLike, x: jax.typing.ArrayLike) -> jax.Array:
    """Per-image cosine similarity of the flattened images `[batch]` (0 for an all-zero image)."""
    x_hat, x = _check_images(x_hat, x)
    a, b = x_hat.reshape(x.shape[0], -1), x.reshape(x.shape[0], -1)
    den = jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1)
    return jnp.where(den > 0, jnp.sum(a * b, axis=1) / jnp.where(den > 0, den, 1.0), 0.0)


def ssim_3d(x_hat: jax.typing.ArrayLike, x: jax.typing.ArrayLike) -> jax.Array:
    """SSIM of a batch treated as one volume (the SiftFunnel reference's 3-D SSIM), a scalar.

    The batch axis is a third spatial axis: a separable 11×11×11 Gaussian window (σ 1.5) over
    (batch, height, width) per channel, zero padding 5 on each of the three axes ("same" size map,
    as a `conv3d` with padding window // 2), C1 = 0.01², C2 = 0.03², the mean of the map. The value
    depends on the batch and its order [window and padding unverified against the reference].
    """
    x_hat, x = _check_images(x_hat, x)
    taps = _gaussian_1d(_GAUSSIAN_SIZE, _GAUSSIAN_SIGMA)
    pad = _GAUSSIAN_SIZE // 2

    def to_volume(v):  # [N, H, W, C] -> [C, N + 2p, H, W] (the batch as depth, zero padded)
        return jnp.pad(jnp.transpose(v, (3, 0, 1, 2)), ((0, 0), (pad, pad), (0, 0), (0, 0)))

    def filt(v):  # depth filter (valid, after the padding), then H and W via _filter_valid (pad 5)
        depth = v.shape[1] - len(taps) + 1
        v = sum(float(t) * v[:, i:i + depth] for i, t in enumerate(taps))
        c, n, h, w = v.shape
        flat = jnp.pad(v.reshape(c * n, h, w, 1), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        return _filter_valid(flat, taps).reshape(c, n, h, w)

    a, b = to_volume(x_hat), to_volume(x)
    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b, cov = filt(a * a) - mu_a ** 2, filt(b * b) - mu_b ** 2, filt(a * b) - mu_a * mu_b
    c1, c2 = _K1 ** 2, _K2 ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return jnp.mean(ssim_map)


def siftfunnel_metrics(x_hat: jax.typing.ArrayLike, x: jax.typing.ArrayLike, *, batch_size: int = 32,
                       min_mse: float = MIN_MSE) -> dict[str, jax.Array]:
    """The SiftFunnel reference's reconstruction numbers (`compat="siftfunnel"`), scalars.

    In consecutive batches of `batch_size` (the last may be smaller), averaged over batches:
    - "mse": Σ squared error / (N·H·W) (channels summed, not averaged);
    - "psnr": 20·log10(1/√MSE_b) with MSE_b the batch's mean squared error per element;
    - "ssim": `ssim_3d` of the batch;
    - "cosine": the mean per-image cosine similarity of the flattened images.

    Raises:
        ValueError: on bad shapes or values, or batch_size < 1.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"expected batch_size to be an int >= 1, got {batch_size!r}")
    x_hat, x = _check_images(x_hat, x)
    out = {"mse": [], "psnr": [], "ssim": [], "cosine": []}
    for s in range(0, x.shape[0], batch_size):
        a, b = x_hat[s:s + batch_size], x[s:s + batch_size]
        sq = jnp.square(a - b)
        out["mse"].append(jnp.sum(sq) / (b.shape[0] * b.shape[1] * b.shape[2]))
        out["psnr"].append(20.0 * jnp.log10(1.0 / jnp.sqrt(jnp.maximum(jnp.mean(sq), min_mse))))
        out["ssim"].append(ssim_3d(a, b))
        out["cosine"].append(jnp.mean(cosine_similarity(a, b)))
    return {k: jnp.mean(jnp.stack(v)) for k, v in out.items()}
