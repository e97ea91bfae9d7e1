"""`bridge demo --dir DIR`: run the whole loop once, on the embedded default, inside DIR."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bridge import logs
from bridge.commands import EXIT_FAILURE, Context
from bridge.demo import DemoError, run_demo


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="run the whole loop once in a folder (secure, convenience, reply by email)",
    )
    demo.add_argument(
        "--dir", type=Path, default=Path("var/demo"), help="folder to run in (default: var/demo)"
    )
    demo.set_defaults(handler=_demo)


async def _demo(args: argparse.Namespace, ctx: Context) -> int:
    # The demo prints its own steps; the daemon's INFO lines would bury them.
    logs.set_level("WARNING")
    try:
        return await run_demo(args.dir)
    except DemoError as err:
        print(f"bridge demo: {err}", file=sys.stderr)
        return EXIT_FAILURE
