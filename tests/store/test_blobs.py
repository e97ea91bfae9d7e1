"""Content-addressed blob files: written once, durable, and fresh when reused."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from bridge.store.blobs import blob_path, write_blob_sync


def test_a_blob_is_stored_under_its_hash_readable_by_the_owner_only(tmp_path: Path) -> None:
    sha = write_blob_sync(tmp_path, b"scan of a referral letter")
    assert sha == hashlib.sha256(b"scan of a referral letter").hexdigest()
    path = blob_path(tmp_path, sha)
    assert path.read_bytes() == b"scan of a referral letter"
    assert path.stat().st_mode & 0o077 == 0


def test_reusing_a_blob_touches_it_so_the_purge_grace_protects_it(tmp_path: Path) -> None:
    sha = write_blob_sync(tmp_path, b"same bytes")
    path = blob_path(tmp_path, sha)
    os.utime(path, (1_000_000_000, 1_000_000_000))  # as if written in 2001
    assert write_blob_sync(tmp_path, b"same bytes") == sha
    assert path.stat().st_mtime > 1_000_000_000 + 3600


def test_a_blob_removed_meanwhile_is_written_again(tmp_path: Path) -> None:
    sha = write_blob_sync(tmp_path, b"bytes")
    blob_path(tmp_path, sha).unlink()
    write_blob_sync(tmp_path, b"bytes")
    assert blob_path(tmp_path, sha).read_bytes() == b"bytes"
