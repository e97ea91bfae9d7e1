"""`bridge outbox [--status S]`, `bridge outbox retry ID`, `bridge send-test --to ADDRESS`.

What an operator sees of the queue: ids, states, attempts, times and SMTP codes;
never an address, subject or body.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from bridge.commands import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Context
from bridge.outbound.queue import UnknownStatusError, list_rows, retry, send_test
from bridge.outbound.transport import (
    PermanentSendError,
    TransientSendError,
    transport_from_settings,
)
from bridge.store.engine import Store


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    outbox = sub.add_parser("outbox", parents=[common], help="list or retry outbound emails")
    outbox.add_argument("--status", help="only rows in this state (pending, sent, failed, ...)")
    outbox.add_argument("--limit", type=int, default=50, help="newest rows to show (default 50)")
    outbox.set_defaults(handler=_list)
    actions = outbox.add_subparsers(dest="outbox_command", metavar="ACTION")
    again = actions.add_parser("retry", parents=[common], help="send a failed row again, now")
    again.add_argument("id", type=int, help="outbox row id")
    again.set_defaults(handler=_retry)
    test = sub.add_parser(
        "send-test", parents=[common], help="send a fixed test email through the transport"
    )
    test.add_argument("--to", required=True, help="recipient address")
    test.set_defaults(handler=_send_test)


def _store(ctx: Context) -> Store:
    return Store(ctx.settings.store.url, password=ctx.store_password)


async def _list(args: argparse.Namespace, ctx: Context) -> int:
    async with _store(ctx) as store:
        try:
            rows = await list_rows(store, args.status, args.limit)
        except UnknownStatusError as err:
            print(f"bridge: {err}", file=sys.stderr)
            return EXIT_USAGE
    print(
        f"{'id':>8}  {'kind':<12} {'mode':<11} {'status':<9} {'tries':>5}  next attempt (UTC)  code"
    )
    for row in rows:
        due = row.next_attempt_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        code = "" if row.smtp_code is None else str(row.smtp_code)
        print(
            f"{row.id:>8}  {row.kind:<12} {row.mode:<11} {row.status:<9} {row.attempts:>5}"
            f"  {due}  {code}"
        )
    return EXIT_OK


async def _retry(args: argparse.Namespace, ctx: Context) -> int:
    async with _store(ctx) as store:
        done = await retry(store, args.id, datetime.now(UTC))
    if not done:
        print(f"bridge: outbox row {args.id} is not failed or pending", file=sys.stderr)
        return EXIT_FAILURE
    print(f"outbox row {args.id} is due now")
    return EXIT_OK


async def _send_test(args: argparse.Namespace, ctx: Context) -> int:
    outbound = ctx.settings.outbound
    transport = transport_from_settings(outbound)
    try:
        result = await send_test(transport, outbound.from_address, args.to, datetime.now(UTC))
    except (TransientSendError, PermanentSendError) as err:
        kind = "temporary" if isinstance(err, TransientSendError) else "permanent"
        print(f"FAIL  {kind} failure, code {err.code}: {err.answer}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await transport.aclose()
    print(f"PASS  {outbound.transport} transport answered {result.code}")
    return EXIT_OK
