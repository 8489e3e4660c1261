"""Command line: `python -m mhsa train CONFIG --out DIR [--set key=value ...]`."""

from __future__ import annotations

import argparse
import logging
import sys
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
    from mhsa.config import ConfigError, load_config
    from mhsa.train import train_cell

    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    train_cell(cfg, out, ckpt_dir=args.ckpt_dir, tracking_uri=args.tracking_uri)
    print(f"metrics: {out / 'metrics.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mhsa", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and evaluate one cell, resuming from its last checkpoint")
    t.add_argument("config", help="run config YAML (e.g. mhsa/configs/smoke.yaml)")
    t.add_argument("--out", required=True, help="output directory (metrics.json, attention maps)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set loss.lambda1=1e-4 (repeatable)")
    t.add_argument("--ckpt-dir", default=None, help="checkpoint directory (default: OUT/checkpoints)")
    t.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite under results/)")
    t.add_argument("--log", default=None, help="also write the log to this file")
    args = parser.parse_args(argv)
    _setup_logging(args.log)
    if args.command == "train":
        return _train(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
