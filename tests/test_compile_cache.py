"""mbpo.compile_cache: where the cache goes, off by setting, and a second process reusing what the
first compiled (in subprocesses: the cache is process-wide jax configuration)."""

import csv
import dataclasses
import os
import pathlib
import subprocess
import sys
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from mbpo import compile_cache

PROGRAM = """
import jax, jax.numpy as jnp
from mbpo import compile_cache
print(compile_cache.enable())
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() + jnp.sin(x).mean())
print(float(f(jnp.ones((32, 32)))))
"""


def test_resolve_default_setting_and_off(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    assert compile_cache.resolve() == tmp_path / "mbpo" / "jax"
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.resolve() is None and compile_cache.enable() is None
    assert compile_cache.resolve(tmp_path / "c") == tmp_path / "c"


def test_an_unwritable_cache_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="compile cache .*file.* cannot be created"):
        compile_cache.enable(blocker / "cache")


def test_second_process_finds_the_first_ones_programs(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, compile_cache.ENV: str(cache)}

    def run():
        out = subprocess.run(
            [sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.split(), sorted(p.name for p in cache.rglob("*") if p.is_file())

    (path, value), first = run()
    assert pathlib.Path(path) == cache and first and compile_cache.size_bytes(cache) > 0
    (_, again), second = run()
    assert again == value and second == first  # nothing new compiled: every program was found


def test_mbpo_train_names_a_bad_cache_folder(tmp_path, capsys):
    from mbpo.main import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--env", "lqr", "--compile-cache", str(blocker / "c")])
    assert exit_info.value.code == 2
    assert "--compile-cache" in capsys.readouterr().err


# The program store (compile_cache.call_stored): jax.export'ed programs that a second start loads
# instead of tracing.


class Toy(struct.PyTreeNode):
    w: jax.Array
    n: jax.Array
    scale: Callable = struct.field(pytree_node=False)  # a function in the treedef's static data


def _toy_body(state: Toy, x):
    new = state.replace(w=state.scale(state.w) * x.sum(), n=state.n + 1)
    return new, {"loss": jnp.sum(state.w**2), "steps": [state.n, new.n]}


def _toy(size=3):
    return Toy(w=jnp.linspace(0.5, 1.5, size), n=jnp.int32(0), scale=jnp.tanh), jnp.ones(size)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty program store in tmp_path, as a fresh process sees it."""
    monkeypatch.setattr(compile_cache, "_store", tmp_path / "programs")
    monkeypatch.setattr(compile_cache, "_loaded", {})
    monkeypatch.setattr(compile_cache, "_unstorable", set())
    monkeypatch.setattr(compile_cache, "_untried", {})
    return tmp_path / "programs"


def _new_process(monkeypatch):
    monkeypatch.setattr(compile_cache, "_loaded", {})
    monkeypatch.setattr(compile_cache, "_unstorable", set())
    monkeypatch.setattr(compile_cache, "_untried", {})


def _same(a, b):
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def test_a_stored_program_is_loaded_by_the_next_process_and_gives_the_same_bits(store, monkeypatch):
    state, x = _toy(size=6)  # a size of its own: not in the session's jax cache
    expected = jax.jit(_toy_body)(state, x)
    first = compile_cache.call_stored("toy", _toy_body, jax.jit(_toy_body), state, x)
    assert _same(first, expected) and first[0].scale is jnp.tanh
    files = sorted(store.iterdir(), key=lambda f: f.suffix)
    assert [f.suffix for f in files] == [".jaxexport", compile_cache.EXECUTABLE]
    stamps = [f.stat().st_mtime_ns for f in files]

    _new_process(monkeypatch)

    def no_export(*args):
        raise AssertionError("traced again although the program is stored")

    def no_jit(*args, **kwargs):
        raise AssertionError("lowered and compiled again although its executable is stored")

    monkeypatch.setattr(compile_cache, "_export", no_export)
    monkeypatch.setattr(jax, "jit", no_jit)
    again = compile_cache.call_stored("toy", _toy_body, None, state, x)
    assert _same(again, expected) and [f.stat().st_mtime_ns for f in files] == stamps


def test_an_executable_that_cannot_be_loaded_or_is_for_another_machine_is_compiled_again(
    store, monkeypatch
):
    state, x = _toy(size=7)  # a size of its own: not in the session's jax cache
    expected = compile_cache.call_stored("toy", _toy_body, jax.jit(_toy_body), state, x)
    (executable,) = store.glob(f"*{compile_cache.EXECUTABLE}")
    executable.write_bytes(b"not an executable")
    _new_process(monkeypatch)
    with pytest.warns(UserWarning, match="could not be loaded"):
        out = compile_cache.call_stored("toy", _toy_body, None, state, x)
    # Replaced by a fresh one, or (found in jax's cache, whose copies are not stored) removed.
    assert _same(out, expected)
    assert not executable.exists() or executable.read_bytes() != b"not an executable"
    _new_process(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: the damaged file is gone
        assert _same(compile_cache.call_stored("toy", _toy_body, None, state, x), expected)
    _new_process(monkeypatch)
    opened = []
    monkeypatch.setattr(compile_cache, "_machine_tag", lambda: "other-xla-flags")
    monkeypatch.setattr(pathlib.Path, "read_bytes", lambda self: opened.append(self.name) or b"")
    with pytest.warns(UserWarning, match="could not be read"):  # the program itself reads b""
        compile_cache.call_stored("toy", _toy_body, jax.jit(_toy_body), state, x)
    assert not any(name.endswith(compile_cache.EXECUTABLE) for name in opened)


def test_an_executable_that_loads_but_does_not_run_is_deleted_and_compiled_again(
    store, monkeypatch
):
    from jax.experimental import serialize_executable

    state, x = _toy(size=9)  # a size of its own: not in the session's jax cache
    expected = compile_cache.call_stored("toy", _toy_body, None, state, x)
    (executable,) = store.glob(f"*{compile_cache.EXECUTABLE}")
    _new_process(monkeypatch)

    def broken(*args):
        raise jax.errors.JaxRuntimeError("NOT_FOUND: Function fusion not found (type id: 1)")

    load = serialize_executable.deserialize_and_load
    monkeypatch.setattr(serialize_executable, "deserialize_and_load", lambda *a: broken)
    stamp = executable.stat().st_mtime_ns
    hits = compile_cache._cache_hits[0]
    with pytest.warns(UserWarning, match="does not run"):
        out = compile_cache.call_stored("toy", _toy_body, None, state, x)
    assert _same(out, expected)
    if compile_cache._cache_hits[0] > hits:  # compiled from jax's cache: not stored, removed
        assert not executable.exists()
    else:  # compiled afresh: stored again for the next start
        assert executable.stat().st_mtime_ns != stamp
    assert _same(compile_cache.call_stored("toy", _toy_body, None, state, x), expected)
    monkeypatch.setattr(serialize_executable, "deserialize_and_load", load)
    _new_process(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the next start runs what was stored, or compiles
        assert _same(compile_cache.call_stored("toy", _toy_body, None, state, x), expected)


def test_an_executable_from_jax_cache_is_not_stored(store, monkeypatch):
    # What jax's cache deserialized does not serialize whole on XLA:CPU: a program that a stored
    # program's process finds in jax's cache runs, and its executable is not stored.
    state, x = _toy(size=8)
    expected = compile_cache.call_stored("toy", _toy_body, None, state, x)
    for file in store.iterdir():
        file.unlink()
    _new_process(monkeypatch)
    hits = compile_cache._cache_hits[0]
    out = compile_cache.call_stored("toy", _toy_body, None, state, x)
    if compile_cache._cache_hits[0] > hits:  # the suite's shared jax cache is on
        assert not list(store.glob(f"*{compile_cache.EXECUTABLE}"))
    _new_process(monkeypatch)
    assert _same(out, expected)
    assert _same(compile_cache.call_stored("toy", _toy_body, None, state, x), expected)


def test_the_digest_covers_the_key_shapes_and_dtypes(store):
    state, x = _toy()
    compile_cache.call_stored("toy", _toy_body, jax.jit(_toy_body), state, x)
    compile_cache.call_stored("toy-other-config", _toy_body, jax.jit(_toy_body), state, x)
    compile_cache.call_stored("toy", _toy_body, jax.jit(_toy_body), *_toy(size=4))
    compile_cache.call_stored("toy", _toy_body, jax.jit(_toy_body), state, x.astype(jnp.int32))
    assert len(list(store.glob("*.jaxexport"))) == 4


def test_without_a_key_or_a_store_the_fallback_runs(store, monkeypatch):
    state, x = _toy()
    calls = []

    def fallback(*args):
        calls.append(1)
        return jax.jit(_toy_body)(*args)

    out = compile_cache.call_stored(None, _toy_body, fallback, state, x)
    assert _same(out, _toy_body(state, x))
    monkeypatch.setattr(compile_cache, "_store", None)
    compile_cache.call_stored("toy", _toy_body, fallback, state, x)
    assert len(calls) == 2 and not store.exists()


def test_a_program_export_refuses_runs_unstored_with_one_warning(store):
    def body(state, x):  # a host callback: jax.export refuses it
        y = jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
        return state, y

    state, x = _toy()
    with pytest.warns(UserWarning, match="'callback' is not stored"):
        out = compile_cache.call_stored("callback|rest", body, jax.jit(body), state, x)
    np.testing.assert_allclose(out[1], np.sin(1.0), rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: it is remembered as unstorable
        compile_cache.call_stored("callback|rest", body, jax.jit(body), state, x)
    assert not store.exists() or not list(store.iterdir())


def test_a_damaged_stored_program_is_traced_and_written_again(store, monkeypatch):
    state, x = _toy()
    compile_cache.call_stored("toy", _toy_body, jax.jit(_toy_body), state, x)
    (file,) = store.glob("*.jaxexport")
    file.write_bytes(b"not a program")
    _new_process(monkeypatch)
    with pytest.warns(UserWarning, match="could not be read"):
        out = compile_cache.call_stored("toy", _toy_body, jax.jit(_toy_body), state, x)
    assert _same(out, jax.jit(_toy_body)(state, x))
    _new_process(monkeypatch)
    assert _same(compile_cache.call_stored("toy", _toy_body, None, state, x), out)


def test_only_trainers_of_registered_tasks_have_a_program_key():
    from mbpo.agents import loop, registry
    from mbpo.agents.unroll_trainer import UnrollTrainerConfig

    config = UnrollTrainerConfig(env="lqr", hidden=(8,))
    registered = registry.make_trainer(config)
    key = loop.program_key(registered, "updates", num=3)
    assert "UnrollTrainerConfig(" in key and "[('num', 3)]" in key
    assert loop.program_key(registry.make_trainer(config, registered.dynamics), "updates") is None
    local = dataclasses.replace(registered, programs=(lambda c, d: None, config))
    assert loop.program_key(local, "updates") is None


@pytest.mark.slow
def test_mbpo_train_starts_again_from_its_stored_programs_with_the_same_results(tmp_path):
    cache = tmp_path / "cache"
    tiny = "--env lqr --horizon 3 --num-envs 8 --episode-length 12 --num-updates 4 --eval-every 2"
    tiny += " --eval-envs 4 --hidden 8 --critic-epochs 1 --critic-minibatches 1"

    def train(name, setting):
        command = [sys.executable, "-m", "mbpo.main", "train", *tiny.split()]
        command += ["--run-dir", str(tmp_path / name), "--compile-cache", str(setting)]
        subprocess.run(command, capture_output=True, text=True, check=True)
        with open(tmp_path / name / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        return [{k: v for k, v in r.items() if not k.endswith("_time")} for r in rows]

    first = train("first", cache)
    stored = {p: p.stat().st_mtime_ns for p in (cache / compile_cache.PROGRAMS).iterdir()}
    # The initial state, the chunk of updates and the evaluation, each with its executable.
    assert sorted(p.suffix for p in stored) == [".jaxexport"] * 3 + [compile_cache.EXECUTABLE] * 3
    second = train("second", cache)
    assert {p: p.stat().st_mtime_ns for p in (cache / "programs").iterdir()} == stored
    assert first == second == train("uncached", "off")


def test_a_store_that_cannot_be_written_warns_and_the_run_goes_on(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(compile_cache, "_store", blocker / "programs")
    monkeypatch.setattr(compile_cache, "_loaded", {})
    state, x = _toy()
    with pytest.warns(UserWarning, match="could not be stored"):
        out = compile_cache.call_stored("toy", _toy_body, jax.jit(_toy_body), state, x)
    assert _same(out, jax.jit(_toy_body)(state, x)) and blocker.read_text() == "not a folder"


def test_a_result_with_other_nodes_is_rebuilt_from_its_out_def(store, monkeypatch):
    def init(w):  # a state of a custom node from arrays (a trainer's init)
        return Toy(w=jnp.sin(w), n=jnp.int32(0), scale=jnp.tanh)

    w = jnp.arange(3.0)
    out_def = lambda: jax.tree.structure(jax.eval_shape(init, w))
    kwargs = {"keeps_state": False, "out_def": out_def}
    first = compile_cache.call_stored("init", init, jax.jit(init), w, **kwargs)
    _new_process(monkeypatch)
    again = compile_cache.call_stored("init", init, None, w, **kwargs)
    assert _same(first, again) and _same(first, jax.jit(init)(w)) and again.scale is jnp.tanh


def test_the_source_fingerprint_follows_the_files_content(tmp_path):
    module = tmp_path / "pkg" / "module.py"
    module.parent.mkdir()
    module.write_text("x = 1\n")

    def fingerprint():
        stat = module.stat()
        return compile_cache._fingerprint_of(((str(module), stat.st_mtime_ns, stat.st_size),))

    first = fingerprint()
    assert fingerprint() == first
    module.write_text("x = 2\n")
    os.utime(module, ns=(1, 1))  # a new stamp, as an edit gives
    assert fingerprint() != first
    assert compile_cache._source_fingerprint() == compile_cache._source_fingerprint()
