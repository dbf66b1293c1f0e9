"""mbpo.cli's checks of config fields: each names the bad field, its value and what is allowed."""

import dataclasses
import math
import re

import pytest

from mbpo.cli import check_interval, check_positive


@dataclasses.dataclass
class Fields:
    gamma: float = 0.99
    lam: float = 0.0
    clip: float = math.inf
    count: int = 3


@pytest.mark.parametrize(
    ("interval", "name", "value", "inside"),
    [
        ("(0, 1]", "gamma", 1.0, True),
        ("(0, 1]", "gamma", 0.0, False),
        ("(0, 1]", "gamma", 1.5, False),
        ("(0, 1]", "gamma", math.nan, False),
        ("[0, 1]", "lam", 0.0, True),
        ("[0, 1)", "lam", 1.0, False),
        ("(0, inf]", "clip", math.inf, True),
        ("(0, inf)", "clip", math.inf, False),
        ("[0, inf)", "count", -1, False),
    ],
)
def test_check_interval_names_the_field_value_and_interval(interval, name, value, inside):
    fields = dataclasses.replace(Fields(), **{name: value})
    if inside:
        check_interval(fields, interval, name)
    else:
        message = re.escape(f"{name} must be in {interval}, got {value!r}")
        with pytest.raises(ValueError, match=f"^{message}$"):
            check_interval(fields, interval, name)


def test_check_interval_refuses_a_malformed_interval():
    with pytest.raises(ValueError, match="interval must look like"):
        check_interval(Fields(), "0 < x <= 1", "gamma")


def test_check_positive_names_the_first_small_field():
    with pytest.raises(ValueError, match="count must be >= 4, got 3"):
        check_positive(Fields(), "count", minimum=4)


@pytest.mark.parametrize("algo", ["svg-4", "sac", "ppo"])
def test_an_infinite_clipping_norm_means_no_clipping_and_is_allowed(algo):
    """The trainer configs' range checks keep what they allowed before check_interval: an
    unbounded gradient norm (no clipping) is a valid setting; NaN is not."""
    from mbpo.agents import registry

    assert registry.config_for(algo, max_grad_norm=math.inf).max_grad_norm == math.inf
    with pytest.raises(ValueError, match=r"max_grad_norm must be in \(0, inf\], got nan"):
        registry.config_for(algo, max_grad_norm=math.nan)


def _choice_fields():
    from mbpo.agents.registry import TRAINERS

    for trainer, (config_cls, _) in TRAINERS.items():
        for field in dataclasses.fields(config_cls):
            if "choices" in field.metadata:
                yield pytest.param(config_cls, field.name, id=f"{trainer}-{field.name}")


@pytest.mark.parametrize("config_cls, name", list(_choice_fields()))
def test_every_choice_field_is_checked_when_a_config_is_built_in_python(config_cls, name):
    """argparse checks ``choices`` on the command line; a config built in Python or read from a
    file gets the same check from its ``__post_init__``, before anything is compiled."""
    config = config_cls()
    allowed = next(f for f in dataclasses.fields(config_cls) if f.name == name).metadata["choices"]
    assert getattr(config, name) in allowed
    message = f"unknown {name} 'nope'; allowed: {re.escape(', '.join(map(str, allowed)))}"
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(config, **{name: "nope"})


def test_a_renamed_field_keeps_its_former_name_as_an_option_and_in_saved_configs():
    import argparse

    from mbpo.agents.off_policy import OffPolicyConfig
    from mbpo.agents.registry import config_from_dict
    from mbpo.cli import add_arguments, build

    # SAC's temperature fields carry the unroll trainer's names since 2026-12-06.
    parser = argparse.ArgumentParser()
    add_arguments(parser, OffPolicyConfig)
    for argv in (["--init-alpha", "0.5"], ["--temperature-init", "0.5"]):
        assert build(parser, OffPolicyConfig, parser.parse_args(argv)).temperature_init == 0.5
    twice = parser.parse_args(["--alpha-lr", "1", "--alpha-lr", "0.3"])  # one name: the last
    assert build(parser, OffPolicyConfig, twice).temperature_lr == 0.3
    with pytest.raises(SystemExit):  # two names of one field: refused, not the last kept
        parser.parse_args(["--temperature-init", "0.5", "--init-alpha", "0.3"])
    saved = {"trainer": "off_policy", "algo": "sac", "alpha_lr": 0.01, "target_entropy": -2.0}
    config = config_from_dict({**saved, "autotune_alpha": False})
    assert (config.temperature_lr, config.entropy_target, config.tune_temperature) == (
        0.01,
        -2.0,
        False,
    )
    with pytest.raises(ValueError, match="'alpha_lr' is the former name of 'temperature_lr'"):
        config_from_dict({**saved, "temperature_lr": 0.02})


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "3", None])
def test_check_int_refuses_anything_but_an_integer_at_least_the_minimum(value):
    from mbpo.cli import check_int

    with pytest.raises(ValueError, match=re.escape(f"steps must be an int >= 1, got {value!r}")):
        check_int("steps", value)


def test_check_int_accepts_numpy_integers_and_returns_a_python_int():
    import numpy as np

    from mbpo.cli import check_int

    assert type(check_int("steps", np.int32(3))) is int and check_int("steps", 0, 0) == 0
