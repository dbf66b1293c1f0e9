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

from mbpo.cli import add_arguments, add_field_argument, build, converter

DIVERGED = 3  # exit code of a run stopped by non-finite training
# Fields that mean the same in every trainer's config: --config of one trainer gives them to
# another. The task fields are declared once (mbpo.agents.loop.TaskFields); the others have
# each trainer's own default.
SHARED_FIELDS = (
    *("env", "brax_backend", "eval_every", "eval_envs", "seed", "target_return", "mjx_iterations"),
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


def _train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``mbpo train``: the trainer (:func:`_config_class`) and its config from the command line
    (or the saved one of ``--resume``), then :func:`mbpo.runner.fit` into the run directory."""
    from mbpo import curves, runner
    from mbpo.agents import loop, registry

    given = set(vars(args)) - {"command"}
    config_class = _config_class(parser, args)
    _check_options(parser, config_class, given)
    _enable_cache(parser, getattr(args, "compile_cache", None))
    resume, seeds = getattr(args, "resume", None), getattr(args, "seeds", 1)
    if seeds < 1:
        parser.error(f"--seeds must be >= 1, got {seeds}")
    from_checkpoint = getattr(args, "from_checkpoint", None)
    if from_checkpoint is not None and resume is None:
        parser.error("--from-checkpoint needs --resume RUN_DIR")
    if resume is not None:
        config, seeds = _resume_config(parser, args, given, config_class)
        run_dir = resume
    else:
        path = getattr(args, "config", None)
        defaults = _config_defaults(parser, path, config_class, given) if path else {}
        # --algo NAME sets what it names (an estimator, a named configuration, an algorithm);
        # the options given override it.
        if "algo" in given:
            defaults = {**defaults, **registry.algo_defaults(args.algo)}
        config = build(parser, config_class, args, defaults)
        run_dir = getattr(args, "run_dir", None) or (
            pathlib.Path("runs") / f"{config.env}-{config.label}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    try:  # what the trainer refuses (a task it cannot differentiate) is a usage error: exit 2
        registry.make_trainer(config)  # cached: fit builds nothing again
    except ValueError as error:
        parser.error(str(error))
    try:
        _, history = runner.fit(
            config,
            run_dir=run_dir,
            seeds=seeds,
            resume=resume is not None,
            from_checkpoint=from_checkpoint,
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
    _enable_cache(parser, args.compile_cache)
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
    value = float(loop.evaluate_stored(trainer, state, jax.random.key(args.seed)))
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


def _fields(config_class: type) -> set[str]:
    return {f.name for f in dataclasses.fields(config_class)}


def _config_class(parser: argparse.ArgumentParser, args: argparse.Namespace) -> type:
    """The config class of ``mbpo train``: ``--resume``'s saved one, else ``--algo``'s, else
    ``--config``'s saved one, else the unroll trainer's."""
    from mbpo import runner
    from mbpo.agents import registry

    try:
        if getattr(args, "resume", None) is not None:
            return type(runner.load_config(args.resume))
        if getattr(args, "algo", None) is not None:
            return registry.config_class(args.algo)
        if getattr(args, "config", None) is not None:
            return type(runner.load_config(args.config))
    except (runner.RunDirError, ValueError) as error:
        parser.error(str(error))
    return registry.TRAINERS["unroll"][0]


def _train_config_class(argv: list[str]) -> type:
    """The config class ``mbpo train`` with ``argv`` trains (:func:`_config_class`)."""
    parser = make_parser()
    return _config_class(parser.commands["train"], parser.parse_args(argv))


def _check_options(parser: argparse.ArgumentParser, config_class: type, given: set[str]) -> None:
    """Refuses an option that is a field of another trainer's config only."""
    stray = sorted(given & set(_union()) - _fields(config_class) - {"algo"})
    if stray:
        names = " ".join("--" + s.replace("_", "-") for s in stray)
        parser.error(
            f"unrecognized arguments: {names} (options of another trainer, not of "
            f"{config_class.__name__}: `mbpo train --algo NAME --help` lists an algorithm's)"
        )


def _union() -> dict[str, tuple]:
    """Every config field of every trainer, once: (annotation, choices, help, former names).
    Where trainers differ, the optional annotation wins and choices are left to the config's own
    check."""
    import typing

    from mbpo.agents import registry

    union: dict[str, tuple] = {}
    for config_class, *_ in registry.TRAINERS.values():
        hints = typing.get_type_hints(config_class)
        for field in dataclasses.fields(config_class):
            hint, choices = hints[field.name], field.metadata.get("choices")
            formerly = field.metadata.get("formerly", ())
            if field.name in union:
                old_hint, old_choices, old_help, old_names = union[field.name]
                optional = old_hint if type(None) in typing.get_args(old_hint) else hint
                same = old_choices == choices
                names = (*old_names, *(n for n in formerly if n not in old_names))
                union[field.name] = (optional, choices if same else None, old_help, names)
            else:
                union[field.name] = (hint, choices, field.metadata.get("help", ""), formerly)
    return union


class _TrainHelp(argparse.Action):
    """``-h``: the options of the trainer chosen so far on the command line (``--algo NAME
    --help``), with their defaults."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        help_parser = argparse.ArgumentParser(
            prog=parser.prog, description=parser.description, allow_abbrev=False
        )
        config_class = _config_class(parser, namespace)
        add_arguments(help_parser, config_class)
        _add_algo(help_parser, config_class)
        _add_run_options(help_parser)
        help_parser.print_help()
        parser.exit()


def _add_algo(p_train: argparse.ArgumentParser, config_class: type | None) -> None:
    from mbpo.agents import registry

    if config_class is not None and "algo" in _fields(config_class):
        return
    algos = " | ".join(registry.ALGOS)
    p_train.add_argument(
        "--algo",
        default=argparse.SUPPRESS,
        help=f"the algorithm: {algos}. The estimators "
        f"({', '.join(registry.estimator_names())}) are the unroll trainer's --estimator; the "
        "others have their own options (mbpo train --algo NAME --help)",
    )


def make_parser() -> argparse.ArgumentParser:
    """The ``mbpo`` parser, which reads the command line once. ``train`` takes every trainer's
    config fields (none has a default in the namespace: what is there was given); the trainer is
    chosen after parsing (:func:`_config_class`) and an option it lacks refused by name.
    ``parser.commands`` maps each command to its subparser."""
    from mbpo.agents import registry

    algos = " | ".join(registry.ALGOS)
    parser = argparse.ArgumentParser(
        prog="mbpo", description="Policy optimization through differentiable dynamics."
    )
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
        add_help=False,
    )
    p_train.add_argument("-h", "--help", action=_TrainHelp, help="show the trainer's options")
    for name, (hint, choices, text, formerly) in _union().items():
        convert, extra = converter(hint)
        add_field_argument(
            p_train,
            name,
            formerly,
            type=convert,
            default=argparse.SUPPRESS,
            choices=choices,
            help=text,
            **extra,
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


# mbpo train's options beside the config fields: (flag, type, metavar, help).
RUN_OPTIONS = (
    ("--run-dir", pathlib.Path, None, "where the run's files go (must hold no run)"),
    ("--resume", pathlib.Path, "RUN_DIR", "continue the run in RUN_DIR (--num-updates may grow)"),
    ("--from-checkpoint", int, "UPDATES", "with --resume: the checkpoint after UPDATES updates"),
    ("--config", pathlib.Path, "FILE", "a config.json whose values become the defaults"),
    ("--seeds", int, None, "train N seeds in one vmapped program (default: 1)"),
    (
        "--compile-cache",
        str,
        "DIR|off",
        "jax's persistent compilation cache (default: $MBPO_COMPILE_CACHE, else "
        "~/.cache/mbpo/jax): a second run of the same configuration skips its compiles",
    ),
)


def _enable_cache(parser: argparse.ArgumentParser, setting: str | None) -> None:
    from mbpo import compile_cache

    try:
        compile_cache.enable(setting)
    except ValueError as error:
        parser.error(f"--compile-cache: {error}")


def _add_run_options(p_train: argparse.ArgumentParser) -> None:
    """:data:`RUN_OPTIONS`: where the run goes and how it resumes (none has a default in the
    namespace)."""
    for flag, kind, metavar, text in RUN_OPTIONS:
        p_train.add_argument(flag, type=kind, metavar=metavar, default=argparse.SUPPRESS, help=text)


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
    p_eval.add_argument(
        "--compile-cache",
        metavar="DIR|off",
        help="jax's persistent compilation cache (default: $MBPO_COMPILE_CACHE, else "
        "~/.cache/mbpo/jax)",
    )


def _config_defaults(parser, path: pathlib.Path, config_class: type, given: set[str]) -> dict:
    """The values of the config file ``path`` as defaults for ``config_class``'s options. From
    another trainer only :data:`SHARED_FIELDS` carry over; any other field both trainers have
    (tau, horizon, policy, ...) means something else there: set away from that trainer's default,
    it is refused unless given explicitly; at its default, ``config_class``'s default stands."""
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
    chosen = {f.name for f in dataclasses.fields(saved) if values[f.name] != f.default}
    clash = sorted(
        k
        for k in chosen
        if k in target and k not in SHARED_FIELDS and k != "algo" and k not in given
    )
    if clash:
        parser.error(
            f"--config {path} is a {registry.trainer_name(saved)} config; its {', '.join(clash)} "
            f"mean{'s' * (len(clash) == 1)} something else for "
            f"{config_class.__name__}: give them explicitly "
            f"({', '.join('--' + k.replace('_', '-') for k in clash)}) "
            "or leave them out of the file"
        )
    dropped = sorted(k for k in chosen if k not in target)
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
    parser = make_parser()
    args = parser.parse_args(argv)
    subparser = parser.commands[args.command]
    if args.command == "envs":
        _envs(args)
    elif args.command == "train":
        _train(subparser, args)
    else:
        _evaluate(subparser, args)


if __name__ == "__main__":
    main()
