"""The `bridge` command: parse arguments, load the config, call one handler.

Sub-commands live in `bridge.commands`, one module per domain; this module
only wires them. Exit status: 0 success, 1 a runtime failure (store
unreachable, schema behind, check failed), 2 a usage or configuration error.
Every failure is one line on stderr that names what to fix.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bridge import config, logs
from bridge.commands import (
    EXIT_FAILURE,
    EXIT_USAGE,
    Context,
    Handler,
    core,
    demo,
    inbound,
    ops,
    outbox,
    retention,
)
from bridge.daemon import StartupError

# Each module adds its sub-commands; the order is the order `bridge --help` lists them.
COMMAND_MODULES = (core, ops, outbox, inbound, retention, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridge",
        description="Email bridge for secure client-portal messaging.",
    )
    config_help = "TOML config file (default: $BRIDGE_CONFIG, else the embedded defaults)"
    parser.add_argument("-c", "--config", type=Path, default=None, help=config_help)
    # `-c` is accepted after the command too (`bridge check-config -c FILE`); SUPPRESS keeps
    # a sub-command's absent option from overwriting one given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS, help=config_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub, common)
    return parser


def config_path(args: argparse.Namespace, env: dict[str, str]) -> Path | None:
    if args.config is not None:
        return Path(args.config)
    named = env.get("BRIDGE_CONFIG")
    return Path(named) if named else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = dict(os.environ)
    path = config_path(args, env)
    try:
        settings = config.load(path, env)
    except config.ConfigError as err:
        print(f"bridge: {err}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(settings.log.level, settings.log.format)
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args, Context(settings, path, env)))
    except StartupError as err:
        print(f"bridge: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
