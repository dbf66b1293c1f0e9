"""Which trainer runs which algorithm: ``mbpo train --algo NAME`` and saved run configs.

* bpo, svg, dpmb_r, dpmb_sf, critic_only: UnrollTrainerConfig, mbpo.agents.unroll_trainer, and its
  named configurations (``unroll_trainer.VARIANTS``: shac, sapo);
* nfqca, fqi, fqi_amortized, ddpg, td3, sac: OffPolicyConfig, mbpo.agents.off_policy;
* mbpo (SVG(n), SVG-ER or SAC on a model): ModelBasedConfig, mbpo.agents.model_based;
* ppo (clipped surrogate, GAE, on-policy): PPOConfig, mbpo.agents.ppo.

A run directory's ``config.json`` records the trainer's name under ``"trainer"``, so a run is
resumed and evaluated by the trainer that wrote it.
"""

from __future__ import annotations

import dataclasses

from mbpo import estimators
from mbpo.agents import model_based, off_policy, ppo, unroll_trainer
from mbpo.agents.loop import Trainer
from mbpo.cli import check_field_types, renamed
from mbpo.dynamics.base import Dynamics

TRAINERS = {
    "unroll": (unroll_trainer.UnrollTrainerConfig, unroll_trainer.make_trainer),
    "off_policy": (off_policy.OffPolicyConfig, off_policy.make_trainer),
    "mbpo": (model_based.ModelBasedConfig, model_based.make_trainer),
    "ppo": (ppo.PPOConfig, ppo.make_trainer),
}
ALGOS: dict[str, str] = {
    **{name: "unroll" for name in estimators.ESTIMATORS},
    **{name: "unroll" for name in unroll_trainer.VARIANTS},
    **{name: "off_policy" for name in off_policy.ALGOS},
    "mbpo": "mbpo",
    "ppo": "ppo",
}


def estimator_names() -> tuple[str, ...]:
    """The algorithms of the unroll trainer (its ``--estimator`` values)."""
    return tuple(estimators.ESTIMATORS)


def trainer_name(config) -> str:
    """The TRAINERS key of a config object."""
    for name, (cls, _) in TRAINERS.items():
        if isinstance(config, cls):
            return name
    raise TypeError(
        f"not a trainer config: {type(config).__name__}; known: "
        f"{', '.join(c.__name__ for c, _ in TRAINERS.values())}"
    )


def config_class(algo: str) -> type:
    """The config class that trains ``algo``."""
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; known: {', '.join(ALGOS)}")
    return TRAINERS[ALGOS[algo]][0]


def algo_defaults(algo: str) -> dict:
    """The config values ``--algo NAME`` sets (the options given override them): a named
    configuration's, an estimator for the unroll trainer, the algorithm of the others."""
    if algo in unroll_trainer.VARIANTS:
        return dict(unroll_trainer.VARIANTS[algo])
    config_class(algo)
    return {"estimator": algo} if ALGOS[algo] == "unroll" else {"algo": algo}


def config_for(name: str, **values):
    """The config of an algorithm named as ``--algo`` names it (``sac``, ``shac``, ``mbpo``), or as
    an estimator with its horizon after a dash (``svg-4``, ``bpo-16``; no dash: whole episodes);
    anything after a further dash is a label (``svg-4-small``). ``values`` override what the name
    sets."""
    algo, *rest = name.split("-")
    defaults = algo_defaults(algo)
    if algo in estimators.ESTIMATORS:
        defaults["horizon"] = int(rest[0]) if rest else None
    return config_class(algo)(**{**defaults, **values})


def make_trainer(config, dynamics: Dynamics | None = None) -> Trainer:
    """The trainer of any registered config."""
    return TRAINERS[trainer_name(config)][1](config, dynamics)


def config_to_dict(config) -> dict:
    return {"trainer": trainer_name(config), **dataclasses.asdict(config)}


def config_from_dict(values: dict):
    """The config from JSON values (lists become tuples; no "trainer" key means the unroll
    trainer, as in runs written before the registry); unknown keys raise ValueError by name."""
    values = dict(values)
    name = values.pop("trainer", "unroll")
    if name not in TRAINERS:
        raise ValueError(f"unknown trainer {name!r} in the config; known: {', '.join(TRAINERS)}")
    cls = TRAINERS[name][0]
    values = renamed(cls, values)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown config keys {unknown} for {cls.__name__}; allowed: {sorted(known)}"
        )
    check_field_types(cls, values)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
