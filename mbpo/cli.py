"""Typed, documented frozen-dataclass configs turned into command-line options (argparse).

A config field documents itself with ``option(default, "help")``; parsing builds the dataclass, so
its ``__post_init__`` validation runs before anything is compiled, and a bad value exits with code
2 and a message naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
import types
import typing
import weakref
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def option(default: Any, help: str, **kwargs) -> Any:
    """A dataclass field with a default and its ``--help`` text; ``choices=`` limits its values
    and ``formerly=("old_name", ...)`` keeps the names it had before a rename working, as options
    and as keys of a saved config (:func:`renamed`)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults (configs are frozen)")
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def renamed(cls: type, values: dict) -> dict:
    """``values`` (a saved config's) with the former names of ``cls``'s fields replaced by their
    names now; raises ValueError when both names of one field are given."""
    values = dict(values)
    for field in dataclasses.fields(cls):
        for old in field.metadata.get("formerly", ()):
            if old in values:
                if field.name in values:
                    raise ValueError(f"{old!r} is the former name of {field.name!r}: give one")
                values[field.name] = values.pop(old)
    return values


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int; raises ValueError naming ``name`` unless it is an integer (numpy's too;
    not a bool) >= ``minimum``. The one check of a count outside the configs' typed fields."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_sizes(**sizes: tuple[int, ...]) -> None:
    """Raises ValueError naming a hidden-layer tuple with a size < 1 (``()`` is allowed: linear)."""
    for name, value in sizes.items():
        if not isinstance(value, tuple) or any(
            isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1 for h in value
        ):
            raise ValueError(f"{name} must be a tuple of layer sizes >= 1, got {value!r}")


def check_positive(config: Any, *names: str, minimum: int = 1) -> None:
    """Raises ValueError naming the first field of ``names`` below ``minimum`` (a config's
    ``__post_init__`` check of its sizes and counts)."""
    for name in names:
        if getattr(config, name) < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {getattr(config, name)}")


def check_choices(config: Any) -> None:
    """Raises ValueError naming the first field of the dataclass ``config`` whose value is not one
    of the ``choices`` its ``option`` lists (argparse checks them on the command line; this check
    covers configs built in Python or read from a file)."""
    for field in dataclasses.fields(config):
        allowed = field.metadata.get("choices")
        value = getattr(config, field.name)
        if allowed is not None and value not in allowed:
            raise ValueError(
                f"unknown {field.name} {value!r}; allowed: {', '.join(map(str, allowed))}"
            )


def check_interval(config: Any, interval: str, *names: str) -> None:
    """Raises ValueError naming the first field of ``names`` outside ``interval``, written as in
    maths with ``inf`` for no bound: ``"(0, 1]"``, ``"[0, 1]"``, ``"(0, inf)"`` (NaN is outside
    every interval)."""
    bounds = interval[1:-1].split(",")
    if len(bounds) != 2 or interval[0] not in "([" or interval[-1] not in ")]":
        raise ValueError(f"interval must look like '(0, 1]', got {interval!r}")
    low, high = (float(b) for b in bounds)
    for name in names:
        value = getattr(config, name)
        above = low < value if interval[0] == "(" else low <= value
        below = value < high if interval[-1] == ")" else value <= high
        if not (above and below):
            raise ValueError(f"{name} must be in {interval}, got {value!r}")


def converter(annotation: Any) -> tuple[Any, dict]:
    """The argparse ``type`` of a field annotated ``annotation`` and the other keywords it needs
    (``nargs`` for a tuple)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        base, extra = converter(args[0])
        convert = extra.get("type", base)

        def optional(text: str):
            return None if text.lower() in ("none", "null", "inf") else convert(text)

        return optional, {k: v for k, v in extra.items() if k != "type"}
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        return item, {"nargs": "*"}
    if annotation is bool:

        def boolean(text: str) -> bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")

        return boolean, {}
    return annotation, {}


def _matches(annotation: Any, value: Any) -> bool:
    """Whether a JSON value has the type ``annotation`` (an int is a float; a list is a tuple)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(a, value) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        return isinstance(value, (list, tuple)) and all(_matches(item, v) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(
            "null" if a is type(None) else _type_name(a) for a in typing.get_args(annotation)
        )
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(annotation)[0])}"
    return getattr(annotation, "__name__", str(annotation))


def check_field_types(cls: type, values: dict) -> None:
    """Raises TypeError naming the first value of ``values`` (JSON, e.g. a config file) whose type
    is not its field's type in the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if name in hints and not _matches(hints[name], value):
            raise TypeError(
                f"field {name!r}: expected {_type_name(hints[name])}, got {value!r} "
                f"({type(value).__name__})"
            )


class _OneName(argparse.Action):
    """Stores the value of a field that has former names (``option(formerly=...)``) and refuses
    the field given under two of its names: argparse would keep the last one silently. The same
    name given twice keeps the last value, as for every other option."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self._given: dict[int, str] = {}  # id of a namespace being parsed -> the name it got

    def __call__(self, parser, namespace, values, option_string=None):
        if id(namespace) not in self._given:  # (a Namespace is unhashable: keyed by its id)
            self._given[id(namespace)] = option_string
            weakref.finalize(namespace, self._given.pop, id(namespace), None)
        first = self._given[id(namespace)]
        if first != option_string:
            parser.error(f"{first} and {option_string} name the same option: give one")
        setattr(namespace, self.dest, values)


def add_field_argument(
    parser: argparse.ArgumentParser, name: str, formerly: Sequence[str] = (), **kwargs
) -> None:
    """``--name`` (and ``--former-name`` for each of ``formerly``) storing into ``name``."""
    flags = [f"--{n.replace('_', '-')}" for n in (name, *formerly)]
    action = _OneName if formerly else "store"
    parser.add_argument(*flags, dest=name, action=action, **kwargs)


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    exclude: Sequence[str] = (),
    *,
    defaults: dict | None = None,
) -> None:
    """Adds ``--field-name`` options for every field of the dataclass ``cls`` (but ``exclude``:
    :func:`build` then takes their defaults). With ``defaults`` (a preset's values, shown in the
    help) an option left out is absent from the parsed namespace, so that :func:`build` with the
    same ``defaults`` tells the preset's values from the ones given: one parse."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        convert, extra = converter(hints[field.name])
        choices = field.metadata.get("choices")
        shown = field.default if defaults is None else defaults.get(field.name, field.default)
        add_field_argument(
            parser,
            field.name,
            field.metadata.get("formerly", ()),
            type=convert,
            default=field.default if defaults is None else argparse.SUPPRESS,
            choices=choices,
            help=f"{field.metadata.get('help', '')} (default: {shown})",
            **extra,
        )


def build(
    parser: argparse.ArgumentParser,
    cls: type[T],
    args: argparse.Namespace,
    defaults: dict | None = None,
    **fixed,
) -> T:
    """The dataclass from parsed ``args`` over ``defaults`` (see :func:`add_arguments`) and the
    fields' own defaults, with ``fixed`` values last; a validation error exits with code 2 naming
    the value."""
    values = dict(defaults or {})
    for field in dataclasses.fields(cls):
        if not hasattr(args, field.name):
            continue  # an excluded or left-out option: the default
        value = getattr(args, field.name)
        values[field.name] = tuple(value) if isinstance(value, list) else value
    values.update(fixed)
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:
        parser.error(str(error))


def parse(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    prog: str | None = None,
    description: str | None = None,
) -> T:
    """Parses ``argv`` into the frozen dataclass ``cls``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description or (cls.__doc__ or "").splitlines()[0]
    )
    add_arguments(parser, cls)
    return build(parser, cls, parser.parse_args(argv))
