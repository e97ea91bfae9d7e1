"""The `bridge` command: parse arguments, load the config, call one function.

Exit status: 0 success, 1 a runtime failure (store unreachable, schema
behind, check failed), 2 a usage or configuration error. Every failure is
one line on stderr that names what to fix.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bridge import config, logs
from bridge.daemon import Daemon, StartupError
from bridge.store.migrate import check as check_schema
from bridge.store.migrate import upgrade as upgrade_schema

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


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
    sub.add_parser("run", parents=[common], help="run the daemon until SIGTERM")
    check = sub.add_parser(
        "check-config", parents=[common], help="validate the config and test connections"
    )
    check.add_argument(
        "--no-connect", action="store_true", help="validate only; make no network connection"
    )
    db = sub.add_parser("db", parents=[common], help="manage the store schema")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("upgrade", parents=[common], help="migrate the store to the newest schema")
    db_sub.add_parser(
        "check", parents=[common], help="exit 0 when the store schema is current, 1 otherwise"
    )
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
    try:
        return asyncio.run(_dispatch(args, settings, path, env))
    except StartupError as err:
        print(f"bridge: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


async def _dispatch(
    args: argparse.Namespace, settings: config.Settings, path: Path | None, env: dict[str, str]
) -> int:
    if args.command == "run":
        return await Daemon(settings, config_path=path, env=env).run()
    if args.command == "check-config":
        return await _check_config(settings, path, connect=not args.no_connect)
    if args.command == "db":
        return await _db(args.db_command, settings)
    raise AssertionError(args.command)  # argparse only lets known commands through


def _store_password(settings: config.Settings) -> str | None:
    secret = settings.store.password
    return secret.get_secret_value() if secret else None


async def _db(action: str, settings: config.Settings) -> int:
    password = _store_password(settings)
    if action == "upgrade":
        await upgrade_schema(settings.store.url, password=password)
    status = await check_schema(settings.store.url, password)
    print(f"store schema: revision {status.current or 'none'} (newest {status.head})")
    for diff in status.differences:
        print(f"  differs from the models: {diff}")
    if not status.ok and action == "check":
        print("run `bridge db upgrade` to migrate", file=sys.stderr)
    return EXIT_OK if status.ok else EXIT_FAILURE


async def _check_config(settings: config.Settings, path: Path | None, *, connect: bool) -> int:
    source = str(path) if path else "embedded defaults"
    rows: list[tuple[str, bool, str]] = [("config", True, f"{source} is valid")]
    if connect:
        try:
            status = await check_schema(settings.store.url, _store_password(settings))
        except Exception as err:  # any failure to connect is a failed check, reported
            rows.append(("store", False, f"unreachable: {type(err).__name__}"))
        else:
            detail = f"reachable, schema {status.current or 'none'} (newest {status.head})"
            rows.append(("store", status.ok, detail))
    width = max(len(name) for name, _, _ in rows)
    for name, ok, detail in rows:
        print(f"{'PASS' if ok else 'FAIL'}  {name:<{width}}  {detail}")
    return EXIT_OK if all(ok for _, ok, _ in rows) else EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
