"""Command line: ``raydrift run | validate | detectors | report``.

User mistakes (:class:`raydrift.errors.UserError`) are printed as one line on stderr and exit with
code 2 before anything is started.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from raydrift.errors import EXIT_FAILED, EXIT_OK, EXIT_SIGNAL_BASE, EXIT_UPDATES_FAILED, EXIT_USAGE, UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="raydrift", description="Continual learning on Ray: detect drift, adapt, hot-swap."
    )
    sub = p.add_subparsers(dest="command", required=True)

    def add_config_args(sp: argparse.ArgumentParser, optional: bool = False) -> None:
        if optional:
            sp.add_argument("config", nargs="?", help="YAML or TOML config file (see configs/)")
        else:
            sp.add_argument("config", help="YAML or TOML config file (see configs/)")
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override a config value (repeatable; parsed as a YAML scalar; wins over RAYDRIFT_* env vars)",
        )

    run = sub.add_parser("run", help="run the drift -> adapt -> broadcast loop")
    add_config_args(run, optional=True)
    run.add_argument(
        "--address", help="address of an existing Ray cluster (default: RAY_ADDRESS, else a new local one)"
    )
    run.add_argument("--run-dir", help="write outputs here instead of <logging.runs_dir>/<name>-<timestamp>")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted or crashed run from its checkpoint (its config.yaml unless CONFIG is given)",
    )

    val = sub.add_parser(
        "validate", help="make every check `run` makes before it starts (config, harness, metric, resources)"
    )
    add_config_args(val)
    val.add_argument(
        "--address", help="also check the resource totals against this Ray cluster (default: ray.address, RAY_ADDRESS)"
    )
    val.add_argument("--show", action="store_true", help="print the resolved config")

    sub.add_parser("keys", help="list every config key with its default (and each strategy's params)")
    sub.add_parser("detectors", help="list the drift detectors with their parameters and defaults")

    rep = sub.add_parser(
        "report",
        help="regenerate the plots and CSV exports of a run directory and print its summary",
    )
    rep.add_argument("run_dir", help="a run directory, runs/<name>-<timestamp>")
    return p


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from raydrift.config import build_config

    return build_config(args.config, args.overrides)


def exit_code(summary: Any) -> int:
    """The process's exit status for a run's summary (a :class:`~raydrift.pipeline.records.RunSummary`
    or its JSON form; see :mod:`raydrift.errors`)."""
    import signal

    if hasattr(summary, "to_dict"):
        summary = summary.to_dict()
    run = summary.get("run") or {}
    if run.get("status") == "interrupted":
        name = run.get("signal") or "SIGINT"
        return EXIT_SIGNAL_BASE + int(getattr(signal, name, signal.SIGINT))
    if run.get("status") == "failed":
        return EXIT_FAILED
    failed = [u for u in summary.get("rejected_updates") or [] if u.get("status") == "failed"]
    return EXIT_UPDATES_FAILED if failed else EXIT_OK


def _resume_dir(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from pathlib import Path

    if args.run_dir:
        raise UserError("give either --resume RUN_DIR or --run-dir, not both")
    run_dir = Path(args.resume).resolve()
    if not run_dir.is_dir():
        raise UserError(f"--resume '{args.resume}' is not a directory: give the directory of an earlier run")
    if (run_dir / "summary.json").is_file():
        from raydrift.report import load_summary

        try:
            status = load_summary(run_dir)["run"]["status"]
        except (UserError, KeyError, TypeError):  # a damaged summary does not stop a resume
            status = None
        if status == "completed":
            raise UserError(f"run '{run_dir}' already completed: nothing to resume")
    if args.config is None:
        args.config = str(run_dir / "config.yaml")
    return run_dir


def _cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from raydrift.session import install_stop_handlers

    # until Ray starts (the coordinator installs them again after ray.init, which replaces SIGTERM's)
    install_stop_handlers()
    run_dir = None
    if args.resume:
        run_dir = _resume_dir(args)
    elif args.config is None:
        raise UserError("raydrift run needs a CONFIG file (e.g. configs/mnist.yaml) or --resume RUN_DIR")
    cfg = _config(args)
    from raydrift.coordinator import Coordinator

    if args.run_dir:
        run_dir = Path(args.run_dir).resolve()
    coordinator = Coordinator(cfg, address=args.address, run_dir=run_dir, resume=bool(args.resume))
    try:
        summary = coordinator.run()
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - a failure inside the run: the summary says it, one line here
        from raydrift.coordinator import ERROR_LOG, error_line

        where = f"; traceback in {coordinator.run_dir / ERROR_LOG}" if coordinator.run_dir else ""
        print(f"raydrift: the run failed: {error_line(exc)}{where}", file=sys.stderr)
        return EXIT_FAILED
    return exit_code(summary)


def _cmd_validate(args: argparse.Namespace) -> int:
    """Every check ``run`` makes before it starts anything; with a cluster address, also the
    resource totals against that cluster."""
    import os

    from raydrift.preflight import check_config, check_resources, local_resources

    cfg = _config(args)
    check_config(cfg)
    address = args.address or cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_cluster(cfg, address)
    elif not cfg.ray.autoscaling:
        check_resources(cfg, local_resources(cfg), "this machine")
    if args.show:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    print(
        f"{args.config}: OK (harness '{cfg.model.harness}', detector '{cfg.drift_detection.detector}', "
        f"strategy '{cfg.continual_learning.strategy}')"
    )
    return 0


def _check_cluster(cfg, address: str) -> None:  # type: ignore[no-untyped-def]
    import ray

    from raydrift.preflight import check_resources
    from raydrift.session import RaySession

    session = RaySession(cfg, address)
    session.start()
    try:
        if not cfg.ray.autoscaling:
            check_resources(cfg, ray.cluster_resources(), f"the cluster at {address}")
    finally:
        session.shutdown()


def _cmd_keys(args: argparse.Namespace) -> int:
    from raydrift.config import RaydriftConfig, all_keys

    defaults = RaydriftConfig().to_dict()
    for key in all_keys():
        node = defaults
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None  # type: ignore[assignment]
        if not isinstance(node, dict) or not node:
            print(f"{key} = {node!r}")
    from raydrift.learning.strategies import list_strategy_options

    # each strategy's options, from its Options model: the keys of continual_learning.params
    for strategy, key, default, description in list_strategy_options():
        print(f"continual_learning.params.{key} = {default!r}  [strategy {strategy}] {description}".rstrip())
    return 0


def _cmd_detectors(args: argparse.Namespace) -> int:
    from raydrift.detection import list_detectors

    for name, params, doc in list_detectors():
        ps = ", ".join(f"{k}={v!r}" for k, v in params.items())
        print(f"{name:14s} {doc}\n{'':14s} params: {ps or '(none)'}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from raydrift.report import report

    print(report(args.run_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # Like `python -m`, let dotted-path harnesses live in the current directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    args = _parser().parse_args(argv)
    handlers = {
        "run": _cmd_run,
        "validate": _cmd_validate,
        "keys": _cmd_keys,
        "detectors": _cmd_detectors,
        "report": _cmd_report,
    }
    try:
        return handlers[args.command](args)
    except UserError as exc:
        print(f"raydrift: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print("raydrift: interrupted", file=sys.stderr)
        return int(getattr(exc, "exit_code", EXIT_SIGNAL_BASE + 2))


if __name__ == "__main__":
    sys.exit(main())
