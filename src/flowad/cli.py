"""Command-line interface: ``flowad <command> ...``.

Each subcommand has an ``_add_<name>_parser`` function that declares its
options and a ``_cmd_<name>(args) -> int`` handler that calls the library.
Heavy imports (torch, transformers, plotting) happen inside the handlers so
that ``flowad --help`` stays fast. Only this module writes to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from flowad import __version__
from flowad.exceptions import FlowadError

logger = logging.getLogger("flowad")


def _add_data_arguments(parser: argparse.ArgumentParser, *, split: bool = True) -> None:
    """Add --data, --skip-bad-runs and, optionally, the split options."""
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="Flow-Bench runs: zip archives, folders or run CSV files.",
    )
    parser.add_argument(
        "--skip-bad-runs",
        action="store_true",
        help="Skip invalid run files with a warning instead of stopping.",
    )
    if split:
        parser.add_argument(
            "--split",
            choices=("runs", "rows", "paper"),
            default="runs",
            help="How to split jobs into train/validation/test (default: runs).",
        )
        parser.add_argument(
            "--paper-splits",
            help="Folder with the published validation.csv and test.csv "
            "(needed for --split paper).",
        )
        parser.add_argument(
            "--seed", type=int, default=0, help="Seed of the split (default: 0)."
        )


def _load(args: argparse.Namespace):
    """Read the jobs named by --data."""
    from flowad.data import load_jobs

    return load_jobs(args.data, skip_bad_runs=args.skip_bad_runs)


def _load_split(args: argparse.Namespace):
    """Read the jobs and build the split named by the arguments."""
    from flowad.splits import make_split

    jobs = _load(args)
    split = make_split(jobs, args.split, seed=args.seed, paper_dir=args.paper_splits)
    return jobs, split


# ---------------------------------------------------------------- data


def _add_data_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="Inspect and split job records.")
    data_commands = parser.add_subparsers(dest="data_command", required=True)
    describe = data_commands.add_parser(
        "describe", help="Print runs and jobs per label and per job type."
    )
    _add_data_arguments(describe, split=False)
    describe.set_defaults(handler=_cmd_data_describe)
    split = data_commands.add_parser(
        "split", help="Write train/validation/test in the published text,label form."
    )
    _add_data_arguments(split)
    split.add_argument("--out", required=True, help="Output folder.")
    split.set_defaults(handler=_cmd_data_split)


def _cmd_data_describe(args: argparse.Namespace) -> int:
    from flowad.data import describe_jobs

    jobs = _load(args)
    tables = describe_jobs(jobs)
    print(f"{len(jobs)} jobs in {jobs['run'].nunique()} runs")
    for name, table in tables.items():
        print()
        print(table.to_string())
    return 0


def _cmd_data_split(args: argparse.Namespace) -> int:
    from flowad.splits import write_text_split

    jobs, split = _load_split(args)
    written = write_text_split(jobs, split, args.out)
    for part, path in written.items():
        print(f"{part:<11}{split.sizes()[part]:>8} jobs  {path}")
    return 0


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="flowad",
        description="Find anomalous jobs in workflow executions with language models.",
    )
    parser.add_argument("--version", action="version", version=f"flowad {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="More log output (-vv: debug)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add_parser in _PARSERS:
        add_parser(subparsers)
    return parser


_PARSERS = [_add_data_parser]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except FlowadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
