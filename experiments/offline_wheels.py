"""Wheels of brax and everything it needs that a GPU machine without internet may lack, for
Python 3.11 and 3.12, in one folder to install from offline.

    python -m experiments.offline_wheels --out .whl --python 3.12    # here, with internet
    # there (the folder travels with the working tree; run from the repository root):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD                                  # brax, mujoco, mbpo
    # or, where pip may install: python3 -m pip install --no-index --find-links .whl -e .

Starting from ``brax==0.14.2``, ``mujoco`` and mbpo's other needs (:data:`ROOTS`), each package
is fetched alone (``pip download --no-deps --only-binary=:all:`` for the target interpreter and
manylinux x86_64 platforms) and its
``Requires-Dist`` lines, their environment markers evaluated for that interpreter on Linux
x86_64 and extras left out, name what to fetch next. Packages the machine already has (``--have``;
by default jax, jaxlib, flax, optax, diffrax, orbax-checkpoint, numpy and what they need, as the
device machine's README lists them) are not fetched. One version of each package is kept: the
first that satisfies the requirement that named it.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import zipfile

# brax with the mujoco it runs on here, and mbpo's other needs beyond the machine's (matplotlib
# for the experiments' plots).
ROOTS = (
    *("brax==0.14.2", "mujoco==4.0.0", "tensorboardX>=2.6", "tqdm>=4.66", "matplotlib"),
    "flatbuffers>=24",
)
HAVE = (
    *("jax", "jaxlib", "flax", "optax", "diffrax", "orbax-checkpoint", "numpy", "scipy"),
    *("ml-dtypes", "opt-einsum", "typing-extensions", "equinox", "jaxtyping", "chex", "msgpack"),
    *("etils", "absl-py", "tensorstore", "protobuf", "pyyaml", "rich", "humanize", "nest-asyncio"),
)
PLATFORMS = (
    *(f"manylinux_2_{n}_x86_64" for n in (39, 35, 34, 31, 28, 27, 24, 17)),
    *("manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64", "any"),
)


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _name(spec: str) -> str:
    """The canonical distribution name of a requirement such as ``brax==0.14.2``."""
    from packaging.requirements import Requirement

    return canonical(Requirement(spec).name)


def requirements(wheel: pathlib.Path, python: str) -> list:
    """The requirements of ``wheel`` (its METADATA's ``Requires-Dist``) that apply to ``python``
    (``"3.12"``) on Linux x86_64, extras left out (``packaging.requirements.Requirement``)."""
    from packaging.requirements import Requirement

    environment = {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(name).decode().splitlines()
    found = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is None or req.marker.evaluate(environment):
            found.append(req)
    return found


def download(spec: str, python: str, out: pathlib.Path) -> pathlib.Path:
    """``pip download`` of the one wheel ``spec`` for ``python``; returns its path."""
    before = set(out.glob("*.whl"))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python, "--implementation", "cp", "-d", str(out), "-q"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run([*command, spec], check=True)
    new = set(out.glob("*.whl")) - before
    name = _name(spec)
    matches = [w for w in (new or out.glob("*.whl")) if canonical(w.name.split("-")[0]) == name]
    if not matches:
        raise RuntimeError(f"pip saved no wheel of {spec} for Python {python}")
    return sorted(matches)[-1]


def fetch(python: str, out: pathlib.Path, have: set[str]) -> list[pathlib.Path]:
    """Every wheel brax needs for ``python`` that ``have`` does not cover."""
    queue, seen, wheels = list(ROOTS), set(), []
    while queue:
        spec = queue.pop(0)
        name = _name(spec)
        if name in seen or name in have:
            continue
        seen.add(name)
        wheel = download(spec, python, out)
        wheels.append(wheel)
        print(f"Python {python}: {wheel.name}", flush=True)
        queue += [str(r).split(";")[0] for r in requirements(wheel, python)]
    return wheels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.offline_wheels", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(".whl"))
    parser.add_argument("--python", nargs="+", default=["3.11", "3.12"])
    parser.add_argument(
        "--have", nargs="*", default=list(HAVE), help="packages the target already has"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    have = {canonical(n) for n in args.have}
    for python in args.python:
        wheels = fetch(python, args.out, have)
        print(f"Python {python}: {len(wheels)} wheels in {args.out}")


if __name__ == "__main__":
    main()
