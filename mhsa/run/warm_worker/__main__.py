"""python -m mhsa.run.warm_worker --results DIR [--owner PID] [--idle S]: serve the training jobs of DIR."""

from __future__ import annotations

import argparse
import os

from mhsa.run.warm_worker.channel import WorkerUnavailable
from mhsa.run.warm_worker.server import Server


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mhsa.run.warm_worker", description=__doc__.split(":")[1].strip())
    parser.add_argument("--results", required=True, help="the results directory whose jobs it runs")
    parser.add_argument("--owner", type=int, help="stop once this PID (Snakemake) is gone")
    parser.add_argument("--idle", type=float, default=None, help="stop after this many idle seconds")
    args = parser.parse_args(argv)
    try:
        server = Server(args.results, owner_pid=args.owner, idle_timeout=args.idle)
        server.serve(os.environ.get("MLFLOW_TRACKING_URI"))
    except (WorkerUnavailable, OSError) as err:
        raise SystemExit(f"warm worker for {args.results}: not started: {err}") from None


if __name__ == "__main__":
    main()
