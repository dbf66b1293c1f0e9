"""jax's persistent compilation cache, so that the second run of a configuration starts in a
fraction of the first (a Brax update compiles for 30 s to minutes on a CPU).

``mbpo train``, ``mbpo evaluate`` and the experiment scripts turn it on before anything
compiles, in the folder of ``--compile-cache DIR`` (``off``: no cache), else of the environment
variable ``MBPO_COMPILE_CACHE`` (a folder or ``off``), else
``$XDG_CACHE_HOME/mbpo/jax`` (``~/.cache/mbpo/jax``). The cache is keyed by jax on the program, the
jax and XLA versions and the device, so a stale entry is never used; delete the folder to reclaim
its space (:func:`size_bytes` measures it). The test suite sets ``MBPO_COMPILE_CACHE=off`` and
shares one cache of its own, fresh each session, between its tests (tests/conftest.py).

jax's cache keeps XLA's compiled programs but a second start still traces and lowers them: for a
Brax update, 14 s of a 35 s start (experiments/results/bench_compile_cache_anatomy_cpu.md).
So beside it, in ``programs/`` of the same folder, :func:`call_stored` keeps the training loop's
programs as ``jax.export`` serializations (StableHLO) and a second start loads them instead of
tracing. A stored program is found only under a digest of everything that shapes it: the
trainer's build function and config (registered tasks only: a trainer of user dynamics is never
stored), which program and its static arguments, the shapes, dtypes and structure of its
arguments, the source of the ``mbpo`` and ``envs`` packages, the versions of jax, jaxlib, flax,
optax, diffrax, brax, mujoco and numpy, the Python version, the backend and device, and the jax
settings that change tracing (x64, matmul precision, PRNG). Any program that ``jax.export``
cannot serialize runs as before, with a warning. The same program runs on the first start and
every later one (the loaded program, not a fresh trace), so they give the same bits.

Beside each program its compiled XLA executable is stored too (``<digest>-<machine>.xla``), so a
later start neither lowers the program nor looks it up in jax's cache; it is found only on a
machine with the same XLA flags and processor (:func:`_machine_tag`), one that cannot be loaded
is deleted with a warning and compiled again, and a backend that cannot serialize its
executables compiles through jax's cache as before.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import re
import sys
import warnings
import zlib
from collections.abc import Callable
from typing import Any

ENV = "MBPO_COMPILE_CACHE"
OFF = "off"
PROGRAMS = "programs"  # the stored programs' subfolder of the cache folder
EXECUTABLE = ".xla"  # the suffix of a stored program's compiled XLA executable
# Distributions whose code shapes a traced program (beside mbpo's and envs' own source).
TRACED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "diffrax", "brax", "mujoco", "numpy")
# jax settings that change what a function traces to.
TRACE_SETTINGS = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_default_prng_impl",
    "jax_threefry_partitionable",
    "jax_numpy_rank_promotion",
    "jax_numpy_dtype_promotion",
    "jax_enable_checks",
)

_store: pathlib.Path | None = None  # where call_stored keeps programs; None: off
_loaded: dict[str, Callable] = {}  # digest -> its loaded, compiled program
_unstorable: set[str] = set()  # digests whose program jax.export refused (warned once)
# digest -> its program, while its executable was read from disk and has not run yet
_untried: dict[str, Any] = {}
_cache_hits = [0]  # jax's persistent-cache hits in this process, since the first stored program


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
    missing) for every program that compiles for at least ``min_compile_secs`` (default: all),
    and the store of traced programs (:func:`call_stored`) in its ``programs/``; returns the
    folder, or None when off (the store off too). Raises ValueError naming the folder when it
    cannot be created or written."""
    global _store
    _store = None
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
    _store = path / PROGRAMS
    return path


@functools.cache
def _listen_for_cache_hits() -> bool:
    """Whether jax's cache hits are counted (a jax without its monitoring hooks: no executable is
    stored, since a fresh one cannot be told from a cached one)."""
    import jax

    try:
        jax.monitoring.register_event_listener(_count_cache_hit)
    except Exception:  # an API that moved: programs compile through jax's cache as before
        return False
    return True


def size_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk under ``path`` (0 if it does not exist)."""
    root = pathlib.Path(path)
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.exists() else 0


def _source_fingerprint() -> str:
    """sha256 of the traced packages' versions, Python's, and every .py file of mbpo and envs;
    recomputed when a file's size or modification time changes (a module edited and reloaded in
    a live session gets a new fingerprint, not the programs of the old code)."""
    import envs
    import mbpo

    files = [
        file
        for package in (mbpo, envs)
        for file in sorted(pathlib.Path(package.__file__).parent.rglob("*.py"))
    ]
    stamps = tuple((str(f), (st := f.stat()).st_mtime_ns, st.st_size) for f in files)
    return _fingerprint_of(stamps)


@functools.lru_cache(maxsize=4)
def _fingerprint_of(stamps: tuple) -> str:
    digest = hashlib.sha256(sys.version.encode())
    for name in TRACED_PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "-"
        digest.update(f"{name}={version};".encode())
    for path, _, _ in stamps:
        file = pathlib.Path(path)
        digest.update(f"{file.parent.name}/{file.name}".encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def _digest(key: str, treedef, leaves: list) -> str:
    import jax

    device = jax.devices()[0]
    parts = [
        key,
        _source_fingerprint(),
        f"{jax.default_backend()}:{device.device_kind}",
        *(f"{name}={jax.config.values.get(name)!r}" for name in TRACE_SETTINGS),
        # Static fields may hold functions (a TrainState's optimizer): drop their addresses,
        # which change every process; what they compute is in the key and the source.
        re.sub(r" at 0x[0-9a-f]+", "", str(treedef)),
        *(str(jax.typeof(leaf)) for leaf in leaves),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def call_stored(
    key: str | None,
    body: Callable,
    fallback: Callable,
    state: Any,
    *args: Any,
    keeps_state: bool = True,
    out_def: Callable[[], Any] | None = None,
) -> Any:
    """``body(state, *args)`` through the program store: the stored ``jax.export`` of it when
    there is one for this call (loaded once per process), else exported, stored and then loaded;
    ``fallback(state, *args)`` (the same computation, jitted as usual) when the store is off,
    ``key`` is None or the program cannot be exported.

    Args:
      key: names the program completely with everything that is not an argument (the trainer's
        build and config, which program, its static arguments); None: never stored.
      body: the pure function; with ``keeps_state`` it returns ``(state', extra)`` where
        ``state'`` has ``state``'s pytree structure and ``extra`` is made of arrays, lists,
        tuples and dicts only (a serialized program keeps only such output structures);
        without, its result is made of those only, unless ``out_def`` is given.
      fallback: the same computation as ``body``, for when the store is not used.
      state, args: its arguments (pytrees of arrays).
      out_def: without ``keeps_state``: gives the treedef of ``body``'s result (say, from
        ``jax.eval_shape``, which traces but neither lowers nor compiles), for a result with other
        pytree nodes (a train state); called only when the store is used.
    """
    import jax

    if _store is None or key is None or jax.device_count() > 1:
        return fallback(state, *args)
    leaves, treedef = jax.tree.flatten((state, args))
    digest = _digest(key, treedef, leaves)
    if digest in _unstorable:
        return fallback(state, *args)
    part_def = jax.tree.structure(state) if keeps_state else out_def and out_def()
    run = _loaded.get(digest) or _load(digest, leaves)
    if run is None:
        run = _export(digest, key, body, treedef, part_def, leaves, keeps_state)
        if run is None:
            return fallback(state, *args)
    out = _first_run(digest, run, leaves) if digest in _untried else run(*leaves)
    if keeps_state:
        new_leaves, extra = out
        return jax.tree.unflatten(part_def, new_leaves), extra
    return out if part_def is None else jax.tree.unflatten(part_def, out)


def _first_run(digest: str, run: Callable, leaves: list):
    """The first run of an executable read from disk: one that loads but cannot run (XLA:CPU's
    "Function ... not found" from a copy made of a deserialized one) is deleted with a warning,
    and the program compiled again as every start compiles it (a fresh executable is stored for
    the next start) and run (the arguments are not donated: it sees the same)."""
    import jax

    exported = _untried.pop(digest)
    try:
        return run(*leaves)
    except jax.errors.JaxRuntimeError as error:
        file = _executable_file(digest)
        warnings.warn(
            f"compiled program {file} does not run ({error}); compiling it again", stacklevel=3
        )
        with contextlib.suppress(OSError):
            file.unlink()
        return _loaded_call(digest, exported, leaves)(*leaves)


def _load(digest: str, leaves: list) -> Callable | None:
    file = _store / f"{digest}.jaxexport"
    if not file.exists():
        return None
    import jax

    try:
        exported = jax.export.deserialize(bytearray(file.read_bytes()))
    except Exception as error:  # a damaged or foreign file: export again over it
        warnings.warn(
            f"stored program {file} could not be read ({error}); tracing again", stacklevel=3
        )
        return None
    return _loaded_call(digest, exported, leaves)


def _loaded_call(digest: str, exported, leaves: list) -> Callable:
    """The compiled program of the deserialized ``exported`` for arguments like ``leaves`` (what
    every start runs): XLA's executable of it stored beside it when there is one, else the
    program lowered and compiled (from jax's cache when it has it) and its executable stored."""
    import jax

    compiled = _load_executable(digest, exported, leaves)
    if compiled is None:
        listening = _listen_for_cache_hits()
        hits = _cache_hits[0]
        compiled = jax.jit(exported.call).lower(*leaves).compile()
        # An XLA:CPU executable that jax's cache deserialized serializes without its functions
        # (jaxlib 0.10: "Function ... not found" when the copy runs): store only a fresh one.
        if listening and _cache_hits[0] == hits:
            _store_executable(digest, compiled)
    _loaded[digest] = compiled
    return compiled


def _count_cache_hit(event: str, **kwargs) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _cache_hits[0] += 1


@functools.lru_cache(maxsize=1)
def _machine_tag() -> str:
    """What an XLA executable is valid for beyond the program's digest (whose versions, backend
    and device kind it shares): XLA's flags and the host's processor (an executable compiled for
    one CPU's instructions must not run on another sharing the cache folder)."""
    import platform

    parts = [os.environ.get(name, "") for name in ("XLA_FLAGS", "LIBTPU_INIT_ARGS")]
    parts.append(platform.machine())
    with contextlib.suppress(OSError):
        lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
        parts += sorted({line for line in lines if line.startswith(("model name", "flags"))})
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _executable_file(digest: str) -> pathlib.Path:
    return _store / f"{digest}-{_machine_tag()}{EXECUTABLE}"


def _load_executable(digest: str, exported, leaves: list):
    """The stored XLA executable of program ``digest`` (no lowering, no compile-cache lookup), or
    None when there is none or it cannot be loaded (it is then compiled and stored again)."""
    import jax

    file = _executable_file(digest)
    if not file.exists():
        return None
    try:
        from jax.experimental import serialize_executable

        in_tree = jax.tree.structure((tuple(leaves), {}))
        compiled = serialize_executable.deserialize_and_load(
            zlib.decompress(file.read_bytes()), in_tree, exported.out_tree
        )
        _untried[digest] = exported
        return compiled
    except Exception as error:  # damaged, or from another jaxlib build: compile again
        warnings.warn(
            f"compiled program {file} could not be loaded ({error}); compiling it again",
            stacklevel=4,
        )
        with contextlib.suppress(OSError):
            file.unlink()  # a copy of what jax and the program beside it can make again
        return None


def _store_executable(digest: str, compiled) -> None:
    """Stores ``compiled``'s XLA executable for the next start; a backend that cannot serialize
    its executables (or a full disk) leaves the next start to compile it again, from jax's cache."""
    try:
        from jax.experimental import serialize_executable

        blob, _, _ = serialize_executable.serialize(compiled)
    except Exception:  # a backend that cannot: its programs compile through jax's cache again
        return
    # zlib: about a fifth of the size (a halfcheetah update's 45 MiB), 0.2 s to read back.
    _write_atomically(_executable_file(digest), zlib.compress(blob), "compiled program")


def _export(digest, key, body, treedef, part_def, leaves, keeps_state) -> Callable | None:
    """Exports ``body`` as a function of the flat leaves whose result has builtin containers only
    (``part_def``'s part flattened to its leaves), stores it, and returns its loaded call."""
    import jax

    def flat(*leaves):
        state, args = jax.tree.unflatten(treedef, leaves)
        out = body(state, *args)
        part, extra = out if keeps_state else (out, None)
        if part_def is None:
            return out
        if jax.tree.structure(part) != part_def:
            raise ValueError(f"the program's result is not structured as {part_def}")
        return (jax.tree.leaves(part), extra) if keeps_state else jax.tree.leaves(part)

    name = key.split("|", 1)[0]
    try:
        blob = jax.export.export(jax.jit(flat))(*leaves).serialize()
    except Exception as error:
        _unstorable.add(digest)
        warnings.warn(
            f"program {name!r} is not stored ({type(error).__name__}: {str(error)[:200]}); it "
            "is traced on every start",
            stacklevel=3,
        )
        return None
    _write_atomically(_store / f"{digest}.jaxexport", blob, f"program {name!r}")
    # The first start runs the program as read back, as every later start does.
    return _loaded_call(digest, jax.export.deserialize(bytearray(blob)), leaves)


def _write_atomically(file: pathlib.Path, blob: bytes, what: str) -> None:
    partial = file.with_name(f"{file.name}.{os.getpid()}.partial")
    try:
        _store.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(blob)
        os.replace(partial, file)  # whole or absent: a reader never sees half a program
    except OSError as error:  # a full disk, say: this run goes on, the next traces again
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        warnings.warn(f"{what} could not be stored in {_store}: {error}", stacklevel=4)
