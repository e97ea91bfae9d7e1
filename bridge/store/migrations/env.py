"""Alembic environment for the shared store (run through bridge.store.migrate)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context
from sqlmodel import SQLModel

import bridge.store.models  # noqa: F401  (registers the tables on the metadata)

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    connection: sa.Connection | None = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=sa.NullPool)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection: sa.Connection) -> None:
    if connection.dialect.name == "sqlite":
        # WAL is a property of the file: set it here so a portal that opens the file
        # before the daemon ever ran still gets concurrent readers and one writer.
        connection.exec_driver_sql("PRAGMA journal_mode = WAL")
        # The PRAGMA began a transaction; end it, or alembic would treat it as the
        # caller's and never commit its own work.
        connection.commit()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        compare_server_default=False,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
