"""What every script under ``experiments/`` shares: presets and command-line overrides, the run
header, results written whole, tables, statistics over seeds, curves.

A script keeps only its preset values, what it measures and how it summarizes:

    EXPERIMENT = harness.Experiment("experiments.bench_unroll", __doc__, PRESETS)

    def main(argv=None):
        run = EXPERIMENT.parse(argv)           # one parse; a bad value exits 2 before any compile
        report = {**run.header(), "rows": benchmark(run.preset)}
        run.finish(report, format_table)      # prints the table, writes --out PATH.json whole

Every script takes ``--preset NAME`` and ``--set FIELD=VALUE`` (repeatable; ``FIELD`` a field of
the preset's dataclass, ``a.b`` one of a nested one; ``VALUE`` JSON, or text for a string field):
the preset with those fields replaced is validated by its own ``__post_init__``, so a bad value
names itself and what is allowed. The report records the preset's name and its resolved values.

This module imports only the standard library and the jax-free parts of mbpo at import time: the
brax workers, which run in another environment, import it too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mbpo.cli import check_field_types, check_int, check_interval, check_positive
from mbpo.files import (
    csv_text,
    finish_report,
    full_folder_refusal,
    run_header,
    write_json,
    write_text,
)

JSON, DIRECTORY = "json", "directory"
__all__ = ["check_int", "check_interval", "check_positive"]  # mbpo.cli's, for presets' checks


def json_path(text: str) -> pathlib.Path:
    """An ``--out`` of a report: a path ending in .json that is not a folder."""
    path = pathlib.Path(text)
    if path.suffix != ".json" or path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a PATH.json file, got {text!r}")
    return path


def _value(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return tuple(value) if isinstance(value, list) else value


def override(preset: Any, assignments: Sequence[str]) -> Any:
    """``preset`` (a frozen dataclass, or a dict) with every ``FIELD=VALUE`` of ``assignments``
    applied at once (so that fields that must agree can change together). Raises ValueError
    naming an unknown field (and the fields there are), TypeError a value of the wrong type; the
    dataclass's own validation runs on the result."""
    changes: dict = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        if not sep:
            raise ValueError(f"--set expects FIELD=VALUE, got {assignment!r}")
        *parents, last = name.split(".")
        level = changes
        for part in parents:
            level = level.setdefault(part, {})
        level[last] = (name, _value(text))
    return _apply(preset, changes)


def _apply(obj: Any, changes: dict) -> Any:
    fields = list(obj) if isinstance(obj, dict) else [f.name for f in dataclasses.fields(obj)]
    new = {}
    for field, change in changes.items():
        if field not in fields:
            name = change[0] if isinstance(change, tuple) else f"{field}..."
            raise ValueError(
                f"--set {name}: no field {field!r}; the fields are {', '.join(fields)}"
            )
        old = obj[field] if isinstance(obj, dict) else getattr(obj, field)
        if isinstance(change, dict):
            new[field] = _apply(old, change)
            continue
        name, value = change
        if not isinstance(obj, dict):
            if isinstance(value, str) and not isinstance(old, str) and old is not None:
                raise TypeError(
                    f"--set {name}: expected a value like {old!r}, got the text {value!r}"
                )
            check_field_types(
                type(obj), {field: list(value) if isinstance(value, tuple) else value}
            )
        new[field] = value
    return {**obj, **new} if isinstance(obj, dict) else dataclasses.replace(obj, **new)


def _unwritable(path: pathlib.Path) -> str | None:
    """Why files cannot be written in the directory ``path`` (None: they can), creating nothing:
    the script's own checks still come before anything is written."""
    if path.exists() and not path.is_dir():
        return "exists and is not a directory"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def _holds_results(args: argparse.Namespace) -> str | None:
    """Why ``--out`` would overwrite earlier results (None: it would not): an existing report, or a
    folder with files in it (unless the script's ``--resume`` goes on with them)."""
    out = getattr(args, "out", None)
    if out is None:
        return None
    if out.exists() and not out.is_dir():
        return f"--out {out} exists; a report is never overwritten: name another PATH.json"
    return full_folder_refusal(out, resume=getattr(args, "resume", None))


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The command line of one script.

    Attributes:
      module: the script's module (``experiments.bench_unroll``), its ``python -m`` name.
      doc: the script's docstring; its first line is the ``--help`` description.
      presets: preset name -> settings (a frozen dataclass or a dict).
      out: ``JSON`` (an optional ``--out PATH.json`` for the report), ``DIRECTORY`` (a required
        ``--out DIR`` that must be writable) or None.
      default: the preset used without ``--preset``.
    """

    module: str
    doc: str
    presets: Mapping[str, Any]
    out: str | None = JSON
    default: str = "cpu"

    def parser(self) -> argparse.ArgumentParser:
        """``--preset``, ``--set`` and ``--out``; a script adds its own options to it."""
        parser = argparse.ArgumentParser(
            prog=f"python -m {self.module}",
            description=self.doc.splitlines()[0],
            allow_abbrev=False,
        )
        parser.add_argument(
            "--preset", choices=sorted(self.presets), default=self.default, help="run sizes"
        )
        parser.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="FIELD=VALUE",
            dest="overrides",
            help="replace one field of the preset (VALUE as JSON: 8, 1e-3, [64, 64], true)",
        )
        parser.add_argument(
            "--compile-cache",
            default="off",
            metavar="DIR|off",
            help="jax's persistent compilation cache for this run (mbpo.compile_cache; default "
            "off, so that compile times measured are first compiles)",
        )
        if self.out == JSON:
            parser.add_argument(
                "--out", type=json_path, metavar="PATH.json", help="JSON file for the report"
            )
        elif self.out == DIRECTORY:
            parser.add_argument(
                "--out", type=pathlib.Path, required=True, help="directory for the results"
            )
        return parser

    def parse(
        self, argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None
    ) -> Run:
        """Parses ``argv`` once (``parser``: :meth:`parser` with the script's own options); an
        unknown preset or field, a bad value, an unwritable ``--out`` or one that holds earlier
        results (:func:`_holds_results`) exits with code 2."""
        argv = list(sys.argv[1:] if argv is None else argv)
        parser = parser or self.parser()
        args = parser.parse_args(argv)
        try:
            preset = override(self.presets[args.preset], args.overrides)
        except (ValueError, TypeError) as error:
            parser.error(str(error))
        if self.out == DIRECTORY:
            problem = _unwritable(args.out)
            if problem:
                parser.error(f"--out {args.out}: {problem}")
        problem = _holds_results(args)
        if problem:
            parser.error(problem)
        from mbpo import compile_cache

        try:
            compile_cache.enable(args.compile_cache)
        except ValueError as error:
            parser.error(f"--compile-cache: {error}")
        return Run(self, parser, args, preset, argv)


@dataclasses.dataclass
class Run:
    """One parsed run of an :class:`Experiment`: its ``preset`` with the overrides applied."""

    experiment: Experiment
    parser: argparse.ArgumentParser
    args: argparse.Namespace
    preset: Any
    argv: list[str]
    start: float = dataclasses.field(default_factory=time.perf_counter)

    @property
    def out(self) -> pathlib.Path | None:
        return getattr(self.args, "out", None)

    def header(self) -> dict:
        """The command, versions, device and load (:func:`mbpo.files.run_header`), the preset's
        name and its resolved values."""
        preset = self.preset
        values = dataclasses.asdict(preset) if dataclasses.is_dataclass(preset) else dict(preset)
        return {
            **run_header(self.experiment.module, self.argv),
            "preset": self.args.preset,
            "config": values,
        }

    def finish(self, report: dict, format_table: Callable[[dict], str]) -> None:
        """Adds the wall time and the load at the end, prints the table, writes ``--out``."""
        finish_report(report, self.start, self.out, format_table)

    def curve_files(self, rows: list[dict], summary: Any, text: str, title: str) -> dict:
        r"""The files of a learning-curve run: ``curves.csv`` (``rows``), ``summary.json`` (the
        header, the seeds and ``summary``) and ``summary.md`` (``title``, the command, date,
        versions, device and load, then ``text``); a script adds its plots and :meth:`write`\s
        them."""
        header, seeds = self.header(), getattr(self.preset, "seeds", None)
        # Rows read back with --from may hold other seed counts than the preset's.
        found = seed_count(rows) or seeds
        return {
            "curves.csv": csv_text(rows),
            "summary.json": {**header, "seeds": seeds, "summary": summary},
            "summary.md": f"# {title} ({self.args.preset} preset, "
            f"{'up to ' * (found != seeds)}{found} seed{'s' * (found != 1)})\n\n"
            f"`{header['command']}`, {time.strftime('%Y-%m-%d')}, jax {header['jax_version']} on "
            f"{header['device_kind']} (load {header['load_average_1min_at_start']:.1f} at start)"
            f"\n\n{text}\n",
        }

    def write(self, files: Mapping[str, Any]) -> None:
        """Writes each ``name: content`` into ``--out DIR``, each file whole: text as it is, a
        matplotlib Figure as PNG, anything else as JSON."""
        from mbpo.curves import save_png

        for name, content in files.items():
            path = self.out / name
            if isinstance(content, str):
                write_text(path, content)
            elif hasattr(content, "savefig"):
                save_png(path, content)
            else:
                write_json(path, content)


def seed_count(rows: list[dict]) -> int:
    """How many seeds ``rows`` hold (distinct ``seed`` values; a row without one is seed 0)."""
    return len({r.get("seed", 0) for r in rows})


def train_tasks(tasks, seeds: int, make_config, *, only=None, report=None, extra=()) -> list[dict]:
    """Trains every ``(name, overrides)`` of each task's ``algorithms`` (``only``: a subset of the
    names) with :func:`mbpo.compare.compare`, ``make_config(task, name, overrides)`` building
    each config, all of them (and so validated) before anything trains. Returns rows
    ``{task: task.env, algorithm: name, ...}`` and calls ``report(rows so far)`` after every
    algorithm, so a cut run keeps what it did; ``extra``: metric columns to keep."""
    from mbpo.compare import compare

    variants = [
        (task, {n: make_config(task, n, o) for n, o in task.algorithms if not only or n in only})
        for task in tasks
    ]
    rows: list[dict] = []
    for task, configs in variants:
        done = list(rows)

        def on_done(mine, task=task, done=done):
            rows[:] = done + [{"task": task.env, **r} for r in mine]
            if report is not None:
                report(rows)

        compare(configs, seeds, "algorithm", on_done=on_done, extra=extra)
    return rows


def report_lines(report: dict) -> list[str]:
    """The first lines of every table: versions, device, preset, wall time, load, command."""
    end = report.get("load_average_1min_at_end")
    load = f"load average {report['load_average_1min_at_start']:.1f} at the start" + (
        f", {end:.1f} at the end" if end is not None else ""
    )
    return [
        f"jax {report['jax_version']} on {report['device_kind']} ({report['platform']}), "
        + f"preset {report['preset']}, wall time {report['wall_s']:.1f} s, {load}",
        f"command: {report['command']}",
    ]


def table(columns: Sequence[tuple[str, int, Callable[[dict], str]]], rows: list[dict]) -> list[str]:
    """Fixed-width lines: the headers, then one line per row. Each column is ``(header, width,
    cell)`` with ``cell(row)`` its text; the first column is left-aligned, the others right."""

    def line(cells):
        return "".join(
            f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
            for i, (c, (_, w, _)) in enumerate(zip(cells, columns))
        )

    return [line([h for h, _, _ in columns]), *(line([f(r) for _, _, f in columns]) for r in rows)]


def mean_std(values: Sequence[float | None]) -> dict:
    """Mean and sample std (0 for one value) of the values that are not None."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def pm(stat: dict, scale: float = 1.0, digits: int = 2) -> str:
    """A :func:`mean_std` result as ``mean +- std`` (times ``scale``); ``n/a`` without values."""
    if stat["mean"] is None:
        return "n/a"
    return f"{scale * stat['mean']:.{digits}f} +- {scale * stat['std']:.{digits}f}"


def executable(parser: argparse.ArgumentParser, flag: str, path: str, agent: str) -> None:
    """Exits with code 2 unless ``path`` (the python of the brax environment) is executable."""
    if not os.access(path, os.X_OK):
        parser.error(
            f"{flag} {path} is not an executable file. {agent} needs jax < 0.10; create its "
            "environment with: python3.11 -m venv /work/venv-apg && "
            '/work/venv-apg/bin/pip install "jax[cpu]<0.10" brax==0.14.2 '
            f"(or pass {flag} PATH to another such python)"
        )
