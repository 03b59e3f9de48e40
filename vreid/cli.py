"""What every job shares: ``--config FILE`` plus ``--set dotted.key=value`` overrides, and bad
input (config, dataset, stores: :class:`vreid.errors.InputError`) printed as one ``error:`` block
with exit status 2 instead of a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from vreid.config import RunConfig, load_config
from vreid.errors import input_error_of

INPUT_ERROR_STATUS = 2  # as argparse exits on a bad command line


def job_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="YAML run configuration (configs/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set run_dir=/tmp/run (repeatable)")
    return p


def job_config(args: argparse.Namespace) -> RunConfig:
    """Load the config (a ``ConfigError`` names the field; :func:`run_job` prints it)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return load_config(args.config, args.overrides)


def run_job(main: Callable[[], object]) -> None:
    """Run a job's ``main``; an ``InputError``, raised here or in a Ray task or actor, ends
    the job with its message as one ``error:`` block (any other error keeps its traceback)."""
    try:
        main()
    except Exception as exc:
        err = input_error_of(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(INPUT_ERROR_STATUS) from None
