"""mbpo.agents.registry: every algorithm name finds its trainer, and a saved config comes back."""

import dataclasses
import json

import pytest

from mbpo.agents import registry


@pytest.mark.parametrize("algo", list(registry.ALGOS))
def test_every_algorithm_builds_its_config_and_the_config_round_trips_through_json(algo):
    # An estimator's name takes its horizon after a dash (those with a critic need one); lqr has
    # the transition density dpmb_sf needs.
    name = f"{algo}-4" if algo in registry.estimator_names() else algo
    config = registry.config_for(name, env="lqr")
    assert type(config) is registry.config_class(algo)
    for name, value in registry.algo_defaults(algo).items():
        assert getattr(config, name) == value
    saved = json.loads(json.dumps(registry.config_to_dict(config)))
    assert saved["trainer"] == registry.trainer_name(config)
    assert registry.config_from_dict(saved) == config


def test_a_name_with_a_horizon_and_a_label():
    config = registry.config_for("svg-4-small", hidden=(8,))
    assert (config.estimator, config.horizon, config.hidden) == ("svg", 4, (8,))
    assert registry.config_for("bpo").horizon is None  # no dash: whole episodes


def test_bad_names_and_keys_say_what_is_allowed():
    with pytest.raises(ValueError, match="unknown algo 'sacc'; known: .*sac"):
        registry.config_class("sacc")
    with pytest.raises(ValueError, match="unknown trainer 'nope'"):
        registry.config_from_dict({"trainer": "nope"})
    with pytest.raises(
        ValueError, match=r"unknown config keys \['horizn'\] for UnrollTrainerConfig"
    ):
        registry.config_from_dict({"trainer": "unroll", "horizn": 4})
    with pytest.raises(TypeError, match="not a trainer config: dict"):
        registry.trainer_name({})


def test_a_config_saved_before_the_registry_is_the_unroll_trainers():
    config = registry.config_from_dict({"estimator": "svg", "horizon": 3, "hidden": [16, 16]})
    assert dataclasses.asdict(config)["hidden"] == (16, 16) and config.horizon == 3
