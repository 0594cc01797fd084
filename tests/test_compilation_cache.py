"""`mijax.compilation_cache`: where it points JAX's cache, and that a repeated program loads from it."""

import os
import subprocess
import sys

import pytest

from mijax import compilation_cache

# Two jitted closures with the same program: the second must not compile (JAX logs the hit).
_SCRIPT = """
import jax, jax.numpy as jnp
from mijax import compilation_cache
print(compilation_cache.enable())
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
def make():
    return jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
for _ in range(2):
    make()(jnp.ones((8, 8))).block_until_ready()
"""


def _run(env_update):
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "MIJAX_COMPILATION_CACHE")}
    env.update(env_update, JAX_LOG_COMPILES="1")
    return subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, check=True)


def test_a_repeated_program_loads_from_the_folder(tmp_path):
    result = _run({"MIJAX_COMPILATION_CACHE": str(tmp_path / "xla")})
    assert result.stdout.strip() == str(tmp_path / "xla")
    assert any((tmp_path / "xla").iterdir())
    assert "Persistent compilation cache hit" in result.stderr


def test_off_disables_it():
    result = _run({"MIJAX_COMPILATION_CACHE": "off"})
    assert result.stdout.strip() == "None"
    assert "Persistent compilation cache hit" not in result.stderr


def test_jax_own_setting_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path))
    assert compilation_cache.enable() == tmp_path


@pytest.mark.parametrize("xdg", [None, "/somewhere"])
def test_default_directory(monkeypatch, xdg):
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    path = compilation_cache.default_directory()
    assert path.parts[-2:] == ("mijax", "xla")
    assert str(path).startswith(xdg or os.path.expanduser("~"))
