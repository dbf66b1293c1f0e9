"""Run directories: the resolved config, metrics, checkpoints and plots of one training run.

    RUN_DIR/config.json      the resolved config, its trainer and its number of seeds
                             (replay with ``mbpo train --config``)
    RUN_DIR/metrics.csv      one row per evaluation (and seed)
    RUN_DIR/checkpoints/U/   the whole train state after U updates (orbax), with U.json beside it
                             (the history and a SHA-256 of every saved array); written after every
                             evaluation, the newest two verified ones kept
    RUN_DIR/learning_curve.png
    RUN_DIR/tensorboard/     TensorBoard event files (``tensorboard --logdir RUN_DIR``)
    RUN_DIR/.lock            held (``flock``) by the one process training into the directory

Nothing written is lost or silently wrong:

* A new run refuses a directory that already holds any run file (:func:`claim`), and a second
  process is refused while the first holds the lock (:func:`lock`; the kernel drops the lock when
  its process dies, so a killed run never leaves a stale one).
* Orbax writes each checkpoint into a temporary directory and renames it when complete. The saved
  arrays are then read back and compared, array by array, with SHA-256 hashes of the state in
  memory; only then is ``U.json`` (history and hashes) written, and only then are older
  checkpoints deleted. The newest step with a ``U.json`` is therefore whole and verified.
* On restore every array is hashed again. A checkpoint that fails (damaged, even with its size
  unchanged, or from another config) is refused and left as it is; the error names the newest
  older checkpoint that is intact and how to resume from it (``--from-checkpoint U``).

PRNG keys are stored as their raw key data.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import pathlib
import shutil
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from mbpo import curves
from mbpo.agents import loop, registry
from mbpo.cli import check_int
from mbpo.files import csv_text, write_json, write_text

CONFIG, METRICS, CHECKPOINTS, CURVE, TENSORBOARD = (
    "config.json",
    "metrics.csv",
    "checkpoints",
    "learning_curve.png",
    "tensorboard",
)
RUN_FILES = (CONFIG, METRICS, CHECKPOINTS, CURVE, TENSORBOARD)
LOCK = ".lock"
DAMAGED = (
    "damaged"  # checkpoints/damaged/: checkpoints set aside by --from-checkpoint, never deleted
)
KEEP = 2  # verified checkpoints kept: the newest and the one before it


class RunDirError(ValueError):
    """A run directory (or its checkpoint or config) that cannot be used; nothing is overwritten."""


class UnverifiedCheckpoint(RunDirError):
    """A checkpoint just written did not read back as written (the disk, not the input): the run
    stops; the older verified checkpoints are kept."""


# --- config ------------------------------------------------------------------------------------


def save_config(run_dir: pathlib.Path, config, seeds: int = 1) -> None:
    write_json(run_dir / CONFIG, {**registry.config_to_dict(config), "seeds": seeds})


def load_run(path: pathlib.Path):
    """(config, seeds) saved in ``path`` (a run directory or a config.json)."""
    path = path / CONFIG if path.is_dir() else path
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError(f"no config at {path}") from None
    except json.JSONDecodeError as error:
        raise RunDirError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise RunDirError(
            f"{path} must hold a JSON object of config fields, got a {type(values).__name__}"
        )
    seeds = values.pop("seeds", 1)
    try:
        return registry.config_from_dict(values), check_int("seeds", seeds)
    except (ValueError, TypeError) as error:
        raise RunDirError(f"{path}: {error}") from None


def load_config(path: pathlib.Path):
    """The config saved in ``path`` (a run directory or a config.json)."""
    return load_run(path)[0]


# --- the directory: claim and lock -------------------------------------------------------------


def check_writable(run_dir: pathlib.Path) -> None:
    """Creates ``run_dir`` if needed and checks a file can be written there (before any compile)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} exists and is not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RunDirError(f"run directory {run_dir} is not writable: {error.strerror}") from None


def run_files(run_dir: pathlib.Path) -> list[str]:
    """The run files (config, metrics, checkpoints, plot, TensorBoard) already in ``run_dir``."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


class Lock:
    """An exclusive ``flock`` on RUN_DIR/.lock for the lifetime of one run (a context manager)."""

    def __init__(self, run_dir: pathlib.Path):
        self.path = run_dir / LOCK
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise RunDirError(
                f"{run_dir} is in use by a running training (pid {holder}); wait for it or choose "
                "another --run-dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def claim(run_dir: pathlib.Path, *, resume: bool) -> Lock:
    """Checks ``run_dir`` is writable and takes its lock; a new run (``resume=False``) also
    refuses a directory that already holds a run's files."""
    check_writable(run_dir)
    lock = Lock(run_dir)
    if not resume and (found := run_files(run_dir)):
        lock.release()
        raise RunDirError(
            f"{run_dir} already holds a run ({', '.join(found)}); continue it with --resume "
            f"{run_dir} "
            "or choose another --run-dir (nothing was changed)"
        )
    return lock


# --- checkpoints -------------------------------------------------------------------------------


def _orbax_noise(unraisable) -> bool:
    """Whether an unraisable exception is orbax's echo of a failed read (a coroutine of its own,
    or asyncio's "Event loop is closed" from its worker threads) after the failure was raised."""
    exc, obj = unraisable.exc_value, unraisable.object
    if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
        return True
    frames = []
    tb = unraisable.exc_traceback
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return any("orbax" in f or "tensorstore" in f for f in frames) or "orbax" in repr(obj)


def _install_unraisable_filter() -> None:
    """A damaged checkpoint is refused with one clear message (RunDirError); orbax's worker
    threads would print dozens of asyncio and TensorStore tracebacks after it. They are dropped;
    every other unraisable exception still reaches the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_mbpo_filter", False):
        return

    def hook(unraisable):
        if not _orbax_noise(unraisable):
            previous(unraisable)

    hook._mbpo_filter = True
    sys.unraisablehook = hook


_install_unraisable_filter()


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _raw(state):
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)


def array_hashes(tree) -> dict[str, str]:
    """SHA-256 of the dtype, shape and bytes of every array of ``tree``, keyed by its path."""
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        x = np.ascontiguousarray(np.asarray(x))
        digest = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
        digest.update(x.tobytes())
        out[jax.tree_util.keystr(path)] = digest.hexdigest()
    return out


def _complete_steps(run_dir: pathlib.Path) -> list[int]:
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in root.iterdir()
        if p.name.isdigit() and p.is_dir() and (root / f"{p.name}.json").exists()
    )


def has_checkpoint(run_dir: pathlib.Path) -> bool:
    return bool(_complete_steps(run_dir))


def checkpoint_steps(run_dir: pathlib.Path) -> list[int]:
    """The update counts of the complete checkpoints of ``run_dir``, oldest first."""
    return _complete_steps(run_dir)


def _paths(run_dir: pathlib.Path, step: int) -> tuple[pathlib.Path, pathlib.Path]:
    root = (run_dir / CHECKPOINTS).absolute()
    return root / f"{step:08d}", root / f"{step:08d}.json"


def _set_aside(run_dir: pathlib.Path, step: int) -> pathlib.Path:
    """Moves checkpoint ``step`` (directory and JSON) into checkpoints/damaged/ (never deletes)."""
    data, meta = _paths(run_dir, step)
    target = data.parent / DAMAGED / f"{step:08d}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir(parents=True, exist_ok=False)
    for path in (data, meta):
        if path.exists():
            os.replace(path, target / path.name)
    return target


def _restore_raw(path: pathlib.Path, target):
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path, target)


def _targets(template):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _raw(template))


def save_checkpoint(run_dir: pathlib.Path, state, history: list[dict]) -> None:
    """Saves the state (orbax) after ``history[-1]["updates"]`` updates, reads it back and checks
    every array against the state in memory, then writes the history and hashes beside it, and
    only then deletes checkpoints older than the newest ``KEEP``."""
    import orbax.checkpoint as ocp

    step = history[-1]["updates"]
    data, meta = _paths(run_dir, step)
    if data.exists() or meta.exists():  # left by a run resumed from an older checkpoint
        _set_aside(run_dir, step)
    raw = _raw(state)
    hashes = array_hashes(raw)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(data, raw, force=True)
        checkpointer.wait_until_finished()
    written = array_hashes(_restore_raw(data, _targets(state)))
    if written != hashes:
        bad = sorted(k for k in hashes if written.get(k) != hashes[k])
        raise UnverifiedCheckpoint(
            f"checkpoint {data} does not read back as written (arrays {bad[:3]}); older "
            "checkpoints were kept"
        )
    write_json(meta, {"history": history, "sha256": hashes})
    for old in [s for s in _complete_steps(run_dir) if s < step][: -(KEEP - 1) or None]:
        old_data, old_meta = _paths(run_dir, old)
        old_meta.unlink()
        shutil.rmtree(old_data)


def _read(run_dir: pathlib.Path, step: int, template):
    """(state, history) of checkpoint ``step``, every array checked against its saved hash."""
    data, meta = _paths(run_dir, step)
    try:
        saved = json.loads(meta.read_text())
        history, hashes = (
            (saved, None) if isinstance(saved, list) else (saved["history"], saved["sha256"])
        )
        raw = _restore_raw(data, _targets(template))
    except Exception as error:  # orbax and tensorstore raise many types for a damaged checkpoint
        message = str(error).splitlines()[0][:240] if str(error) else type(error).__name__
        raise RunDirError(f"it cannot be read ({message})") from None
    if hashes is not None:
        found = array_hashes(raw)
        bad = sorted(k for k in hashes if found.get(k) != hashes[k])
        if bad or set(found) != set(hashes):
            raise RunDirError(
                f"the content hashes of {len(bad)} arrays do not match ({', '.join(bad[:3])})"
            )
    state = jax.tree.map(
        lambda like, x: (
            jax.random.wrap_key_data(x, impl=jax.random.key_impl(like))
            if _is_key(like)
            else jnp.asarray(x)
        ),
        template,
        raw,
    )
    return state, history


def load_checkpoint(run_dir: pathlib.Path, template, step: int | None = None):
    """Restores checkpoint ``step`` (default: the newest complete one) into the structure of
    ``template`` (a fresh state of the same config) and verifies every array's hash.

    Raises:
      RunDirError: no checkpoint, or a damaged one (left as it is); the message names the newest
        older intact checkpoint and the command that resumes from it.
    """
    steps = _complete_steps(run_dir)
    if not steps:
        raise RunDirError(f"no checkpoint in {run_dir / CHECKPOINTS}: nothing to resume")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise RunDirError(
            f"no checkpoint after {step} updates in {run_dir / CHECKPOINTS}; there are: "
            f"{', '.join(map(str, steps))}"
        )
    try:
        return _read(run_dir, step, template)
    except RunDirError as error:
        path = _paths(run_dir, step)[0]
        intact = None
        for older in reversed([s for s in steps if s < step]):
            try:
                _read(run_dir, older, template)
                intact = older
                break
            except RunDirError:
                continue
        advice = (
            f"checkpoint {intact:08d} (after {intact} updates) is intact: resume from it with "
            f"`mbpo train --resume {run_dir} --from-checkpoint {intact}`"
            if intact is not None
            else "no older checkpoint is intact"
        )
        raise RunDirError(
            f"checkpoint {path} is corrupted or from another config: {error}; it was left as it "
            f"is; {advice}"
        ) from None


def set_aside_newer(run_dir: pathlib.Path, step: int) -> list[pathlib.Path]:
    """Moves the checkpoints newer than ``step`` into checkpoints/damaged/ (resuming from an
    older checkpoint); returns where they went."""
    return [_set_aside(run_dir, s) for s in _complete_steps(run_dir) if s > step]


# --- metrics and plots -------------------------------------------------------------------------


def write_metrics(run_dir: pathlib.Path, history: list[dict]) -> None:
    write_text(run_dir / METRICS, csv_text(history))


def plot_learning_curve(
    run_dir: pathlib.Path, rows: list[dict], title: str, x: str = "env_steps"
) -> None:
    """RUN_DIR/learning_curve.png: evaluation return against ``x`` (env steps, or updates for the
    batch methods, whose data is fixed); with a ``seed`` column, the mean over seeds with a band
    from the lowest to the highest (:func:`mbpo.curves.plot`)."""
    curves.save_png(run_dir / CURVE, curves.plot(rows, title, x=x))


# --- one way to train ---------------------------------------------------------------------------


def x_axis(config) -> str:
    """The x axis of a run's curves: env steps, or updates for the batch methods, whose data is
    collected once up front."""
    return "env_steps" if getattr(config, "online", True) else "updates"


def _mean(value):
    return sum(value) / len(value) if isinstance(value, list) else value


class Checkpoints:
    """After every evaluation: the verified checkpoint (:func:`save_checkpoint`) and metrics.csv."""

    def __init__(self, run_dir: pathlib.Path, history: list[dict], seeds: int):
        self.run_dir, self.history, self.seeds = run_dir, history, seeds

    def __call__(self, record: dict, state) -> None:
        self.history.append(record)
        save_checkpoint(self.run_dir, state, self.history)
        write_metrics(
            self.run_dir, curves.seed_rows(self.history) if self.seeds > 1 else self.history
        )


class TensorBoard:
    """Every metric of every evaluation as a TensorBoard scalar (per seed and their mean)."""

    def __init__(self, run_dir: pathlib.Path, x: str):
        from tensorboardX import SummaryWriter

        self.writer, self.x = SummaryWriter(logdir=str(run_dir / TENSORBOARD)), x

    def __call__(self, record: dict, state) -> None:
        for name, value in record.items():
            if isinstance(value, list):
                self.writer.add_scalar(f"{name}/mean", _mean(value), global_step=record[self.x])
                for i, v in enumerate(value):
                    self.writer.add_scalar(f"{name}/seed_{i}", v, global_step=record[self.x])
            else:
                self.writer.add_scalar(name, value, global_step=record[self.x])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class ProgressBar:
    """A tqdm bar over updates with the latest return, gradient norm and env steps per second."""

    def __init__(self, total: int, done: int, steps: int):
        from tqdm import tqdm

        self.bar = tqdm(
            total=total, initial=done, unit="update", dynamic_ncols=True, file=sys.stdout
        )
        self.last = {"time": time.perf_counter(), "steps": steps}

    def __call__(self, record: dict, state) -> None:
        now = time.perf_counter()
        rate = (record["env_steps"] - self.last["steps"]) / max(now - self.last["time"], 1e-9)
        self.last.update(time=now, steps=record["env_steps"])
        grad = _mean(record.get("grad_norm", float("nan")))
        self.bar.set_postfix(
            ret=f"{_mean(record['eval_return']):.1f}", grad=f"{grad:.3g}", steps_per_s=f"{rate:.0f}"
        )
        self.bar.update(record["updates"] - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _resume_point(run_dir: pathlib.Path, trainer, seeds: int, from_checkpoint: int | None):
    """(state, history) of the run in ``run_dir``: its newest verified checkpoint, or
    ``from_checkpoint``, setting the newer ones aside."""
    config = trainer.config
    resume = load_checkpoint(run_dir, loop.initial_state(trainer, seeds), step=from_checkpoint)
    done = resume[1][-1]["updates"] if resume[1] else 0
    if done > config.num_updates:
        raise RunDirError(
            f"--num-updates {config.num_updates} is fewer than the {done} updates {run_dir} has "
            "done"
        )
    if from_checkpoint is not None:
        for moved in set_aside_newer(run_dir, done):
            print(f"set aside the newer checkpoint {moved.name} in {moved.parent}")
    print(f"resuming {run_dir} at update {done} of {config.num_updates}")
    return resume


# What a run with a directory imports only after its first chunk of updates: orbax (the
# checkpoint) and matplotlib (the learning curve), about 1 s on 2 cores.
LATE_IMPORTS = ("orbax.checkpoint", "matplotlib.figure", "matplotlib.backends.backend_agg")


def _import_quietly(names: tuple[str, ...]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # it fails again, with its error, where it is used
            return


def preload(names: tuple[str, ...] = LATE_IMPORTS) -> threading.Thread:
    """Imports ``names`` on a daemon thread, so that they overlap the first compile (XLA releases
    the GIL while it compiles or loads a program) instead of following it; on a start whose
    programs come from the compile cache that is about a sixth of the whole start (pendulum,
    experiments/results/bench_compile_cache_*). A module whose import fails here is not kept
    (Python drops it from ``sys.modules``): its user imports it again and raises the error."""
    thread = threading.Thread(target=_import_quietly, args=(names,), daemon=True, name="preload")
    thread.start()
    return thread


def fit(
    config,
    *,
    run_dir: pathlib.Path | None = None,
    seeds: int = 1,
    resume: bool = False,
    from_checkpoint: int | None = None,
    callbacks=(),
    progress: bool = True,
    dynamics=None,
    stop_on_divergence: bool = True,
):
    """Trains ``config`` (``seeds`` > 1: that many seeds in one vmapped program): the one way to
    train, under ``mbpo train`` and the experiments.

    Args:
      config: a trainer config (:func:`mbpo.agents.registry.make_trainer`).
      run_dir: with a directory, :func:`claim` it (a new run refuses one holding another run's
        files; ``resume=True`` continues the run in it), hold its lock for the whole run, write
        config.json, after every evaluation a verified checkpoint, metrics.csv and TensorBoard,
        and at the end the learning curve. Without one nothing is written.
      seeds: seeds trained side by side (keys split from ``config.seed``).
      resume: continue the run in ``run_dir`` from its newest verified checkpoint
        (``from_checkpoint``: that older one, setting the newer ones aside).
      callbacks: ``callback(record, state)`` after every evaluation, after the checkpoint; one
        with a ``begin(trainer, state)`` method is handed the trainer and the state the run starts
        from before the first update (to evaluate the untrained policy, say).
      progress: a progress bar on stdout (with ``run_dir``).
      dynamics: a :class:`mbpo.dynamics.base.Dynamics` instead of the registered task.
      stop_on_divergence: raise :class:`mbpo.agents.loop.Diverged` when a seed diverges; off, a
        comparison keeps the seeds that did not (their records hold the non-finite values).

    Returns:
      (state, history); with seeds > 1 the history's metrics are per-seed lists.

    Raises:
      RunDirError: a directory or checkpoint that cannot be used (nothing was overwritten).
      mbpo.agents.loop.Diverged: every update of a chunk was skipped, or the return is not finite
        (with ``stop_on_divergence``).
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if (resume or from_checkpoint is not None) and run_dir is None:
        raise ValueError("resume and from_checkpoint need the run_dir to resume")
    if from_checkpoint is not None and not resume:
        raise ValueError("from_checkpoint needs resume=True")
    trainer = registry.make_trainer(config, dynamics)
    if run_dir is None:
        return _train(trainer, seeds, list(callbacks), None, stop_on_divergence)
    run_dir = pathlib.Path(run_dir)
    preload()
    with claim(run_dir, resume=resume):
        start = _resume_point(run_dir, trainer, seeds, from_checkpoint) if resume else None
        save_config(run_dir, config, seeds)
        history = list(start[1]) if start else []
        x = x_axis(config)
        writers = [Checkpoints(run_dir, history, seeds), TensorBoard(run_dir, x)]
        if progress:
            writers.append(
                ProgressBar(
                    config.num_updates,
                    history[-1]["updates"] if history else 0,
                    history[-1]["env_steps"] if history else 0,
                )
            )
        try:
            state, history = _train(
                trainer, seeds, [*writers, *callbacks], start, stop_on_divergence
            )
        finally:
            for writer in writers:
                getattr(writer, "close", lambda: None)()
        rows = curves.seed_rows(history) if seeds > 1 else history
        title = f"{config.label} on {config.env}" + (f", {seeds} seeds" if seeds > 1 else "")
        plot_learning_curve(run_dir, rows, title, x=x)
        return state, history


def _train(trainer, seeds: int, callbacks: list, start, stop_on_divergence: bool):
    def callback(record, state):
        for c in callbacks:
            c(record, state)

    starting = [c for c in callbacks if hasattr(c, "begin")]
    if starting:
        if start is None:
            start = (loop.initial_state(trainer, seeds), [])
        for c in starting:
            c.begin(trainer, start[0])

    if seeds > 1:
        state, result = loop.train_seeds(
            trainer, seeds, callback=callback, resume=start, stop_on_divergence=stop_on_divergence
        )
        return state, result["history"]
    return loop.train(
        trainer, callback=callback, resume=start, stop_on_divergence=stop_on_divergence
    )
