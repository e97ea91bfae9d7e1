"""Attachment bytes on disk, addressed by their SHA-256.

A blob lives at `blob_dir / sha[:2] / sha[2:4] / sha`. It is written to a
temporary file in the same folder, flushed to disk and renamed into place, so
a reader (or a crash) never sees half a file; the folder is flushed too, so
the rename itself survives power loss. Identical bytes are stored once.

This module does not decide when a blob may be deleted: several attachments
can share one blob, and purging belongs to the daemon's retention job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


def blob_path(blob_dir: Path, sha256: str) -> Path:
    """Where the blob with this (lower-case hex) SHA-256 lives."""
    return blob_dir / sha256[:2] / sha256[2:4] / sha256


async def write_blob(blob_dir: Path, data: bytes) -> str:
    """Store `data` durably; returns its SHA-256 (hex). File work runs in a thread."""
    return await asyncio.to_thread(write_blob_sync, blob_dir, data)


def write_blob_sync(blob_dir: Path, data: bytes) -> str:
    sha256 = hashlib.sha256(data).hexdigest()
    target = blob_path(blob_dir, sha256)
    if target.is_file() and target.stat().st_size == len(data):
        # Touch it: the purge never removes a blob changed within its grace period, so a
        # blob reused just as its last old reference is purged survives until our row
        # commits. If the purge removed it meanwhile, write it again below.
        try:
            os.utime(target)
            return sha256
        except FileNotFoundError:
            pass
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file readable by its owner only: blobs are health records.
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    _fsync_dir(target.parent)
    return sha256


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
