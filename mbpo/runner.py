"""Run directories: the resolved config, metrics, a checkpoint and plots of one training run.

    RUN_DIR/config.json      the resolved UnrollTrainerConfig (replay with ``mbpo train --config``)
    RUN_DIR/metrics.csv      one row per evaluation
    RUN_DIR/checkpoint.npz   the whole TrainState and the history, rewritten atomically after
                             every evaluation (a crash leaves the previous one whole)
    RUN_DIR/learning_curve.png
    RUN_DIR/tensorboard/     TensorBoard event files (``tensorboard --logdir RUN_DIR``)

A checkpoint is one ``.npz`` file of the state's leaves in ``jax.tree`` order (PRNG keys as their
raw key data) plus the history as JSON; the zip format's CRC-32 checks make a damaged file fail to
load, and a leaf whose shape or dtype differs from the config's fresh state is refused.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import pathlib
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from mbpo.agents.unroll_trainer import TrainState, UnrollTrainerConfig
from mbpo.io import write_atomically, write_json, write_text

CONFIG, METRICS, CHECKPOINT, CURVE, TENSORBOARD = "config.json", "metrics.csv", "checkpoint.npz", "learning_curve.png", "tensorboard"


class RunDirError(ValueError):
    """A run directory (or its checkpoint or config) that cannot be used; nothing was overwritten."""


def save_config(run_dir: pathlib.Path, config: UnrollTrainerConfig) -> None:
    write_json(run_dir / CONFIG, dataclasses.asdict(config))


def config_from_dict(values: dict) -> UnrollTrainerConfig:
    """The config from JSON values (lists become tuples); unknown keys are refused by name."""
    known = {f.name for f in dataclasses.fields(UnrollTrainerConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RunDirError(f"unknown config keys {unknown}; allowed: {sorted(known)}")
    return UnrollTrainerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def load_config(path: pathlib.Path) -> UnrollTrainerConfig:
    path = path / CONFIG if path.is_dir() else path
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"no config at {path}") from None
    except json.JSONDecodeError as error:
        raise RunDirError(f"{path} is not valid JSON: {error}") from None
    return config_from_dict(values)


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def save_checkpoint(run_dir: pathlib.Path, state: TrainState, history: list[dict]) -> None:
    """Writes the state and history atomically (a temporary file, then ``os.replace``)."""
    leaves = [np.asarray(jax.random.key_data(x) if _is_key(x) else x) for x in jax.tree.leaves(state)]
    buffer = io.BytesIO()
    np.savez(buffer, history=np.frombuffer(json.dumps(history).encode(), np.uint8), **{f"leaf_{i}": x for i, x in enumerate(leaves)})
    write_atomically(run_dir / CHECKPOINT, lambda file: file.write(buffer.getvalue()))


def load_checkpoint(run_dir: pathlib.Path, template: TrainState) -> tuple[TrainState, list[dict]]:
    """Restores a checkpoint into the structure of ``template`` (a fresh state of the same config)."""
    path = run_dir / CHECKPOINT
    if not path.exists():
        raise RunDirError(f"no checkpoint at {path}: nothing to resume")
    try:
        with np.load(path) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise RunDirError(f"checkpoint {path} is corrupted ({error}); it was left as it is") from None
    template_leaves, treedef = jax.tree.flatten(template)
    if len(arrays) != len(template_leaves) + 1 or "history" not in arrays:
        raise RunDirError(f"checkpoint {path} has {len(arrays) - 1} arrays, the config's state has {len(template_leaves)}")
    leaves = []
    for i, like in enumerate(template_leaves):
        value = arrays[f"leaf_{i}"]
        raw = jax.random.key_data(like) if _is_key(like) else like
        if value.shape != raw.shape or value.dtype != raw.dtype:
            raise RunDirError(
                f"checkpoint {path} leaf {i} has {value.dtype}{list(value.shape)}, the config needs {raw.dtype}{list(raw.shape)}"
            )
        leaves.append(jax.random.wrap_key_data(value, impl=jax.random.key_impl(like)) if _is_key(like) else jnp.asarray(value))
    history = json.loads(arrays["history"].tobytes().decode())
    return jax.tree.unflatten(treedef, leaves), history


def write_metrics(run_dir: pathlib.Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_text(run_dir / METRICS, buffer.getvalue())


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
