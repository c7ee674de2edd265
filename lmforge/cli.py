"""The `lmforge` command line: a verb per workflow, each a thin layer over the flows."""

from __future__ import annotations

import argparse
import sys

from lmforge import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Build a language model from raw web archives: filter, dedup, tokenize, "
        "pretrain, evaluate — every run tracked in MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
