"""Run directories: the resolved config, metrics, a checkpoint and plots of one training run.

    RUN_DIR/config.json      the resolved config and its trainer (replay with ``mbpo train --config``)
    RUN_DIR/metrics.csv      one row per evaluation
    RUN_DIR/checkpoints/U/   the whole train state after U updates (orbax), with U.json beside it
                             (the history); written after every evaluation, the last two kept
    RUN_DIR/learning_curve.png
    RUN_DIR/tensorboard/     TensorBoard event files (``tensorboard --logdir RUN_DIR``)

Orbax writes each checkpoint into a temporary directory and renames it when complete, and the
history JSON is written (atomically) only after that, so the newest step with both is always
whole: a crash mid-save leaves the previous one to resume from. PRNG keys are stored as their raw
key data. A checkpoint that fails to restore (damaged, or from another config) is refused and left
as it is.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from mbpo.agents import registry
from mbpo.io import csv_text, write_atomically, write_json, write_text

CONFIG, METRICS, CHECKPOINTS, CURVE, TENSORBOARD = "config.json", "metrics.csv", "checkpoints", "learning_curve.png", "tensorboard"
KEEP = 2  # checkpoints kept: the newest and the one before it


class RunDirError(ValueError):
    """A run directory (or its checkpoint or config) that cannot be used; nothing was overwritten."""


def save_config(run_dir: pathlib.Path, config) -> None:
    write_json(run_dir / CONFIG, registry.config_to_dict(config))


def load_config(path: pathlib.Path):
    """The config saved in ``path`` (a run directory or a config.json)."""
    path = path / CONFIG if path.is_dir() else path
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"no config at {path}") from None
    except json.JSONDecodeError as error:
        raise RunDirError(f"{path} is not valid JSON: {error}") from None
    try:
        return registry.config_from_dict(values)
    except ValueError as error:
        raise RunDirError(f"{path}: {error}") from None


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _complete_steps(run_dir: pathlib.Path) -> list[int]:
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir() and (root / f"{p.name}.json").exists())


def has_checkpoint(run_dir: pathlib.Path) -> bool:
    return bool(_complete_steps(run_dir))


def save_checkpoint(run_dir: pathlib.Path, state, history: list[dict]) -> None:
    """Saves the state (orbax) after ``history[-1]["updates"]`` updates, then the history beside it."""
    import orbax.checkpoint as ocp

    step = history[-1]["updates"]
    root = (run_dir / CHECKPOINTS).absolute()
    raw = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(root / f"{step:08d}", raw, force=True)
        checkpointer.wait_until_finished()
    write_json(root / f"{step:08d}.json", history)
    for old in _complete_steps(run_dir)[:-KEEP]:
        (root / f"{old:08d}.json").unlink()
        shutil.rmtree(root / f"{old:08d}")


def load_checkpoint(run_dir: pathlib.Path, template):
    """Restores the newest complete checkpoint into the structure of ``template`` (a fresh state
    of the same config)."""
    import orbax.checkpoint as ocp

    steps = _complete_steps(run_dir)
    if not steps:
        raise RunDirError(f"no checkpoint in {run_dir / CHECKPOINTS}: nothing to resume")
    path = (run_dir / CHECKPOINTS / f"{steps[-1]:08d}").absolute()
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((jax.random.key_data(x) if _is_key(x) else x).shape, (jax.random.key_data(x) if _is_key(x) else x).dtype),
        template,
    )
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            raw = checkpointer.restore(path, target)
        history = json.loads((path.parent / f"{path.name}.json").read_text())
    except Exception as error:  # orbax and tensorstore raise many types for a damaged checkpoint
        raise RunDirError(f"checkpoint {path} is corrupted or from another config ({str(error)[:200]}); it was left as it is") from None
    state = jax.tree.map(
        lambda like, x: jax.random.wrap_key_data(x, impl=jax.random.key_impl(like)) if _is_key(like) else jnp.asarray(x), template, raw
    )
    return state, history


def write_metrics(run_dir: pathlib.Path, history: list[dict]) -> None:
    write_text(run_dir / METRICS, csv_text(history))


def plot_learning_curve(run_dir: pathlib.Path, rows: list[dict], title: str) -> None:
    """Evaluation return against environment steps; with a ``seed`` column, the mean over seeds
    with a band from the lowest to the highest seed."""
    from matplotlib.figure import Figure

    steps = sorted({r["env_steps"] for r in rows})
    returns = np.array([[r["eval_return"] for r in rows if r["env_steps"] == s] for s in steps])
    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.plot(steps, returns.mean(1), "o-", label=f"mean of {returns.shape[1]} seeds" if returns.shape[1] > 1 else None)
    if returns.shape[1] > 1:
        axes.fill_between(steps, returns.min(1), returns.max(1), alpha=0.25, label="min-max over seeds")
        axes.legend(fontsize=8)
    axes.set_xlabel("environment steps")
    axes.set_ylabel("evaluation return")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    write_atomically(run_dir / CURVE, lambda file: figure.savefig(file, format="png", dpi=110))


def check_writable(run_dir: pathlib.Path) -> None:
    """Creates ``run_dir`` if needed and checks a file can be written there (before any compile)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunDirError(f"run directory {run_dir} is not writable: {error.strerror}") from None
