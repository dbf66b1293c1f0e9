"""mbpo.agents.loop's pieces alone: the chunk schedule, the int32 guard, divergence, the first
evaluation to reach a return, and trainers sharing their programs (the whole loop runs in
tests/test_runner.py)."""

import dataclasses

import numpy as np
import pytest

from mbpo.agents import loop
from mbpo.agents.registry import make_trainer
from mbpo.agents.unroll_trainer import UnrollTrainerConfig


@dataclasses.dataclass(frozen=True)
class Run:
    num_updates: int
    eval_every: int
    num_envs: int = 1
    seed: int = 0


def test_chunks_of_eval_every_updates_end_at_num_updates_and_resume_where_they_stopped():
    assert list(loop._chunks(Run(10, 4), 0)) == [(4, 4), (4, 8), (2, 10)]
    assert list(loop._chunks(Run(10, 4), 8)) == [(2, 10)]  # a resumed run: the same boundaries
    assert list(loop._chunks(Run(10, 4), 10)) == []


def test_counts_past_int32_are_refused_before_they_wrap():
    loop.check_counters(2**31 - 1, 10)
    with pytest.raises(ValueError, match="2,147,483,648 env steps, more than the int32 counters"):
        loop.check_counters(2**31, 10)


def test_divergence_names_its_cause_and_the_last_finite_evaluation():
    history = [{"updates": 5, "eval_return": -3.0}, {"updates": 10, "eval_return": float("nan")}]
    record = {"updates": 15, "eval_return": -2.0}
    skipped = {"skipped_updates": np.array([1, 2, 3, 4, 5])}  # every update of the chunk
    with pytest.raises(loop.Diverged, match="all 5 updates before update 15 were skipped") as e:
        loop._check_finite(record, skipped, 0, 5, history)
    assert e.value.last_finite == 5 and e.value.record is record
    partly = {"skipped_updates": np.array([0, 1, 1, 1, 1])}
    loop._check_finite(record, partly, 0, 5, history)  # some steps taken: no divergence
    nan = {"updates": 15, "eval_return": [1.0, float("inf")]}
    with pytest.raises(loop.Diverged, match=r"diverged \(seed 1\): the evaluation return"):
        loop._check_finite(nan, {}, 0, 5, history, seed=1)


def test_first_to_reach():
    history = [{"eval_return": r, "updates": i} for i, r in enumerate([-9.0, -4.0, -1.0, -5.0])]
    assert loop.first_to_reach(history, -4.5)["updates"] == 1
    assert loop.first_to_reach(history, 0.0) is None


def test_configs_that_differ_only_in_run_fields_share_their_programs():
    config = UnrollTrainerConfig(env="lqr", estimator="svg", horizon=2, num_envs=4, hidden=(8,))
    trainer = make_trainer(config)
    longer = make_trainer(dataclasses.replace(config, num_updates=7, seed=3, eval_every=2))
    assert longer.programs == trainer.programs and longer.config.seed == 3
    other = make_trainer(dataclasses.replace(config, horizon=3))
    assert other.programs != trainer.programs
