"""mbpo.compile_cache: where the cache goes, off by setting, and a second process reusing what the
first compiled (in subprocesses: the cache is process-wide jax configuration)."""

import os
import pathlib
import subprocess
import sys

import pytest

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
