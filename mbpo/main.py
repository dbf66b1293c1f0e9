"""The ``mbpo`` command: ``mbpo envs | train | evaluate | compare``.

    mbpo envs                                   list the tasks and their sizes
    mbpo train --env pendulum --estimator svg --horizon 32 --run-dir runs/svg32
    mbpo train --algo sac --env pendulum --run-dir runs/sac       (nfqca | fqi | fqi_amortized | ddpg | td3 | sac)
    mbpo train --resume runs/svg32              continue a killed run (bit-identical on CPU)
    mbpo train --config runs/svg32/config.json  replay a run's settings
    mbpo evaluate runs/svg32 --episodes 64 --render
    mbpo compare horizons --preset cpu --out runs/horizons
    mbpo compare estimators --env pendulum --estimators svg dpmb_r bpo --out runs/estimators

Bad input exits with code 2 and a message naming the value, before anything is compiled or written.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

from mbpo.cli import add_arguments, build


def _envs(args: argparse.Namespace) -> None:
    import envs

    print(f"{'name':26s} {'kind':6s} {'obs':>4s} {'act':>4s} {'noise':>8s}  log_prob")
    for name in envs.names():
        if envs.is_brax(name) and not args.brax:
            print(f"{name:26s} brax   (sizes: mbpo envs --brax; building Brax systems takes seconds each)")
            continue
        task = envs.make(name)
        kind = "brax" if envs.is_brax(name) else "jax"
        print(f"{name:26s} {kind:6s} {task.observation_size:4d} {task.action_size:4d} {str(task.noise_shape):>8s}  {task.has_log_prob}")


def _train(parser: argparse.ArgumentParser, args: argparse.Namespace, config_class: type) -> None:
    from mbpo import runner
    from mbpo.agents import loop
    from mbpo.agents.registry import make_trainer

    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    config = build(parser, config_class, args)
    if args.resume is not None:
        run_dir = args.resume
        try:
            config = runner.load_config(run_dir)
        except (runner.RunDirError, ValueError, TypeError) as error:
            parser.error(str(error))
    else:
        run_dir = args.run_dir or pathlib.Path("runs") / f"{config.env}-{config.label}-{time.strftime('%Y%m%d-%H%M%S')}"
        if runner.has_checkpoint(run_dir):
            parser.error(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --run-dir")
    try:
        runner.check_writable(run_dir)
    except runner.RunDirError as error:
        parser.error(str(error))

    if args.seeds > 1:
        runner.save_config(run_dir, config)
        _, result = loop.train_seeds(make_trainer(config), args.seeds)
        rows = [
            {"updates": r["updates"], "env_steps": r["env_steps"], "wall_time": r["wall_time"], "seed": i, "eval_return": ret}
            for r in result["history"]
            for i, ret in enumerate(r["eval_return"])
        ]
        runner.write_metrics(run_dir, rows)
        runner.plot_learning_curve(run_dir, rows, f"{config.label} on {config.env}, {args.seeds} seeds")
        final = [round(float(r), 2) for r in result["eval_return"]]
        print(f"{args.seeds} seeds (one vmapped program): eval returns {final} after {result['env_steps']} env steps; wrote {run_dir}")
        return

    resume = None
    if args.resume is not None:
        trainer = make_trainer(config)
        import jax

        try:
            resume = runner.load_checkpoint(run_dir, jax.jit(trainer.init)(jax.random.key(config.seed)))
        except runner.RunDirError as error:
            parser.error(str(error))
        print(f"resuming {run_dir} at update {resume[1][-1]['updates'] if resume[1] else 0}")
    else:
        runner.save_config(run_dir, config)

    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    history = list(resume[1]) if resume else []
    done = history[-1]["updates"] if history else 0
    bar = tqdm(total=config.num_updates, initial=done, unit="update", dynamic_ncols=True, file=sys.stdout)
    board = SummaryWriter(logdir=str(run_dir / runner.TENSORBOARD))
    last = {"time": time.perf_counter(), "steps": history[-1]["env_steps"] if history else 0}

    def checkpoint(record, state):
        history.append(record)
        runner.save_checkpoint(run_dir, state, history)
        runner.write_metrics(run_dir, history)
        for name, value in record.items():
            board.add_scalar(name, value, global_step=record["env_steps"])
        board.flush()
        now = time.perf_counter()
        rate = (record["env_steps"] - last["steps"]) / max(now - last["time"], 1e-9)
        last.update(time=now, steps=record["env_steps"])
        bar.set_postfix(ret=f"{record['eval_return']:.1f}", grad=f"{record['grad_norm']:.3g}", steps_per_s=f"{rate:.0f}")
        bar.update(record["updates"] - bar.n)

    try:
        _, history = loop.train(make_trainer(config), callback=checkpoint, resume=resume)
    finally:
        bar.close()
        board.close()
    runner.plot_learning_curve(run_dir, history, f"{config.label} on {config.env}")
    print(f"wrote {run_dir}/{{{runner.CONFIG}, {runner.METRICS}, {runner.CHECKPOINTS}/, {runner.CURVE}, {runner.TENSORBOARD}/}}")


def _evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    import jax

    from mbpo import runner
    from mbpo.agents.registry import make_trainer

    try:
        config = runner.load_config(args.run_dir)
        config = dataclasses.replace(config, eval_envs=args.episodes)
        trainer = make_trainer(config)
        state, history = runner.load_checkpoint(args.run_dir, jax.jit(trainer.init)(jax.random.key(config.seed)))
    except (runner.RunDirError, ValueError) as error:
        parser.error(str(error))
    value = float(jax.jit(trainer.evaluate)(state, jax.random.key(args.seed)))
    print(f"{args.run_dir}: mean return {value:.2f} over {args.episodes} episodes after {int(state.updates)} updates")
    if args.render:
        from mbpo.render import episode_states, render

        policy = trainer.act(state)
        states = episode_states(trainer.dynamics, policy, jax.random.key(args.seed), config.episode_length, trainer.policy.eps_shape)
        print(f"wrote {render(trainer.dynamics, states, args.run_dir / 'episode')}")


def _train_config_class(argv: list[str]) -> type:
    """The config class ``mbpo train`` parses: from ``--algo``, else from ``--config``/``--resume``'s
    saved config, else the unroll trainer's."""
    from mbpo import runner
    from mbpo.agents import registry

    pre = argparse.ArgumentParser(prog="mbpo train", add_help=False)
    pre.add_argument("--algo")
    pre.add_argument("--config", type=pathlib.Path)
    pre.add_argument("--resume", type=pathlib.Path)
    known, _ = pre.parse_known_args(argv[1:])
    try:
        if known.algo is not None:
            return registry.config_class(known.algo)
        saved = known.config or known.resume
        if saved is not None:
            return type(runner.load_config(saved))
    except (runner.RunDirError, ValueError) as error:
        pre.error(str(error))
    return registry.TRAINERS["unroll"][0]


def make_parser(train_config: type | None = None) -> argparse.ArgumentParser:
    """The ``mbpo`` parser; ``train`` takes the options of ``train_config`` (default: the unroll trainer's)."""
    from mbpo import estimators
    from mbpo.agents.unroll_trainer import UnrollTrainerConfig

    train_config = train_config or UnrollTrainerConfig
    parser = argparse.ArgumentParser(prog="mbpo", description="Policy optimization through differentiable dynamics.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_envs = sub.add_parser("envs", help="list the tasks and their sizes")
    p_envs.add_argument("--brax", action="store_true", help="also build the Brax tasks to show their sizes")
    p_train = sub.add_parser(
        "train", help="train an algorithm: --algo bpo | svg | dpmb_r | dpmb_sf | nfqca | fqi | fqi_amortized | ddpg | td3 | sac"
    )
    add_arguments(p_train, train_config)
    if train_config is UnrollTrainerConfig:
        p_train.add_argument("--algo", choices=tuple(estimators.ESTIMATORS), help="the estimator (same as --estimator)")
    p_train.add_argument("--run-dir", type=pathlib.Path, help="where config, metrics, checkpoint and plots go")
    p_train.add_argument("--resume", type=pathlib.Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p_train.add_argument("--config", type=pathlib.Path, metavar="FILE", help="a config.json whose values become the defaults")
    p_train.add_argument("--seeds", type=int, default=1, help="train N seeds in one vmapped program")
    p_eval = sub.add_parser("evaluate", help="evaluate the checkpoint of a run directory")
    p_eval.add_argument("run_dir", type=pathlib.Path)
    p_eval.add_argument("--episodes", type=int, default=32)
    p_eval.add_argument("--seed", type=int, default=12345)
    p_eval.add_argument("--render", action="store_true", help="also draw one episode: RUN_DIR/episode.html (Brax) or .png")
    sub.add_parser("compare", help="compare horizons or estimators: mbpo compare {horizons,estimators} --help", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from experiments import compare_estimators, compare_horizons

        kinds = {"horizons": compare_horizons.main, "estimators": compare_estimators.main}
        if len(argv) < 2 or argv[1] not in kinds:
            make_parser().error(f"mbpo compare needs one of: {', '.join(kinds)} (then --help), got {argv[1:2]}")
        kinds[argv[1]](argv[2:])
        return
    train_config = _train_config_class(argv) if argv[:1] == ["train"] else None
    parser = make_parser(train_config)
    args = parser.parse_args(argv)
    subparser = parser._subparsers._group_actions[0].choices[args.command]  # argparse keeps them here only
    if args.command == "envs":
        _envs(args)
    elif args.command == "train":
        if args.config is not None:
            from mbpo import runner

            try:
                defaults = dataclasses.asdict(runner.load_config(args.config))
                if getattr(args, "algo", None) is not None and "estimator" in defaults:
                    defaults["estimator"] = args.algo
            except (runner.RunDirError, ValueError, TypeError) as error:
                subparser.error(str(error))
            subparser.set_defaults(**defaults)
            args = parser.parse_args(argv)
        if "estimator" in vars(args) and getattr(args, "algo", None) is not None:
            args.estimator = args.algo
        _train(subparser, args, train_config)
    else:
        _evaluate(subparser, args)


if __name__ == "__main__":
    main()
