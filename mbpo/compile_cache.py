"""jax's persistent compilation cache, so that the second run of a configuration starts in a
fraction of the first (a Brax update compiles for 30 s to minutes on a CPU).

``mbpo train``, ``mbpo evaluate`` and the experiment scripts turn it on before anything
compiles, in the folder of ``--compile-cache DIR`` (``off``: no cache), else of the environment
variable ``MBPO_COMPILE_CACHE`` (a folder or ``off``), else
``$XDG_CACHE_HOME/mbpo/jax`` (``~/.cache/mbpo/jax``). The cache is keyed by jax on the program, the
jax and XLA versions and the device, so a stale entry is never used; delete the folder to reclaim
its space (:func:`size_bytes` measures it). The test suite sets ``MBPO_COMPILE_CACHE=off`` and
shares one cache of its own, fresh each session, between its tests (tests/conftest.py).
"""

from __future__ import annotations

import os
import pathlib

ENV = "MBPO_COMPILE_CACHE"
OFF = "off"


def default_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/mbpo/jax``, or ``~/.cache/mbpo/jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "mbpo" / "jax"


def resolve(setting: str | os.PathLike | None = None) -> pathlib.Path | None:
    """The cache folder of ``setting`` (a folder, ``"off"``, or None: ``$MBPO_COMPILE_CACHE``,
    else :func:`default_dir`); None when off."""
    if setting is None:
        setting = os.environ.get(ENV) or default_dir()
    if str(setting) == OFF:
        return None
    return pathlib.Path(setting).expanduser()


def enable(
    setting: str | os.PathLike | None = None, *, min_compile_secs: float = 0.0
) -> pathlib.Path | None:
    """Turns jax's persistent compilation cache on in :func:`resolve`'s folder (created if
    missing) for every program that compiles for at least ``min_compile_secs`` (default: all);
    returns the folder, or None when off. Raises ValueError naming the folder when it cannot be
    created or written."""
    path = resolve(setting)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"compile cache {str(path)!r} cannot be created: {error}") from None
    if not os.access(path, os.W_OK):
        raise ValueError(
            f"compile cache {str(path)!r} is not writable; give another with "
            f"--compile-cache DIR or {ENV}=DIR, or turn it off with {OFF}"
        )
    import jax

    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def size_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk under ``path`` (0 if it does not exist)."""
    root = pathlib.Path(path)
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.exists() else 0
