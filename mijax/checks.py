"""Input checks shared by the public functions: each raises `ValueError` naming the argument, what
was expected and what came. Values traced inside `jit`/`vmap`/`grad` cannot be inspected and pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(*values) -> bool:
    """True when none of `values` (pytrees) holds a tracer."""
    return not any(isinstance(leaf, jax.core.Tracer) for v in values for leaf in jax.tree.leaves(v))


def finite(name: str, values) -> None:
    """Raises unless every entry of `values` is finite (NaN and ±inf are rejected)."""
    if not is_concrete(values):
        return
    array = np.asarray(values)
    if array.size and not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"expected finite {name}, got {bad} NaN or infinite entries")


def unit_interval(name: str, values) -> None:
    """Raises unless every entry of `values` is a finite number in [0, 1]."""
    finite(name, values)
    if not is_concrete(values):
        return
    array = np.asarray(values)
    if array.size and (array.min() < 0 or array.max() > 1):
        raise ValueError(f"expected {name} in [0, 1], got values in [{array.min():.3g}, {array.max():.3g}]")


def class_labels(name: str, labels, num_classes: int) -> None:
    """Raises unless `labels` are integers in [0, num_classes)."""
    if not is_concrete(labels):
        return
    array = np.asarray(labels)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"expected integer {name}, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f"expected {name} in [0, {num_classes}), got values in [{array.min()}, {array.max()}]")


def check_scalar(name: str, value, *, low: float = 0.0, high: float | None = None,
                 open_low: bool = False) -> jax.Array:
    """`value` as a float32 array; raises unless a concrete value is a finite scalar in [low, high]
    ((low, high] with `open_low`). Traced values (inside `jit`/`vmap`) cannot be checked and pass."""
    array = jnp.asarray(value, jnp.float32)
    if is_concrete(array):
        concrete = np.asarray(array)
        if concrete.ndim != 0:
            raise ValueError(f"expected {name} to be a scalar, got shape {concrete.shape}")
        below = concrete <= low if open_low else concrete < low
        if not np.isfinite(concrete) or below or (high is not None and concrete > high):
            bounds = f"{'>' if open_low else '>='} {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"expected {name} {bounds}, got {float(concrete)}")
    return array


def nonempty(name: str, shape) -> None:
    """Raises when the leading (batch) axis of `shape` is 0."""
    if len(shape) and shape[0] == 0:
        raise ValueError(f"expected at least one example in {name}, got shape {tuple(shape)}")
