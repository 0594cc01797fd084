"""JAX's persistent compilation cache, switched on by `mijax run` and `mijax demo`.

An experiment compiles programs that are identical but built from fresh Python closures (He et al.'s
three inverse-network settings per cut train the same decoder), and `jax.jit`'s in-memory cache,
keyed by the Python function, compiles each again. The on-disk cache is keyed by the program itself,
so those repeats load from disk (the he2019 smoke preset: XLA compilation 104 → 87 s), and a rerun
compiles almost nothing (4 min 48 s → 3 min 52 s; BENCHMARKS.md).
"""

from __future__ import annotations

import os
import pathlib

import jax

#: Programs that compile faster than this are not written (reading one back costs about as much).
MIN_COMPILE_SECONDS = 0.25
#: The cache's size bound; least recently used entries go first (this also enables JAX's file lock,
#: so processes that share the folder, e.g. pytest-xdist workers, do not read half-written entries).
MAX_BYTES = 4 << 30


def default_directory() -> pathlib.Path:
    cache_home = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(cache_home) / "mijax" / "xla"


def enable(directory: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Points JAX's persistent compilation cache at `directory` and returns it.

    Without `directory`: `$JAX_COMPILATION_CACHE_DIR` if set (left as JAX reads it), else
    `$MIJAX_COMPILATION_CACHE`, else `~/.cache/mijax/xla`; `MIJAX_COMPILATION_CACHE=off` turns the
    cache off (returns None). Must run before the first compilation to cover it. The cache is trusted
    code: keep it in a folder only you can write.
    """
    if directory is None:
        if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
            return pathlib.Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
        setting = os.environ.get("MIJAX_COMPILATION_CACHE", "")
        if setting.lower() in ("off", "0", "false", "no"):
            return None
        directory = setting or default_directory()
    path = pathlib.Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return path
