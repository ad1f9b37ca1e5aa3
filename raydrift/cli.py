"""Command line: ``raydrift run | validate | detectors | report``.

User mistakes (:class:`raydrift.errors.UserError`) are printed as one line on stderr and exit with
code 2 before anything is started.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from raydrift.errors import EXIT_USAGE, UserError


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

    val = sub.add_parser("validate", help="check a config (and its harness options) without running anything")
    add_config_args(val)
    val.add_argument("--show", action="store_true", help="print the resolved config")

    sub.add_parser("keys", help="list every config key with its default")
    sub.add_parser("detectors", help="list the drift detectors with their parameters and defaults")

    rep = sub.add_parser(
        "report",
        help="regenerate the plots and CSV exports of a run directory and print its summary",
    )
    rep.add_argument("run_dir", help="a run directory, runs/<name>-<timestamp>")
    return p


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from raydrift.config import build_config, validate_harness_options

    cfg = build_config(args.config, args.overrides)
    validate_harness_options(cfg)
    from raydrift.detection import check_detector_domain, make_detector
    from raydrift.learning.strategies import make_strategy

    make_detector(cfg.drift_detection.detector, cfg.drift_detection.params, seed=cfg.seed)
    check_detector_domain(cfg)  # the detectors can take what the monitored metric gives
    make_strategy(cfg.continual_learning.strategy, cfg.continual_learning)
    return cfg


def _stop_on_sigterm() -> None:
    """``ray job stop`` and Kubernetes send SIGTERM: stop like Ctrl-C, writing what the run has."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): leave the default
        pass


def _cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    run_dir = None
    if args.resume:
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
    elif args.config is None:
        raise UserError("raydrift run needs a CONFIG file (e.g. configs/mnist.yaml) or --resume RUN_DIR")
    cfg = _load(args)
    from raydrift.coordinator import Coordinator

    if args.run_dir:
        run_dir = Path(args.run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
    _stop_on_sigterm()
    summary = Coordinator(cfg, address=args.address, run_dir=run_dir, resume=bool(args.resume)).run()
    return 130 if summary["run"]["status"] == "interrupted" else 0


def _cmd_validate(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.show:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    print(
        f"{args.config}: OK (harness '{cfg.model.harness}', detector '{cfg.drift_detection.detector}', "
        f"strategy '{cfg.continual_learning.strategy}')"
    )
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from raydrift.config import RaydriftConfig, all_keys

    defaults = RaydriftConfig().to_dict()
    for key in all_keys():
        node = defaults
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None  # type: ignore[assignment]
        if not isinstance(node, dict) or not node:
            print(f"{key} = {node!r}")
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
    except KeyboardInterrupt:
        print("raydrift: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
