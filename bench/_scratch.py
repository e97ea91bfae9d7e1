"""A throwaway PostgreSQL database for one benchmark run, created beside the one named."""

from __future__ import annotations

import os

import psycopg
import sqlalchemy as sa


def scratch_postgres(base: str, prefix: str = "bridge_bench") -> tuple[str, str]:
    """A fresh database next to `base`: (its URL, the admin URL to drop it with)."""
    admin = sa.make_url(base).set(drivername="postgresql")
    name = f"{prefix}_{os.getpid()}"
    plain = admin.render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"'.encode())
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return admin.set(database=name).render_as_string(hide_password=False), plain


def drop_postgres(url: str, admin: str) -> None:
    name = sa.make_url(url).database
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
