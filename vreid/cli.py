"""What every job shares: ``--config FILE`` plus ``--set dotted.key=value`` overrides."""

from __future__ import annotations

import argparse
import logging
import sys

from vreid.config import ConfigError, RunConfig, load_config


def job_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="YAML run configuration (configs/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set run_dir=/tmp/run (repeatable)")
    return p


def job_config(args: argparse.Namespace) -> RunConfig:
    """Load the config or exit with the validation message (no traceback)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
