"""Feature standardisation for learned inversion: the attacker rescales z̃ before its decoder.

A defense can shrink the transmitted features (SiftFunnel's funnel sends channels with standard
deviations of 1e-4 to 0.03 at the smoke budget, five of twelve exactly zero), so a decoder trained
with a fixed budget learns only the mean image although the features still carry the input. The
attacker knows nothing it may not: it estimates per-channel statistics from its own queries of its
own auxiliary images, as any practitioner standardises inputs, and decodes `(z̃ − μ) / σ`.

Example:
    >>> mean, std = feature_statistics(oracle, aux_images, key=jax.random.key(7))
    >>> decoder = standardize_input(decoder_for(shape, image_shape), mean=mean, std=std)
    >>> trained = train_decoder_attack(decoder, oracle, aux_images, key=key)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mijax.attacks.knowledge import BlackBox
from mijax.nn import Pure


def feature_statistics(oracle: BlackBox, images, *, key: jax.Array, batch_size: int = 256,
                       floor: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of the oracle's features on the attacker's images.

    Statistics run over every axis but the last (batch and space); channels that never vary get
    `floor` as their deviation, so standardising them leaves them at zero instead of dividing by 0.

    Args:
        oracle: the deployed edge the attacker may query.
        images: the attacker's images `[num, *oracle.input_shape]` in [0, 1].
        key: draws a stochastic oracle's noise (one key per batch).
        batch_size: images per query.
        floor: smallest deviation returned.

    Returns:
        `(mean, std)`, each of the features' channel shape.

    Raises:
        TypeError: if `oracle` is not a `BlackBox`.
        ValueError: on images of the wrong shape, no images, or a non-positive batch size or floor.
    """
    if not isinstance(oracle, BlackBox):
        raise TypeError(f"expected oracle as a BlackBox, got {type(oracle).__name__}")
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or tuple(images.shape[1:]) != oracle.input_shape or not len(images):
        raise ValueError(f"expected images of shape [num >= 1, {', '.join(map(str, oracle.input_shape))}], "
                         f"got {images.shape}")
    if batch_size < 1 or not floor > 0:
        raise ValueError(f"expected batch_size >= 1 and floor > 0, got {batch_size}, {floor}")
    total = total_sq = count = 0.0
    for i, start in enumerate(range(0, len(images), batch_size)):
        z = np.asarray(oracle.query(images[start:start + batch_size], key=jax.random.fold_in(key, i)), np.float64)
        flat = z.reshape(-1, z.shape[-1])
        total, total_sq, count = total + flat.sum(0), total_sq + np.square(flat).sum(0), count + len(flat)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return mean.astype(np.float32), np.maximum(std, floor).astype(np.float32)


def standardize_input(decoder: Pure, *, mean, std) -> Pure:
    """The decoder applied to `(z − mean) / std` (per channel, the last axis).

    Args:
        decoder: `[batch, *feature] -> [batch, *image]`.
        mean, std: `[channels]` (`feature_statistics`); `std` positive.

    Returns:
        A `Pure` with the decoder's variables; the statistics are constants of the attack.

    Raises:
        TypeError: if `decoder` is not a `Pure`.
        ValueError: on statistics of different or non-vector shapes, or a non-positive `std`.
    """
    if not isinstance(decoder, Pure):
        raise TypeError(f"expected decoder as a Pure (init, apply), got {type(decoder).__name__}")
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if mean.ndim != 1 or mean.shape != std.shape:
        raise ValueError(f"expected mean and std of the same shape [channels], got {mean.shape}, {std.shape}")
    if not np.all(std > 0):
        raise ValueError(f"expected std > 0 in every channel, got min {std.min():.3g}")

    def apply(variables, z, **kwargs):
        z = jnp.asarray(z)
        if z.shape[-1] != mean.shape[0]:
            raise ValueError(f"expected features with {mean.shape[0]} channels (the statistics'), got {z.shape}")
        return decoder.apply(variables, (z - mean) / std, **kwargs)

    return Pure(decoder.init, apply)
