"""The ``pathsentry`` command line. Subcommands import their heavy dependencies
lazily so ``pathsentry schema`` or ``replay`` never load Faust."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: Modules that add subcommands: each has ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "pathsentry.commands.core",
    "pathsentry.commands.settings",
    "pathsentry.streams.commands",
    "pathsentry.sim.commands",
    "pathsentry.sensor.commands",
    "pathsentry.traceroutes.commands",
    "pathsentry.bench.commands",
    "pathsentry.report.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pathsentry",
        description="Streaming detection of relays, farm groups and on-path injection.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is None or not mod.startswith(e.name):
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pathsentry.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except ConfigError as e:  # the key and why, no traceback (and never the value)
        print(f"pathsentry {args.command}: configuration refused: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
