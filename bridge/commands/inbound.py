"""`bridge parse FILE.eml` and `bridge inbound list|show|retry`.

`parse` runs the pure half of the inbound pipeline on a file, with no store:
by default it prints what the pipeline would see (classification, the reply
token's hash prefix, defects, how the reply text was found, attachment types
and sizes) and no content; `--reply-only` prints exactly the text that would
be filed and nothing else. `inbound` shows and retries `inbound_emails` rows
by id, status and reason code; content only with `--show-content`.

This module only wires and formats; the work is in `bridge.inbound.pipeline`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from bridge.commands import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Context
from bridge.daemon import GENERATED_SECRET_NAME, open_store
from bridge.inbound.pipeline import Analysis, InboundRow, analyse, list_rows, retry, show_row
from bridge.mail.attachments import AttachmentLimits
from bridge.mail.parse import ParsedMail
from bridge.policy.tokens import hash_token, token_from_address
from bridge.store.engine import async_url, sqlite_path

# How much of a token's keyed hash `parse` shows: enough to find the reply_tokens row.
HASH_PREFIX = 12


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    parse = sub.add_parser(
        "parse", parents=[common], help="show how the inbound pipeline reads an .eml file"
    )
    parse.add_argument("file", type=Path, metavar="FILE.eml")
    parse.add_argument(
        "--reply-only", action="store_true", help="print only the text that would be filed"
    )
    parse.set_defaults(handler=_parse)
    inbound = sub.add_parser("inbound", parents=[common], help="inspect and retry inbound emails")
    actions = inbound.add_subparsers(dest="inbound_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="list inbound emails, newest first")
    listing.add_argument("--status", help="only rows in this status (received, filed, ...)")
    listing.add_argument("--limit", type=int, default=50, help="at most this many rows")
    listing.set_defaults(handler=_list)
    show = actions.add_parser("show", parents=[common], help="one inbound email by id")
    show.add_argument("id", type=int)
    show.add_argument(
        "--show-content", action="store_true", help="also print the envelope and the raw email"
    )
    show.set_defaults(handler=_show)
    again = actions.add_parser(
        "retry", parents=[common], help="send a parked, held or dropped email through again"
    )
    again.add_argument("id", type=int)
    again.set_defaults(handler=_retry)


async def _parse(args: argparse.Namespace, ctx: Context) -> int:
    try:
        raw = await asyncio.to_thread(Path(args.file).read_bytes)
    except OSError as err:
        print(f"bridge: cannot read {args.file}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    pipeline = ctx.settings.inbound.pipeline
    limits = AttachmentLimits(
        pipeline.max_attachments,
        pipeline.max_attachment_bytes,
        pipeline.max_total_attachment_bytes,
    )
    # A file has no envelope: the classifier then reads Return-Path, as for IMAP.
    analysis = await asyncio.to_thread(analyse, raw, None, limits)
    if analysis.malformed is not None:
        print(f"malformed: {analysis.malformed}", file=sys.stderr)
        return EXIT_FAILURE
    assert analysis.content is not None
    if args.reply_only:
        if analysis.content.text:
            sys.stdout.write(analysis.content.text + "\n")
        return EXIT_OK
    for line in _summary(analysis, _token_line(analysis.parsed, ctx)):
        print(line)
    return EXIT_OK


def _summary(analysis: Analysis, token: str) -> list[str]:
    parsed, kind, content = analysis.parsed, analysis.classification, analysis.content
    assert parsed is not None and kind is not None and content is not None
    text = content.text
    flags = [
        name for name, on in (("trimmed", content.trimmed), ("fallback", content.fallback)) if on
    ]
    files = "; ".join(f"{item.content_type} {item.size} bytes" for item in content.attachments)
    return [
        f"classification: {kind.kind.value} ({kind.reason})",
        f"from: {len(parsed.from_addresses)} address(es) in {parsed.from_fields} field(s)",
        f"token: {token}",
        f"defects: {parsed.defects}",
        f"reply: from {content.source} part, {len(text)} characters, "
        f"{len(text.splitlines())} lines{', ' + ', '.join(flags) if flags else ''}",
        f"empty: {'yes' if content.empty else 'no'}",
        f"html: {'sanitised html kept' if content.html is not None else 'none kept'}",
        f"attachments: {len(content.attachments)}{' (' + files + ')' if files else ''}",
        f"attachment limits: {content.over_limit.value if content.over_limit else 'ok'}",
        f"in-reply-to/references ids: {len(parsed.reply_ids)}",
    ]


def _token_line(parsed: ParsedMail | None, ctx: Context) -> str:
    """The first reply token among the recipients, as the prefix of its stored hash."""
    if parsed is None:
        return "none"
    address_format = ctx.settings.tokens.address_format
    token = next(
        (t for t in (token_from_address(address_format, a) for a in parsed.recipients) if t), None
    )
    if token is None:
        return "none"
    secret = _token_secret(ctx)
    if secret is None:
        return "present (no token key configured to hash it with)"
    return f"{hash_token(secret, token)[:HASH_PREFIX]} (reply_tokens.token_hash prefix)"


def _token_secret(ctx: Context) -> bytes | None:
    """tokens.secret, else the key a single SQLite instance generated; never created here."""
    if ctx.settings.tokens.secret is not None:
        return ctx.settings.tokens.secret.get_secret_value().encode()
    database = sqlite_path(async_url(ctx.settings.store.url))
    generated = None if database is None else database.parent / GENERATED_SECRET_NAME
    if generated is None or not generated.is_file():
        return None
    return generated.read_text().strip().encode()


async def _list(args: argparse.Namespace, ctx: Context) -> int:
    async with open_store(ctx.settings.store) as store:
        rows = await list_rows(store, args.status, args.limit)
    print(f"{'id':>8}  {'status':<9} {'reason':<18} {'via':<5} {'tries':>5}  received")
    for row in rows:
        print(
            f"{row.id:>8}  {row.status:<9} {row.reason or '-':<18} {row.received_via:<5}"
            f" {row.attempts:>5}  {_time(row.received_at)}"
        )
    return EXIT_OK


async def _show(args: argparse.Namespace, ctx: Context) -> int:
    async with open_store(ctx.settings.store) as store:
        row = await show_row(store, args.id, content=args.show_content)
    if row is None:
        print(f"bridge: no inbound email {args.id}", file=sys.stderr)
        return EXIT_FAILURE
    for line in _details(row):
        print(line)
    if args.show_content:
        print(f"envelope sender: {row.envelope_sender or '<>'}")
        print(f"envelope recipient: {row.envelope_recipient}")
        print()
        sys.stdout.write((row.raw or b"").decode("utf-8", "replace"))
    return EXIT_OK


def _details(row: InboundRow) -> list[str]:
    def shown(value: object) -> str:
        return "-" if value is None else str(value)

    return [
        f"id: {row.id}",
        f"status: {row.status}{f' ({row.reason})' if row.reason else ''}",
        f"via: {row.received_via}",
        f"attempts: {row.attempts}",
        f"defects: {row.defects}",
        f"size: {row.size} bytes",
        f"sha256: {row.sha256}",
        f"participant: {shown(row.participant_id)}",
        f"thread: {shown(row.thread_id)}",
        f"message: {shown(row.message_id)}",
        f"received: {_time(row.received_at)}",
        f"processed: {_time(row.processed_at)}",
        f"next attempt: {_time(row.next_attempt_at)}",
        f"lease: {shown(row.lease_owner)}",
    ]


async def _retry(args: argparse.Namespace, ctx: Context) -> int:
    async with open_store(ctx.settings.store) as store:
        done = await retry(store, args.id, datetime.now(UTC))
    if not done:
        print(f"bridge: no parked, held or dropped inbound email {args.id}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"inbound email {args.id} is back in line")
    return EXIT_OK


def _time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
