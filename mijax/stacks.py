"""Stacks of models (a σ×λ grid, ensemble members) as one program: `vmap`, `lax.map` or unrolled.

Every stacked run in mijax maps a function over a leading model axis through `map_models`, so the
form is chosen in one place (`stack_mode`, measured by `benchmarks/cem_grid.py --modes`) and every
form gives the same numbers (tested).
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp

from mijax import conv

StackMode = Literal["vmap", "map", "unroll"]
STACK_MODES: tuple[str, ...] = ("vmap", "map", "unroll")


def stack_mode(backend: str | None = None) -> StackMode:
    """The measured-fastest way to run a stack of models on `backend` (default: JAX's default).

    On XLA-CPU (2 cores) `vmap` with im2col convolutions (`mijax.conv.stacked_kernels`) is fastest
    for the CEM grid step (BENCHMARKS.md, `benchmarks/cem_grid.py --modes`); on accelerators `vmap`.
    """
    return "vmap"


def vmap_models(fn: Callable, in_axes, out_axes=0, *, stacked_weights: bool = True) -> Callable:
    """`jax.vmap(fn, in_axes, out_axes)` over stacked models; with `stacked_weights` the convolutions
    are planned for batched kernels (`mijax.conv.stacked_kernels`). For states that mix stacked and
    shared parts (any `in_axes` pytree)."""
    batched = jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)
    if not stacked_weights:
        return batched

    def call(*args):
        with conv.stacked_kernels():
            return batched(*args)
    return call


def map_models(fn: Callable, in_axes: Sequence[int | None], *, mode: StackMode | None = None,
               stacked_weights: bool = True) -> Callable:
    """`fn` mapped over the leading axis of the arguments whose `in_axes` entry is 0.

    Like `jax.vmap(fn, in_axes)` with `in_axes` a tuple of 0 / None per positional argument, with
    outputs stacked along a new leading axis, computed as `mode` says (default `stack_mode()`):
    ``"vmap"``, ``"map"`` (`lax.map`: one model at a time inside a loop) or ``"unroll"`` (a Python
    loop inside the trace). `stacked_weights`: the mapped arguments hold convolution kernels (a stack
    of models), so under ``"vmap"`` the convolutions are planned for batched kernels; False for a
    sweep over data or defense settings with shared weights, which `vmap` folds into the batch.
    """
    mode = mode or stack_mode()
    if mode not in STACK_MODES:
        raise ValueError(f"expected mode in {STACK_MODES}, got {mode!r}")
    in_axes = tuple(in_axes)
    if any(axis not in (0, None) for axis in in_axes):
        raise ValueError(f"expected in_axes entries 0 or None, got {in_axes}")

    if mode == "vmap":
        return vmap_models(fn, in_axes, stacked_weights=stacked_weights)

    def call(*args):
        if len(args) != len(in_axes):
            raise ValueError(f"expected {len(in_axes)} arguments (one per in_axes entry), got {len(args)}")
        mapped = tuple(a for a, axis in zip(args, in_axes) if axis == 0)

        def one(slices):
            it = iter(slices)
            return fn(*(next(it) if axis == 0 else a for a, axis in zip(args, in_axes)))

        if mode == "map":
            return jax.lax.map(one, mapped)
        count = jax.tree.leaves(mapped)[0].shape[0]
        outs = [one(jax.tree.map(lambda a: a[i], mapped)) for i in range(count)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return call
