"""`bridge run`, `bridge check-config` and `bridge db upgrade|check`."""

from __future__ import annotations

import argparse
import sys

from bridge.commands import EXIT_FAILURE, EXIT_OK, Context
from bridge.daemon import Daemon
from bridge.store.migrate import check as check_schema
from bridge.store.migrate import upgrade as upgrade_schema


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    run = sub.add_parser("run", parents=[common], help="run the daemon until SIGTERM")
    run.set_defaults(handler=_run)
    check = sub.add_parser(
        "check-config", parents=[common], help="validate the config and test connections"
    )
    check.add_argument(
        "--no-connect", action="store_true", help="validate only; make no network connection"
    )
    check.set_defaults(handler=_check_config)
    db = sub.add_parser("db", parents=[common], help="manage the store schema")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser(
        "upgrade", parents=[common], help="migrate the store to the newest schema"
    ).set_defaults(handler=_db_upgrade)
    db_sub.add_parser(
        "check", parents=[common], help="exit 0 when the store schema is current, 1 otherwise"
    ).set_defaults(handler=_db_check)


async def _run(args: argparse.Namespace, ctx: Context) -> int:
    return await Daemon(ctx.settings, config_path=ctx.config_path, env=ctx.env).run()


async def _db_upgrade(args: argparse.Namespace, ctx: Context) -> int:
    await upgrade_schema(ctx.settings.store.url, password=ctx.store_password)
    return await _db_check(args, ctx, advise=False)


async def _db_check(args: argparse.Namespace, ctx: Context, *, advise: bool = True) -> int:
    status = await check_schema(ctx.settings.store.url, ctx.store_password)
    print(f"store schema: revision {status.current or 'none'} (newest {status.head})")
    for diff in status.differences:
        print(f"  differs from the models: {diff}")
    if not status.ok and advise:
        print("run `bridge db upgrade` to migrate", file=sys.stderr)
    return EXIT_OK if status.ok else EXIT_FAILURE


async def _check_config(args: argparse.Namespace, ctx: Context) -> int:
    source = str(ctx.config_path) if ctx.config_path else "embedded defaults"
    rows: list[tuple[str, bool, str]] = [("config", True, f"{source} is valid")]
    if not args.no_connect:
        try:
            status = await check_schema(ctx.settings.store.url, ctx.store_password)
        except Exception as err:  # any failure to connect is a failed check, reported
            rows.append(("store", False, f"unreachable: {type(err).__name__}"))
        else:
            detail = f"reachable, schema {status.current or 'none'} (newest {status.head})"
            rows.append(("store", status.ok, detail))
    width = max(len(name) for name, _, _ in rows)
    for name, ok, detail in rows:
        print(f"{'PASS' if ok else 'FAIL'}  {name:<{width}}  {detail}")
    return EXIT_OK if all(ok for _, ok, _ in rows) else EXIT_FAILURE
