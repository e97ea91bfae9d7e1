"""Migrations build exactly the schema the models declare, and its rules hold in SQL.

The schema is a contract with portals that write plain SQL, so these tests talk
to the database the way a portal would: reflected catalogues, raw INSERTs with
only the required columns, and statements that the constraints must refuse.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlmodel import SQLModel

from bridge.store.engine import Store
from bridge.store.migrate import alembic_config, check, sync_url, upgrade
from bridge.store.models import Mailbox, Message, Organization, Participant, Thread

# --- helpers --------------------------------------------------------------------------


def _downgrade_sync(url: str, revision: str) -> None:
    command.downgrade(alembic_config(sync_url(url)), revision)


async def downgrade(url: str, revision: str) -> None:
    await asyncio.to_thread(_downgrade_sync, url, revision)


def _with_inspector(url: str, fn: Any) -> Any:
    engine = sa.create_engine(sync_url(url), poolclass=sa.NullPool)
    try:
        return fn(sa.inspect(engine))
    finally:
        engine.dispose()


async def inspect(url: str, fn: Any) -> Any:
    """Run `fn(inspector)` against the database, off the event loop."""
    return await asyncio.to_thread(_with_inspector, url, fn)


def model_shape(table: sa.Table) -> dict[str, Any]:
    """What the models say a table looks like, in the terms reflection uses."""
    autoincrement = table.autoincrement_column
    return {
        "columns": {c.name: c.nullable for c in table.columns},
        "server_defaults": sorted(
            c.name for c in table.columns if c.server_default is not None and c is not autoincrement
        ),
        "primary_key": (table.primary_key.name, [c.name for c in table.primary_key.columns]),
        "indexes": {i.name: ([c.name for c in i.columns], i.unique) for i in table.indexes},
        "unique": {
            c.name: sorted(col.name for col in c.columns)
            for c in table.constraints
            if isinstance(c, sa.UniqueConstraint)
        },
        "checks": sorted(
            str(c.name) for c in table.constraints if isinstance(c, sa.CheckConstraint)
        ),
        "foreign_keys": {
            fk.name: (
                [c.name for c in fk.columns],
                fk.referred_table.name,
                [e.column.name for e in fk.elements],
                fk.ondelete,
            )
            for fk in table.foreign_key_constraints
        },
    }


def reflected_shape(insp: sa.Inspector, name: str) -> dict[str, Any]:
    """What the database says the same table looks like."""
    columns = insp.get_columns(name)
    pk = insp.get_pk_constraint(name)
    autoincrement = pk["constrained_columns"] if len(pk["constrained_columns"]) == 1 else []
    return {
        "columns": {c["name"]: c["nullable"] for c in columns},
        "server_defaults": sorted(
            c["name"]
            for c in columns
            if c.get("default") is not None and c["name"] not in autoincrement
        ),
        "primary_key": (pk["name"], pk["constrained_columns"]),
        "indexes": {
            i["name"]: (i["column_names"], bool(i["unique"]))
            for i in insp.get_indexes(name)
            # PostgreSQL lists the index behind a UNIQUE constraint as an index too.
            if not i.get("duplicates_constraint")
        },
        "unique": {u["name"]: sorted(u["column_names"]) for u in insp.get_unique_constraints(name)},
        "checks": sorted(c["name"] for c in insp.get_check_constraints(name)),
        "foreign_keys": {
            fk["name"]: (
                fk["constrained_columns"],
                fk["referred_table"],
                fk["referred_columns"],
                fk["options"].get("ondelete"),
            )
            for fk in insp.get_foreign_keys(name)
        },
    }


# --- upgrade, check, downgrade ----------------------------------------------------------


async def test_upgrade_of_an_empty_database_reaches_head_with_no_differences(
    database_url: str,
) -> None:
    await upgrade(database_url)

    status = await check(database_url)

    assert status.current == status.head
    assert status.differences == ()
    assert status.ok


async def test_check_of_an_empty_database_reports_no_revision_and_not_ok(
    database_url: str,
) -> None:
    status = await check(database_url)

    assert status.current is None
    assert status.head
    assert not status.ok


async def test_check_reports_a_database_that_drifted_from_the_models(database_url: str) -> None:
    await upgrade(database_url)
    engine = sa.create_engine(sync_url(database_url), poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_messages_thread_id"))
    engine.dispose()

    status = await check(database_url)

    assert status.current == status.head
    assert not status.ok
    assert any("ix_messages_thread_id" in d for d in status.differences), status.differences


async def test_downgrade_to_base_drops_every_table_and_upgrade_rebuilds_them(
    database_url: str,
) -> None:
    await upgrade(database_url)

    await downgrade(database_url, "base")

    left = await inspect(database_url, lambda insp: set(insp.get_table_names()))
    assert left <= {"alembic_version"}
    assert (await check(database_url)).current is None

    await upgrade(database_url)

    assert (await check(database_url)).ok
    tables = await inspect(database_url, lambda insp: set(insp.get_table_names()))
    assert tables == set(SQLModel.metadata.tables) | {"alembic_version"}


# --- the migrated schema is the models --------------------------------------------------


async def test_migrated_schema_matches_the_models_table_by_table(database_url: str) -> None:
    await upgrade(database_url)
    tables = sorted(SQLModel.metadata.tables)

    reflected = await inspect(
        database_url, lambda insp: {name: reflected_shape(insp, name) for name in tables}
    )

    for name in tables:
        expected = model_shape(SQLModel.metadata.tables[name])
        table = SQLModel.metadata.tables[name]
        if database_url.startswith("sqlite") and table.kwargs.get("sqlite_autoincrement"):
            # SQLite declares an AUTOINCREMENT key inline, where a constraint has no name.
            expected["primary_key"] = (None, expected["primary_key"][1])
        assert reflected[name] == expected, name


async def test_undispatched_index_covers_only_messages_without_dispatched_at(
    database_url: str,
) -> None:
    await upgrade(database_url)
    backend = sa.make_url(database_url).get_backend_name()

    indexes = await inspect(database_url, lambda insp: insp.get_indexes("messages"))

    (undispatched,) = [i for i in indexes if i["name"] == "ix_messages_undispatched"]
    where = undispatched["dialect_options"][f"{backend}_where"]
    assert "dispatched_at IS NULL" in str(where)


async def test_minimal_raw_inserts_work_and_fill_the_documented_defaults(store: Store) -> None:
    async with store.transaction() as session:
        org = (
            await session.execute(
                sa.text(
                    "INSERT INTO organizations (display_name, portal_base_url, reply_domain)"
                    " VALUES ('Practice', 'https://portal.example', 'reply.example')"
                    " RETURNING id"
                )
            )
        ).scalar_one()
        client = (
            await session.execute(
                sa.text(
                    "INSERT INTO participants (organization_id, kind, display_name)"
                    " VALUES (:org, 'client', 'A client') RETURNING id"
                ),
                {"org": org},
            )
        ).scalar_one()
        thread = (
            await session.execute(
                sa.text(
                    "INSERT INTO threads (organization_id, client_id, subject)"
                    " VALUES (:org, :client, 'Hello') RETURNING id"
                ),
                {"org": org, "client": client},
            )
        ).scalar_one()
        await session.execute(
            sa.text("INSERT INTO mailboxes (thread_id, participant_id) VALUES (:t, :p)"),
            {"t": thread, "p": client},
        )
        message = (
            await session.execute(
                sa.text(
                    "INSERT INTO messages (thread_id, author_id, body_text)"
                    " VALUES (:t, :p, 'Hi') RETURNING id"
                ),
                {"t": thread, "p": client},
            )
        ).scalar_one()

    async with store.read() as session:
        o = await session.get(Organization, org)
        p = await session.get(Participant, client)
        t = await session.get(Thread, thread)
        mb = await session.get(Mailbox, (thread, client))
        m = await session.get(Message, message)

    assert o is not None and p is not None and t is not None and mb is not None and m is not None
    assert o.notification_mode == "secure"
    assert o.trash_retention_days == 15
    assert o.convenience_acknowledged_at is None
    assert p.active is True
    assert p.has_portal_account is False
    assert p.email_content_consent is False
    assert t.audience == "clinical"
    assert mb.trashed_at is None and mb.archived_at is None and mb.last_read_message_id is None
    assert m.source == "portal"
    assert m.dispatched_at is None
    now = datetime.now(UTC)
    for stamp in (o.created_at, p.created_at, t.created_at, mb.joined_at, m.created_at):
        assert stamp.utcoffset() == timedelta(0)
        assert abs(now - stamp) < timedelta(minutes=1), stamp


# --- the constraints bite ----------------------------------------------------------------


@pytest.fixture
async def seeded(store: Store) -> dict[str, int]:
    """One organization with a client, a contact of that client, and a thread."""
    ids: dict[str, int] = {}
    async with store.transaction() as session:

        async def insert(sql: str, **params: int) -> int:
            return int((await session.execute(sa.text(sql + " RETURNING id"), params)).scalar_one())

        ids["org"] = await insert(
            "INSERT INTO organizations (display_name, portal_base_url, reply_domain)"
            " VALUES ('Practice', 'https://portal.example', 'reply.example')"
        )
        ids["client"] = await insert(
            "INSERT INTO participants (organization_id, kind, display_name)"
            " VALUES (:org, 'client', 'A client')",
            org=ids["org"],
        )
        ids["contact"] = await insert(
            "INSERT INTO participants (organization_id, kind, display_name, contact_of_id)"
            " VALUES (:org, 'contact', 'A parent', :client)",
            org=ids["org"],
            client=ids["client"],
        )
        ids["thread"] = await insert(
            "INSERT INTO threads (organization_id, client_id, subject)"
            " VALUES (:org, :client, 'Hello')",
            org=ids["org"],
            client=ids["client"],
        )
    return ids


REFUSED = [
    pytest.param(
        "UPDATE organizations SET notification_mode = 'convenience' WHERE id = :org",
        id="convenience-mode-without-acknowledgement",
    ),
    pytest.param(
        "UPDATE organizations SET notification_mode = 'loud' WHERE id = :org",
        id="unknown-notification-mode",
    ),
    pytest.param(
        "UPDATE organizations SET trash_retention_days = 0 WHERE id = :org",
        id="trash-retention-below-one-day",
    ),
    pytest.param(
        "INSERT INTO threads (organization_id, client_id, subject, audience)"
        " VALUES (:org, :client, 'x', 'everyone')",
        id="unknown-audience",
    ),
    pytest.param(
        "INSERT INTO participants (organization_id, kind, display_name, contact_of_id)"
        " VALUES (:org, 'client', 'x', :client)",
        id="contact-of-on-a-non-contact",
    ),
    pytest.param(
        "INSERT INTO participants (organization_id, kind, display_name)"
        " VALUES (:org, 'robot', 'x')",
        id="unknown-participant-kind",
    ),
    pytest.param(
        "INSERT INTO messages (thread_id, author_id, body_text) VALUES (:missing, :client, 'x')",
        id="message-for-a-missing-thread",
    ),
    pytest.param(
        "INSERT INTO mailboxes (thread_id, participant_id) VALUES (:thread, :missing)",
        id="mailbox-for-a-missing-participant",
    ),
    pytest.param(
        "INSERT INTO messages (thread_id, author_id, body_text, source)"
        " VALUES (:thread, :client, 'x', 'fax')",
        id="unknown-message-source",
    ),
]


@pytest.mark.parametrize("statement", REFUSED)
async def test_schema_refuses_a_row_that_breaks_its_rules(
    store: Store, seeded: dict[str, int], statement: str
) -> None:
    params = {**seeded, "missing": 999_999}
    bound = {k: v for k, v in params.items() if f":{k}" in statement}

    with pytest.raises(sa.exc.IntegrityError):
        async with store.transaction() as session:
            await session.execute(sa.text(statement), bound)


ACCEPTED = [
    pytest.param(
        "UPDATE organizations SET notification_mode = 'convenience',"
        " convenience_acknowledged_at = CURRENT_TIMESTAMP WHERE id = :org",
        id="convenience-mode-with-acknowledgement",
    ),
    pytest.param(
        "INSERT INTO threads (organization_id, client_id, subject, audience)"
        " VALUES (:org, :client, 'x', 'billing')",
        id="known-audience",
    ),
    pytest.param(
        "INSERT INTO participants (organization_id, kind, display_name, contact_of_id)"
        " VALUES (:org, 'contact', 'x', :client)",
        id="contact-of-on-a-contact",
    ),
    pytest.param(
        "INSERT INTO messages (thread_id, author_id, body_text, source)"
        " VALUES (:thread, :client, 'x', 'email')",
        id="message-for-an-existing-thread",
    ),
]


@pytest.mark.parametrize("statement", ACCEPTED)
async def test_schema_accepts_the_valid_counterpart_of_each_refused_row(
    store: Store, seeded: dict[str, int], statement: str
) -> None:
    bound = {k: v for k, v in seeded.items() if f":{k}" in statement}

    async with store.transaction() as session:
        result = await session.execute(sa.text(statement), bound)

    assert result.rowcount == 1


async def test_deleting_a_thread_removes_its_mailboxes_messages_and_attachments(
    store: Store, seeded: dict[str, int]
) -> None:
    thread, client = seeded["thread"], seeded["client"]
    async with store.transaction() as session:
        await session.execute(
            sa.text("INSERT INTO mailboxes (thread_id, participant_id) VALUES (:t, :p)"),
            {"t": thread, "p": client},
        )
        message = (
            await session.execute(
                sa.text(
                    "INSERT INTO messages (thread_id, author_id, body_text)"
                    " VALUES (:t, :p, 'x') RETURNING id"
                ),
                {"t": thread, "p": client},
            )
        ).scalar_one()
        await session.execute(
            sa.text(
                "INSERT INTO attachments (message_id, filename, content_type, size, sha256)"
                " VALUES (:m, 'a.pdf', 'application/pdf', 3, :sha)"
            ),
            {"m": message, "sha": "0" * 64},
        )

    async with store.transaction() as session:
        await session.execute(sa.text("DELETE FROM threads WHERE id = :t"), {"t": thread})

    async with store.read() as session:
        left = {
            table: (await session.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one()
            for table in ("mailboxes", "messages", "attachments")
        }
        participants = (
            await session.execute(sa.text("SELECT count(*) FROM participants"))
        ).scalar_one()
    assert left == {"mailboxes": 0, "messages": 0, "attachments": 0}
    assert participants == 2


# --- docs/store.md describes this schema ------------------------------------------------

STORE_DOC = Path(__file__).resolve().parents[2] / "docs" / "store.md"


def doc_sections() -> dict[str, str]:
    """The text under each `### \\`table\\`` heading of docs/store.md."""
    text = STORE_DOC.read_text(encoding="utf-8")
    sections = {}
    for chunk in text.split("\n### `")[1:]:
        name, _, body = chunk.partition("`")
        sections[name] = body.split("\n## ")[0]
    return sections


def test_store_doc_has_a_section_naming_every_column_of_every_table() -> None:
    sections = doc_sections()

    for table in SQLModel.metadata.sorted_tables:
        assert table.name in sections, f"docs/store.md has no section for {table.name}"
        missing = [c.name for c in table.columns if f"`{c.name}`" not in sections[table.name]]
        assert not missing, f"docs/store.md, {table.name}: columns not described: {missing}"


def test_store_doc_lists_exactly_the_allowed_values_of_every_enumeration() -> None:
    text = STORE_DOC.read_text(encoding="utf-8")
    rows = {
        cells[1].strip(" `"): set(re.findall(r"`([a-z_]+)`", cells[2]))
        for line in text.splitlines()
        if line.startswith("| `") and len(cells := line.split("|")) > 3
    }

    for table in SQLModel.metadata.sorted_tables:
        for ck in table.constraints:
            if not isinstance(ck, sa.CheckConstraint):
                continue
            assert str(ck.name) in text, f"docs/store.md does not name {ck.name}"
            enum = re.fullmatch(r"(\w+) IN \((.*)\)", str(ck.sqltext))
            if enum is not None:
                column, values = enum.groups()
                assert rows.get(f"{table.name}.{column}") == set(re.findall(r"'(\w+)'", values))
