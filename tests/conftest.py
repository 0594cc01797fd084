"""Shared fixtures: where the real datasets are, and a session-wide tfds cache."""

import os
import pathlib

import pytest

# The suite is compile-bound on CPU (tiny shapes, many programs): LLVM's O0 halves XLA-CPU compile time
# (CI 12-02: the whole suite in 14 min at O0 against 25 min at O1). Results differ from XLA's default
# level only by float reassociation; benchmarks and users' runs keep the default. Set before jax starts;
# subprocesses inherit it.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

REPO = pathlib.Path(__file__).resolve().parent.parent

# Tests in different files and workers compile many identical programs: they share them through JAX's
# on-disk cache, one per checkout (MIJAX_COMPILATION_CACHE=off runs the suite without it).
os.environ.setdefault("MIJAX_COMPILATION_CACHE", str(REPO / ".pytest_cache" / "xla"))
from mijax import compilation_cache  # noqa: E402  (after XLA_FLAGS: importing mijax starts jax)

compilation_cache.enable()


def _shared_data_dir() -> pathlib.Path | None:
    env = os.environ.get("MIJAX_DATA_DIR")
    candidate = pathlib.Path(env) if env else REPO.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """The folder with the official dataset files (`../shared/data`); skips when absent."""
    path = _shared_data_dir()
    if path is None:
        pytest.skip("real data not found: set MIJAX_DATA_DIR or place ../shared/data beside the repo")
    return path


@pytest.fixture(scope="session", autouse=True)
def _tfds_cache(tmp_path_factory):
    """Prepared tfds datasets go to one cache per test session unless MIJAX_TFDS_DIR is set."""
    if "MIJAX_TFDS_DIR" not in os.environ:
        os.environ["MIJAX_TFDS_DIR"] = str(tmp_path_factory.mktemp("tfds"))
    yield
