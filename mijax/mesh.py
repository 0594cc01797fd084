"""Device meshes: data-parallel and sweep-parallel runs on one or many devices and hosts.

A `jax.sharding.Mesh` with two axes,

- `data`: batches are split over it (each device computes its part of the batch; GSPMD adds the
  reductions, so batch-level terms such as BatchNorm statistics, CEM's segment sums or dCor are
  computed over the **global** batch, exactly as on one device);
- `model`: the leading model axis of a stacked sweep (the σ×λ grid, ensemble members) is split
  over it; otherwise the state is replicated.

Everything that crosses into a compiled program goes through `replicate` / `shard` here, so the
placement is declared in one place. Arrays are built with `jax.make_array_from_callback` from the
host data every process holds, which makes the same code run on one process or many
(`jax.distributed.initialize()`, see `initialize`). Random numbers do not depend on the mesh
(`jax_threefry_partitionable`, on by default in current JAX and asserted here).

Example:
    >>> mesh = mijax.mesh.make_mesh("data:4,model:2")
    >>> state = mijax.train.fit(model, x, y, ..., mesh=mesh)
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "model")


def parse_mesh(text: str) -> dict[str, int]:
    """`"data:4,model:2"` → `{"data": 4, "model": 2}` (missing axes are 1; "data:-1" takes the rest)."""
    shape = {"data": 1, "model": 1}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        name, _, size = part.partition(":")
        if name not in AXES or not size.lstrip("-").isdigit() or int(size) == 0 or int(size) < -1:
            raise ValueError(f"expected mesh as 'data:N,model:M' (axes {AXES}, sizes >= 1 or -1), got {text!r}")
        shape[name] = int(size)
    return shape


def make_mesh(shape: str | dict[str, int] | None = None, *, devices=None) -> Mesh:
    """A `(data, model)` mesh over `devices` (default: all devices of all processes).

    Args:
        shape: `"data:4,model:2"`, a dict, or None for all devices on the data axis. A size of -1
            takes the devices the other axis leaves.

    Raises:
        ValueError: if the sizes do not multiply to the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = parse_mesh(shape) if isinstance(shape, str) else dict(shape or {"data": -1})
    shape = {axis: int(shape.get(axis, 1)) for axis in AXES}
    for axis in AXES:
        if shape[axis] == -1:
            other = math.prod(v for a, v in shape.items() if a != axis and v != -1)
            shape[axis] = len(devices) // max(other, 1)
    if math.prod(shape.values()) != len(devices):
        raise ValueError(f"expected mesh sizes that multiply to the {len(devices)} devices, got "
                         f"{', '.join(f'{a}:{v}' for a, v in shape.items())}")
    grid = np.asarray(devices, dtype=object).reshape(shape["data"], shape["model"])
    assert jax.config.jax_threefry_partitionable, "random numbers would depend on the mesh"
    return Mesh(grid, AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over `data`."""
    return NamedSharding(mesh, PartitionSpec("data"))


def stacked_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (model) axis of a stacked sweep split over `model`."""
    return NamedSharding(mesh, PartitionSpec("model"))


def _global(value, sharding: NamedSharding):
    """A global array with `sharding` from a host value that every process holds in full."""
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        data = _global(jax.random.key_data(value), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
    if isinstance(value, jax.Array) and value.is_fully_addressable and value.sharding == sharding:
        return value
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array of `tree` on every device of `mesh`."""
    return jax.tree.map(lambda a: _global(a, replicated(mesh)), tree)


def shard(tree: Any, mesh: Mesh, sharding: NamedSharding | None = None) -> Any:
    """Every array of `tree` with its leading axis split by `sharding` (default: over `data`)."""
    sharding = sharding or batch_sharding(mesh)
    return jax.tree.map(lambda a: _global(a, sharding) if np.ndim(a) else _global(a, replicated(mesh)), tree)


def put_batch(batch: Any, mesh: Mesh | None, *, split: bool = True) -> Any:
    """A host batch as the mesh wants it: split over `data` when it divides evenly, else replicated
    (unchanged without a mesh)."""
    if mesh is None:
        return batch
    if split and np.ndim(batch) and len(batch) % mesh.shape["data"] == 0:
        return shard(batch, mesh)
    return replicate(batch, mesh)


def constrain_batch(tree: Any, mesh: Mesh | None) -> Any:
    """Inside a compiled step: the batch's leading axis split over `data` (no-op without a mesh)."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, batch_sharding(mesh))


def initialize() -> bool:
    """`jax.distributed.initialize()` when launched as one of several processes; returns whether it did.

    Detects the launcher's variables (`JAX_COORDINATOR_ADDRESS` with `JAX_NUM_PROCESSES` and
    `JAX_PROCESS_ID`, or what `jax.distributed` detects itself on Slurm, Open MPI and TPU pods). On
    CPU the cross-process collectives use gloo.
    """
    if os.environ.get("JAX_COORDINATOR_ADDRESS") is None:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
    return True
