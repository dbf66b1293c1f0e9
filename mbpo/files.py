"""Writing results so that nothing already written is lost or half-written."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import BinaryIO


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Writes a file through a temporary sibling and ``os.replace``, creating parent folders.

    A reader never sees a half-written file, and a failed write leaves any old file in place.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
        # mkstemp creates the file private (0600); results are meant to be shared.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_json(path: str | os.PathLike, data: object) -> None:
    """``write_atomically`` of ``data`` as indented JSON."""
    write_atomically(path, lambda file: file.write(json.dumps(data, indent=2).encode()))


def write_text(path: str | os.PathLike, text: str) -> None:
    write_atomically(path, lambda file: file.write(text.encode()))


def full_folder_refusal(folder: pathlib.Path, *, resume: bool | None = None) -> str | None:
    """Why writing results into ``folder`` (an ``--out``) would overwrite earlier ones: the files
    it holds. None where it does not exist, is not a folder or is empty, or where the caller's
    ``--resume`` (``resume`` True) goes on with them; None for ``resume`` means the caller has no
    such option."""
    held = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if not held or resume:
        return None
    shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
    go_on = "" if resume is None else ", or pass --resume to go on with the run in it"
    return (
        f"--out {folder} already holds {shown}; results are never overwritten: name a new or empty "
        f"folder{go_on}"
    )


def csv_text(rows: list[dict]) -> str:
    """``rows`` as CSV text; the header is the union of their keys in first-seen order."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def run_header(module: str, argv: list[str]) -> dict:
    """What every recorded result starts with: the exact command, the jax version, the device, and
    the 1-minute load average (other processes on a shared machine distort timings)."""
    import os
    import shlex

    import jax

    device = jax.devices()[0]
    return {
        "command": shlex.join(["python", "-m", module, *argv]),
        "jax_version": jax.__version__,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "load_average_1min_at_start": os.getloadavg()[0],
    }


def finish_report(
    report: dict, start: float, out: str | os.PathLike | None, format_table: Callable[[dict], str]
) -> None:
    """Ends a benchmark: adds ``wall_s`` (since ``start``, a ``time.perf_counter()``) and the
    1-minute load average at the end, prints ``format_table(report)`` and writes the report as
    JSON to ``out`` when given."""
    import time

    report["wall_s"] = time.perf_counter() - start
    report["load_average_1min_at_end"] = os.getloadavg()[0]
    print(format_table(report))
    if out is not None:
        write_json(out, report)
        print(f"wrote {out}")
