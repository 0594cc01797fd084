"""Stacks of models (a σ×λ grid, ensemble members) as one program: `vmap`, `lax.map` or unrolled.

Every stacked run in mijax maps a function over a leading model axis through `map_models`, so the
form is chosen in one place (`stack_mode`, measured by `benchmarks/cem_grid.py --modes` and
`benchmarks/rmle.py`) and every form gives the same numbers (tested).
"""

from __future__ import annotations

import os
from typing import Callable, Literal, Sequence

import jax
import jax.numpy as jnp

from mijax import conv

StackMode = Literal["vmap", "map", "unroll"]
STACK_MODES: tuple[str, ...] = ("vmap", "map", "unroll")
MAP_GROUP = 2  # models per iteration of the "map" mode (the cores of the machine it was measured on)


def stack_mode(count: int, backend: str | None = None) -> StackMode:
    """The measured-fastest way to run a stack of `count` models on `backend` (default: JAX's).

    XLA-CPU (2 cores; `benchmarks/cem_grid.py`, `benchmarks/rmle.py`, `mijax demo`): independent
    models in one program run concurrently, one per core, so "map" (`lax.map` over unrolled pairs:
    two compiled copies) is the default: CEM grid 1.16× of 15 sequential steps (unroll 0.85×, vmap
    0.80×; interleaved rounds, 12-02), Ensembler's 10 members 1.16× a loop at inference (unroll
    1.07×, vmap 0.31×), `mijax demo` 30 s (vmap 35 s, unroll 34 s). Unrolling compiles one copy per
    model (75–96 s for the grid), so it is an override (`mode="unroll"`).
    Accelerators: `vmap`. `$MIJAX_STACK_MODE` overrides the choice.
    """
    override = os.environ.get("MIJAX_STACK_MODE")
    if override:
        if override not in STACK_MODES:
            raise ValueError(f"expected $MIJAX_STACK_MODE in {STACK_MODES}, got {override!r}")
        return override
    del count  # the measured choice does not depend on it yet; stacks of one are trivially the same
    return "vmap" if (backend or jax.default_backend()) != "cpu" else "map"


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
    outputs stacked along a new leading axis, computed as `mode` says (default `stack_mode(count)`):
    ``"vmap"``, ``"map"`` (`lax.map` over groups of `MAP_GROUP` models, each group unrolled) or
    ``"unroll"`` (every model unrolled in the trace: fastest on CPU, one compiled copy per model).
    `stacked_weights`: the mapped arguments hold convolution kernels (a stack of models), so under ``"vmap"`` the convolutions are planned for batched kernels; False for a
    sweep over data or defense settings with shared weights, which `vmap` folds into the batch.
    """
    if mode is not None and mode not in STACK_MODES:
        raise ValueError(f"expected mode in {STACK_MODES}, got {mode!r}")
    in_axes = tuple(in_axes)
    if any(axis not in (0, None) for axis in in_axes):
        raise ValueError(f"expected in_axes entries 0 or None, got {in_axes}")
    vmapped = vmap_models(fn, in_axes, stacked_weights=stacked_weights)

    def call(*args):
        if len(args) != len(in_axes):
            raise ValueError(f"expected {len(in_axes)} arguments (one per in_axes entry), got {len(args)}")
        mapped = tuple(a for a, axis in zip(args, in_axes) if axis == 0)
        count = jax.tree.leaves(mapped)[0].shape[0]
        chosen = mode or stack_mode(count)
        if chosen == "vmap":
            return vmapped(*args)

        def one(slices):
            it = iter(slices)
            return fn(*(next(it) if axis == 0 else a for a, axis in zip(args, in_axes)))

        def unrolled(slices):
            count = jax.tree.leaves(slices)[0].shape[0]
            outs = [one(jax.tree.map(lambda a: a[i], slices)) for i in range(count)]
            return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

        if chosen == "unroll":
            return unrolled(mapped)
        # lax.map over groups of MAP_GROUP models, each group unrolled: XLA-CPU runs the models of a
        # group concurrently (one per core), and compiles MAP_GROUP copies, not one per model.
        group = min(MAP_GROUP, count)
        full = count // group * group
        head = jax.tree.map(lambda a: a[:full].reshape(full // group, group, *a.shape[1:]), mapped)
        out = jax.tree.map(lambda a: a.reshape(full, *a.shape[2:]), jax.lax.map(unrolled, head))
        if full == count:
            return out
        tail = unrolled(jax.tree.map(lambda a: a[full:], mapped))
        return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, tail)

    return call
