import os

# The suite's programs are tiny: most of its time is XLA:CPU compiling them, not running them.
# Two compiler settings that change no HLO (XLA's own passes: fusion, simplification, layout, run
# as always), only how the fused kernels become machine code:
# - LLVM's optimization level 0 compiles about a quarter faster;
# - XLA:CPU's classic elemental emitters instead of its MLIR fusion emitters compile the suite's
#   programs in about half the time (tests/agents/test_off_policy.py, test_ppo.py and
#   test_unroll.py, serial, without the shared cache: 60 s of XLA compile -> 27 s).
# Set before jax creates its CPU client; subprocesses inherit them. MBPO_TEST_XLA_DEFAULT=1 runs
# the suite with XLA's defaults.
if not os.environ.get("MBPO_TEST_XLA_DEFAULT"):
    for flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
        if flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()

# No persistent compilation cache in tests (mbpo.compile_cache), unless a test is about it.
os.environ["MBPO_COMPILE_CACHE"] = "off"

import jax
import numpy as np
import pytest


def pytest_collection_modifyitems(config, items):
    """The tests marked slow first (in their collection order), so that the xdist workers end on
    short tests instead of one worker finishing a long one alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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
def _session_compile_cache(tmp_path_factory):
    """One persistent compilation cache for this test session, shared by its xdist workers, so a
    program that several tests build (the same tiny trainer, the same evaluation) compiles once:
    most of the suite's time is XLA compiling. It lives in this session's temporary folder (new
    each session; pytest keeps only the last three), never in the user's cache
    (MBPO_COMPILE_CACHE stays off for the code under test). MBPO_TEST_COMPILE_CACHE=off compiles
    every program in every test."""
    if os.environ.get("MBPO_TEST_COMPILE_CACHE") == "off":
        yield None
        return
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the workers' basetemps are siblings of one folder per session
    path = base / "compile-cache"
    path.mkdir(exist_ok=True)
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    previous = [getattr(jax.config, name) for name in names]
    for name, value in zip(names, (str(path), 0.0, 0)):
        jax.config.update(name, value)
    yield path
    for name, value in zip(names, previous):
        jax.config.update(name, value)
