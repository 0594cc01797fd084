"""Orbax checkpoints for training runs: save periodically, resume on rerun."""

from __future__ import annotations

import pathlib
from typing import Any

import jax


class Checkpointer:
    """A thin wrapper around `orbax.checkpoint.CheckpointManager` for one pytree per step.

    Example:
        >>> ckpt = Checkpointer(workdir / "checkpoints")
        >>> state = ckpt.restore(state) if ckpt.latest_step() is not None else state
        >>> ckpt.save(step, state); ckpt.close()
    """

    def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 2):
        import orbax.checkpoint as ocp  # here, not at import: it takes a third of a second

        self._ocp = ocp
        self.directory = pathlib.Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        self._manager.save(int(step), args=self._ocp.args.StandardSave(state))

    def restore(self, like: Any, step: int | None = None) -> Any:
        """Restores the checkpoint at `step` (default: latest) into the structure of `like`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, like)
        return self._manager.restore(step, args=self._ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
