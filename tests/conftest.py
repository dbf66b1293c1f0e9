import os

# The suite's programs are tiny: most of its time is XLA:CPU compiling them, not running them.
# LLVM's optimization level 0 compiles them about a quarter faster and changes no HLO (XLA's own
# passes: fusion, simplification, layout, run as always). Set before jax creates its CPU client;
# subprocesses inherit it. MBPO_TEST_XLA_DEFAULT=1 runs the suite with XLA's default level.
if not os.environ.get(
    "MBPO_TEST_XLA_DEFAULT"
) and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

# No persistent compilation cache in tests (mbpo.compile_cache), unless a test is about it.
os.environ["MBPO_COMPILE_CACHE"] = "off"

import jax
import numpy as np
import pytest


@pytest.fixture
def x64():
    """Runs a test in float64 (finite-difference and closed-form checks need it)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def central_difference(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Jacobian of f at x by central differences, shape f(x).shape + x.shape (float64 numpy)."""
    x = np.asarray(x, np.float64)
    f0 = np.asarray(f(x))
    jac = np.zeros(f0.shape + x.shape)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        jac[(..., *idx)] = (np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * h)
    return jac


@pytest.fixture(scope="session", autouse=True)
def _shared_cache(tmp_path_factory):
    if os.environ.get("MBPO_TEST_SHARED_CACHE"):
        path = os.environ["MBPO_TEST_SHARED_CACHE"]
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
