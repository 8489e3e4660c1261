"""Command line.

    python -m mhsa train CONFIG --out DIR [--set key=value ...]   train and evaluate one cell
    python -m mhsa sync-mlflow RESULTS_DIR                        replay finished cells into MLflow
    python -m mhsa tables [--config ...] [--runs ...] [--out ...]  the paper's tables from finished cells
    python -m mhsa plots [--config ...] [--runs ...] [--out ...]   the study's figures from finished cells
    python -m mhsa diagnostic-plots RUN_DIR ...                   the diagnostics of a family of cells

A mistake in the config, the data or the environment prints one line naming the key or the file
and what to do (plus where the traceback is) and exits non-zero: 2 for a config error, 1 otherwise.
The traceback goes to the --log file, or to the terminal with --debug.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path


def _setup_logging(log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=handlers, force=True)
    for noisy in ("alembic", "mlflow", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _train(args: argparse.Namespace) -> int:
    from mhsa.config import load_run_config

    cfg = load_run_config(args.config, args.set)  # before importing torch: config mistakes fail fast
    from mhsa.run.cpu_kernels import pin

    pin(cfg.cpu_kernels)  # torch and NumPy read it once, at import
    from mhsa.run.cell_lock import cell_lock
    from mhsa.run.train import train_cell

    out = Path(args.out)
    ckpt_dir = Path(args.ckpt_dir) if args.ckpt_dir else out / "checkpoints"
    with cell_lock([out, ckpt_dir], cfg.name):
        train_cell(cfg, out, ckpt_dir=ckpt_dir, tracking_uri=args.tracking_uri)
    print(f"metrics: {out / 'metrics.json'}")
    return 0


def _sync(args: argparse.Namespace) -> int:
    from mhsa.run.sync import sync_results

    done = sync_results(args.results_dir, tracking_uri=args.tracking_uri)
    for cell, what in done.items():
        print(f"{cell}: {what}")
    return 0


def _report(err: Exception, args: argparse.Namespace) -> int:
    """One line for a user mistake (the traceback to --log); the full traceback for anything else."""
    from mhsa.config import ConfigError
    from mhsa.errors import describe

    if args.log:
        try:
            with open(args.log, "a") as fh:
                traceback.print_exception(err, file=fh)
        except OSError:  # the log itself may sit on the read-only disk that caused the error
            pass
    message = describe(err)
    if message is None:
        traceback.print_exception(err, file=sys.stderr)
        return 1
    where = f"full traceback in {args.log}" if args.log else "rerun with --debug for the traceback"
    print(f"error: {message}\n({where})", file=sys.stderr)
    return 2 if isinstance(err, ConfigError) else 1


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite under results/)")
    common.add_argument("--log", default=None, help="also write the log (and any traceback) to this file")
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser = argparse.ArgumentParser(prog="python -m mhsa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", parents=[common],
                       help="train and evaluate one cell, resuming from its last checkpoint")
    t.add_argument("config", help="run config YAML (e.g. mhsa/configs/smoke.yaml)")
    t.add_argument("--out", required=True, help="output directory (metrics.json, attention maps)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set loss.lambda1=1e-4 (repeatable)")
    t.add_argument("--ckpt-dir", default=None, help="checkpoint directory (default: OUT/checkpoints)")
    s = sub.add_parser("sync-mlflow", parents=[common],
                       help="replay finished cells (RESULTS_DIR/runs/*/metrics.json) into the MLflow store; "
                            "idempotent")
    s.add_argument("results_dir", help="results directory (holds runs/<cell>/metrics.json)")
    sub.add_parser("tables", help="the paper's tables beside ours from finished cells (see: tables --help)")
    sub.add_parser("plots", help="the study's figures from finished cells (see: plots --help)")
    sub.add_parser("diagnostic-plots", help="figures of the diagnostics of cells (see: diagnostic-plots --help)")
    return parser


# Commands with a parser of their own in the study layer: the rest of the line is theirs.
_STUDY_COMMANDS = {"tables": "mhsa.study.tables", "plots": "mhsa.study.plots",
                   "diagnostic-plots": "mhsa.study.diagnostic_plots"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in _STUDY_COMMANDS:
        import importlib

        return importlib.import_module(_STUDY_COMMANDS[argv[0]]).main(argv[1:]) or 0
    args = _parser().parse_args(argv)
    command = {"train": _train, "sync-mlflow": _sync}[args.command]
    try:
        _setup_logging(args.log)
        return command(args)
    except Exception as err:
        if args.debug:
            raise
        return _report(err, args)


if __name__ == "__main__":
    sys.exit(main())
