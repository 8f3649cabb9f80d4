"""``aharl train``: load the config (failing fast), set up the console, run the loop, end in one line."""

from __future__ import annotations

import argparse
import logging
import sys

from aharl.errors import first_line
from aharl.launch.common import load_run_config


def console_logging(verbose: bool) -> None:
    """The console shows aharl's own warnings; with ``verbose``, every library's too.

    Without ``verbose`` the libraries' loggers get no console handler (the run's
    ``logs/driver.log`` takes them once the run directory exists), so Python's
    last-resort handler must not print them either.
    """
    if verbose:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return
    root = logging.getLogger()
    root.addHandler(logging.NullHandler())
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("warning: %(message)s"))
    logging.getLogger("aharl").addHandler(console)


def run_train(args: argparse.Namespace) -> int:
    from ray.exceptions import RayError

    from aharl.trainer.lifecycle import run_directory
    from aharl.trainer.loop import train

    console_logging(args.verbose)
    config = load_run_config(args.file, args.overrides)  # fails fast, before anything starts
    try:
        result = train(config, library_logs=not args.verbose)
    except RayError as exc:
        # The actor's own traceback is in its log; say which part failed, in one line.
        first = first_line(str(exc)) or type(exc).__name__
        where = "above" if args.verbose else f"in {run_directory(config) / 'logs'}/"
        print(
            f"aharl: error: an actor failed ({type(exc).__name__}: {first[:300]}); its log is {where}", file=sys.stderr
        )
        return 1
    if result.stopped_by:
        return result.exit_code
    print(f"done: metrics in {result.run_dir / 'metrics.jsonl'}")
    return 0
