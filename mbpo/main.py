"""The ``mbpo`` command: ``mbpo envs | train | evaluate | compare``.

    mbpo envs                                   list the tasks and their sizes
    mbpo train --env pendulum --estimator svg --horizon 32 --run-dir runs/svg32
    mbpo train --algo sac --env pendulum --run-dir runs/sac       (nfqca | fqi | fqi_amortized |
    ddpg | td3 | sac | mbpo)
    mbpo train --resume runs/svg32              continue a killed run (bit-identical on CPU)
    mbpo train --resume runs/svg32 --num-updates 3000             ... and extend it
    mbpo train --config runs/svg32/config.json  replay a run's settings
    mbpo evaluate runs/svg32 --episodes 64 --render
    mbpo compare horizons --env pendulum --horizons 0 1 4 full --out runs/horizons
    mbpo compare estimators --env pendulum --estimators svg dpmb_r bpo --out DIR

Exit codes: 0 done; 2 bad input (named, before anything is compiled or written) or an unusable
run directory or checkpoint (left as it is); 3 training diverged (the message names the last
finite evaluation and the checkpoint to resume from).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

from mbpo.cli import add_arguments, build

DIVERGED = 3  # exit code of a run stopped by non-finite training
# Fields that mean the same in every trainer's config: --config of one trainer gives them to
# another. The task fields are declared once (mbpo.agents.loop.TaskFields); the others have
# each trainer's own default.
SHARED_FIELDS = (
    *("env", "brax_backend", "eval_every", "eval_envs", "seed", "target_return"),
    *("num_envs", "episode_length", "num_updates", "gamma", "actor_lr", "critic_lr", "hidden"),
)
# What --resume may change: the length of the run (it extends it) and nothing else.
RESUMABLE = ("num_updates",)


def _envs(args: argparse.Namespace) -> None:
    import envs

    print(f"{'name':26s} {'kind':6s} {'obs':>4s} {'act':>4s} {'noise':>8s}  log_prob")
    for name in envs.names():
        if envs.is_brax(name) and not args.brax:
            print(
                f"{name:26s} brax   (sizes: mbpo envs --brax; building Brax systems takes seconds "
                "each)"
            )
            continue
        task = envs.make(name)
        kind = "brax" if envs.is_brax(name) else "jax"
        print(
            f"{name:26s} {kind:6s} {task.observation_size:4d} {task.action_size:4d} "
            f"{task.noise_shape!s:>8s}  {task.has_log_prob}"
        )


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that keeps the actions added to it in ``options`` (argparse's own
    list is private); its subparsers are of this class too."""

    def __init__(self, *args, **kwargs):
        self.options: list[argparse.Action] = []
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.options.append(action)
        return action


def _given(parser: Parser, argv: list[str]) -> set[str]:
    """The destinations of the options written out in ``argv`` (abbreviations are off)."""
    given = set()
    for action in parser.options:
        if any(
            token == o or token.startswith(o + "=") for token in argv for o in action.option_strings
        ):
            given.add(action.dest)
    return given


def _resume_config(parser, args, given: set[str], config_class: type):
    """The saved config of ``--resume``, with ``--num-updates`` applied; any other option is
    refused by name (it would silently not apply)."""
    from mbpo import runner

    try:
        config, seeds = runner.load_run(args.resume)
    except runner.RunDirError as error:
        parser.error(str(error))
    fields = {f.name for f in dataclasses.fields(config_class)}
    refused = sorted(
        d for d in given & (fields | {"config", "run_dir", "algo"}) if d not in RESUMABLE
    )
    if refused:
        names = ", ".join("--" + d.replace("_", "-") for d in refused)
        parser.error(
            f"--resume continues {args.resume} with its saved config; {names} would change it. "
            f"Only {', '.join('--' + r.replace('_', '-') for r in RESUMABLE)} (extend the run) and "
            "--seeds (must match) apply; "
            f"start a new run with --config {args.resume / runner.CONFIG} to change other settings"
        )
    if "seeds" in given and args.seeds != seeds:
        parser.error(
            f"--seeds {args.seeds}: the run in {args.resume} trains {seeds} seeds; leave --seeds "
            f"out to resume all {seeds}"
        )
    if "num_updates" in given:
        try:
            config = dataclasses.replace(config, num_updates=args.num_updates)
        except ValueError as error:
            parser.error(str(error))
    return config, seeds


def _train(
    parser: argparse.ArgumentParser, args: argparse.Namespace, config_class: type, given: set[str]
) -> None:
    """``mbpo train``: the config from the command line (or the saved one of ``--resume``), then
    :func:`mbpo.runner.fit` into the run directory."""
    from mbpo import curves, runner
    from mbpo.agents import loop

    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.from_checkpoint is not None and args.resume is None:
        parser.error("--from-checkpoint needs --resume RUN_DIR")
    if args.resume is not None:
        config, seeds = _resume_config(parser, args, given, config_class)
        run_dir = args.resume
    else:
        config, seeds = build(parser, config_class, args), args.seeds
        run_dir = (
            args.run_dir
            or pathlib.Path("runs")
            / f"{config.env}-{config.label}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    try:
        _, history = runner.fit(
            config,
            run_dir=run_dir,
            seeds=seeds,
            resume=args.resume is not None,
            from_checkpoint=args.from_checkpoint,
        )
    except runner.UnverifiedCheckpoint:
        raise  # a failure of the disk, not of the input: not a usage error
    except runner.RunDirError as error:
        parser.error(str(error))
    except loop.Diverged as error:
        steps = runner.checkpoint_steps(run_dir)
        where = (
            f"the newest checkpoint is after {steps[-1]} updates: resume from it with `mbpo train "
            f"--resume {run_dir}` "
            "after changing what diverged (or start a new run with --config and other settings)"
            if steps
            else "no checkpoint was written"
        )
        print(f"error: {error}; {where}", file=sys.stderr)
        raise SystemExit(DIVERGED) from None
    if seeds > 1:
        final = [round(float(r), 2) for r in history[-1]["eval_return"]]
        print(
            f"{seeds} seeds (one vmapped program): eval returns {final} after "
            f"{history[-1]['env_steps']} env steps"
        )
    if config.target_return is not None:
        _report_target(curves.seed_rows(history), config.target_return, seeds)
    print(
        f"wrote {run_dir}/{{{runner.CONFIG}, {runner.METRICS}, {runner.CHECKPOINTS}/, "
        f"{runner.CURVE}, {runner.TENSORBOARD}/}}"
    )


def _report_target(rows: list[dict], threshold: float, seeds: int) -> None:
    """Prints, per seed, the env steps, updates and wall-clock at which the evaluation return
    first reached ``threshold``."""
    from mbpo.agents.loop import first_to_reach

    for seed in range(seeds):
        mine = [r for r in rows if r.get("seed", 0) == seed]
        hit = first_to_reach(mine, threshold)
        who = f"seed {seed}: " if seeds > 1 else ""
        if hit is None:
            print(
                f"{who}eval return never reached {threshold} in {mine[-1]['env_steps']} env steps"
            )
        else:
            print(
                f"{who}reached eval return {hit['eval_return']:.1f} >= {threshold} after "
                f"{hit['env_steps']} env steps, "
                f"{hit['updates']} updates, {hit['wall_time']:.1f} s wall-clock (compilation "
                "included)"
            )


def _evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    import jax

    from mbpo import runner
    from mbpo.agents import loop
    from mbpo.agents.registry import make_trainer

    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    try:
        config, seeds = runner.load_run(args.run_dir)
        if seeds > 1:
            parser.error(
                f"{args.run_dir} trained {seeds} seeds in one program; evaluate reads single-seed "
                "runs"
            )
        config = dataclasses.replace(config, eval_envs=args.episodes)
        trainer = make_trainer(config)
        state, _history = runner.load_checkpoint(args.run_dir, loop.initial_state(trainer))
    except (runner.RunDirError, ValueError) as error:
        parser.error(str(error))
    value = float(jax.jit(trainer.evaluate)(state, jax.random.key(args.seed)))
    print(
        f"{args.run_dir}: mean return {value:.2f} over {args.episodes} episodes after "
        f"{int(state.updates)} updates"
    )
    if args.render:
        from mbpo.render import episode_states, render

        policy = trainer.act(state)
        states = episode_states(
            trainer.dynamics,
            policy,
            jax.random.key(args.seed),
            config.episode_length,
            trainer.policy.eps_shape,
        )
        print(f"wrote {render(trainer.dynamics, states, args.run_dir / 'episode')}")


def _train_config_class(argv: list[str]) -> type:
    """The config class ``mbpo train`` parses: from ``--algo``, else from
    ``--config``/``--resume``'s
    saved config, else the unroll trainer's."""
    from mbpo import runner
    from mbpo.agents import registry

    pre = argparse.ArgumentParser(prog="mbpo train", add_help=False, allow_abbrev=False)
    pre.add_argument("--algo")
    pre.add_argument("--config", type=pathlib.Path)
    pre.add_argument("--resume", type=pathlib.Path)
    known, _ = pre.parse_known_args(argv[1:])
    try:
        if known.resume is not None:
            return type(runner.load_config(known.resume))
        if known.algo is not None:
            return registry.config_class(known.algo)
        if known.config is not None:
            return type(runner.load_config(known.config))
    except (runner.RunDirError, ValueError) as error:
        pre.error(str(error))
    return registry.TRAINERS["unroll"][0]


def make_parser(train_config: type | None = None) -> argparse.ArgumentParser:
    """The ``mbpo`` parser; ``train`` takes the options of ``train_config`` (default: the unroll
    trainer's). ``parser.commands`` maps each command to its subparser."""
    from mbpo.agents import registry
    from mbpo.agents.unroll_trainer import UnrollTrainerConfig

    train_config = train_config or UnrollTrainerConfig
    algos = " | ".join(registry.ALGOS)
    parser = Parser(prog="mbpo", description="Policy optimization through differentiable dynamics.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_envs = sub.add_parser("envs", help="list the tasks and their sizes")
    p_envs.add_argument(
        "--brax", action="store_true", help="also build the Brax tasks to show their sizes"
    )
    p_train = sub.add_parser(
        "train",
        help=f"train an algorithm: --algo {algos}",
        description=f"Train one algorithm (--algo {algos}); `mbpo train --algo NAME --help` lists "
        "that algorithm's options.",
        allow_abbrev=False,
    )
    add_arguments(p_train, train_config)
    if "algo" not in {f.name for f in dataclasses.fields(train_config)}:
        p_train.add_argument(
            "--algo",
            choices=tuple(registry.ALGOS),
            help=f"the algorithm: {algos}. The estimators "
            f"({', '.join(registry.estimator_names())}) are "
            "this trainer's --estimator; the others have their own options (mbpo train --algo NAME "
            "--help)",
        )
    _add_run_options(p_train)
    p_eval = sub.add_parser(
        "evaluate",
        help="evaluate the checkpoint of a run directory",
        description="Evaluate a run's newest checkpoint.",
    )
    _add_evaluate_options(p_eval)
    sub.add_parser(
        "compare",
        help="compare horizons or estimators: mbpo compare {horizons,estimators} --help",
        add_help=False,
    )
    parser.commands = sub.choices
    return parser


def _add_run_options(p_train: argparse.ArgumentParser) -> None:
    """``mbpo train``'s options beside the config fields: where the run goes and how it resumes."""
    p_train.add_argument(
        "--run-dir",
        type=pathlib.Path,
        help="where config, metrics, checkpoints and plots go (must hold no run)",
    )
    p_train.add_argument(
        "--resume",
        type=pathlib.Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR (only --num-updates may change)",
    )
    p_train.add_argument(
        "--from-checkpoint",
        type=int,
        metavar="UPDATES",
        help="with --resume: the checkpoint after UPDATES updates (newer ones are set aside)",
    )
    p_train.add_argument(
        "--config",
        type=pathlib.Path,
        metavar="FILE",
        help="a config.json whose values become the defaults",
    )
    p_train.add_argument(
        "--seeds", type=int, default=1, help="train N seeds in one vmapped program"
    )


def _add_evaluate_options(p_eval: argparse.ArgumentParser) -> None:
    """``mbpo evaluate``'s options."""
    p_eval.add_argument(
        "run_dir", type=pathlib.Path, help="a run directory written by `mbpo train`"
    )
    p_eval.add_argument(
        "--episodes", type=int, default=32, help="evaluation episodes, mean action (default: 32)"
    )
    p_eval.add_argument(
        "--seed",
        type=int,
        default=12345,
        help="seed of the evaluation's resets and noise (default: 12345)",
    )
    p_eval.add_argument(
        "--render",
        action="store_true",
        help="also draw one episode: RUN_DIR/episode.html (Brax) or .png",
    )


def _config_defaults(parser, path: pathlib.Path, config_class: type, given: set[str]) -> dict:
    """The values of the config file ``path`` as defaults for ``config_class``'s options. From
    another trainer only :data:`SHARED_FIELDS` carry over; any other field both trainers have
    (tau, horizon, policy, ...) means something else there and is refused unless given
    explicitly."""
    from mbpo import runner
    from mbpo.agents import registry

    try:
        saved = runner.load_config(path)
    except runner.RunDirError as error:
        parser.error(str(error))
    values = dataclasses.asdict(saved)
    if type(saved) is config_class:
        return values
    target = {f.name for f in dataclasses.fields(config_class)}
    clash = sorted(
        k
        for k in values
        if k in target and k not in SHARED_FIELDS and k != "algo" and k not in given
    )
    if clash:
        parser.error(
            f"--config {path} is a {registry.trainer_name(saved)} config; its {', '.join(clash)} "
            "mean something else for "
            f"{config_class.__name__}: give them explicitly "
            f"({', '.join('--' + k.replace('_', '-') for k in clash)}) "
            "or leave them out of the file"
        )
    dropped = sorted(k for k in values if k not in target)
    if dropped:
        print(
            f"note: --config {path}: {config_class.__name__} has no {', '.join(dropped)}; they are "
            "not used",
            file=sys.stderr,
        )
    return {k: v for k, v in values.items() if k in SHARED_FIELDS}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from mbpo import compare

        compare.main(argv[1:])
        return
    train_config = _train_config_class(argv) if argv[:1] == ["train"] else None
    parser = make_parser(train_config)
    args = parser.parse_args(argv)
    subparser = parser.commands[args.command]
    if args.command == "envs":
        _envs(args)
    elif args.command == "train":
        given = _given(subparser, argv[1:])
        if args.config is not None and args.resume is None:
            defaults = _config_defaults(subparser, args.config, train_config, given)
            if getattr(args, "algo", None) is not None and "estimator" in vars(args):
                defaults["estimator"] = args.algo
            subparser.set_defaults(**defaults)
            args = parser.parse_args(argv)
        if "estimator" in vars(args) and getattr(args, "algo", None) is not None:
            args.estimator = args.algo
        _train(subparser, args, train_config, given)
    else:
        _evaluate(subparser, args)


if __name__ == "__main__":
    main()
