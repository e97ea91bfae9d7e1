"""The blob sweep: delete blob files that no `attachments` row references.

Blobs are content-addressed and shared, so a file may go only when no
attachment references its SHA-256 any more, and only after the transaction
that deleted the last reference has committed. Rather than remembering which
files a purge batch orphaned (a journal that a crash between commit and unlink
would also have to survive), every purge run walks the blob folder and compares
it with `attachments.sha256`. That costs one directory walk and one indexed
look-up per file, and it completes whatever an interrupted run left behind; it
also collects blobs of portal transactions that rolled back after writing
their file, and abandoned `.incoming-*` temporary files.

A writer stores the file *before* it commits the row that references it. So a
file changed (written, or touched when identical bytes were already there)
less than `grace` ago is left alone; and a file is first renamed aside
(`.purging-<sha>`), the database asked again, and the file restored if a
reference or a fresh touch appeared meanwhile. Leftovers of a sweep that died
between rename and unlink are finished by the next sweep.

Not here: deciding what to purge in the database (`_purge_rows`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import col, select

from bridge._purge_rows import chunks
from bridge.store.engine import Store
from bridge.store.models import Attachment

_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEX2 = re.compile(r"[0-9a-f]{2}")
ASIDE_PREFIX = ".purging-"
INCOMING_PREFIX = ".incoming-"
# Files looked up in the database per query.
CHUNK = 500


@dataclass(frozen=True)
class SweepResult:
    """Blob files removed (and their bytes), and abandoned temporary files removed."""

    blobs: int = 0
    bytes: int = 0
    temporary: int = 0


@dataclass(frozen=True)
class _Found:
    """One sub-folder's candidates: blobs old enough, set-aside leftovers, stale temp files."""

    blobs: list[str]
    aside: list[str]
    temporary: list[Path]


async def sweep(store: Store, blob_dir: Path, older_than: float) -> SweepResult:
    """Remove unreferenced blobs whose files last changed before `older_than` (epoch s)."""
    removed = SweepResult()
    for top in await asyncio.to_thread(_subfolders, blob_dir):
        for folder in await asyncio.to_thread(_subfolders, top):
            found = await asyncio.to_thread(_scan, folder, older_than)
            temporary = await asyncio.to_thread(_unlink_all, found.temporary)
            removed = _add(removed, SweepResult(temporary=temporary))
            for chunk in chunks(found.aside, CHUNK):
                removed = _add(removed, await _settle(store, folder, chunk, older_than))
            for chunk in chunks(found.blobs, CHUNK):
                unused = set(chunk) - await _referenced(store, chunk)
                moved = await asyncio.to_thread(_set_aside, folder, sorted(unused))
                removed = _add(removed, await _settle(store, folder, moved, older_than))
    return removed


def _add(a: SweepResult, b: SweepResult) -> SweepResult:
    return SweepResult(a.blobs + b.blobs, a.bytes + b.bytes, a.temporary + b.temporary)


async def _referenced(store: Store, shas: Collection[str]) -> set[str]:
    if not shas:
        return set()
    async with store.read() as session:
        query = select(Attachment.sha256).where(col(Attachment.sha256).in_(list(shas))).distinct()
        return set(await session.exec(query))


async def _settle(
    store: Store, folder: Path, aside: Sequence[str], older_than: float
) -> SweepResult:
    """Files set aside: asked about once more, then restored or removed."""
    if not aside:
        return SweepResult()
    wanted = await _referenced(store, aside)
    return await asyncio.to_thread(_finish, folder, aside, wanted, older_than)


def _subfolders(folder: Path) -> list[Path]:
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    return sorted(
        Path(e.path) for e in entries if _HEX2.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
    )


def _scan(folder: Path, older_than: float) -> _Found:
    found = _Found([], [], [])
    prefix = folder.parent.name + folder.name
    for entry in os.scandir(folder):
        if not entry.is_file(follow_symlinks=False):
            continue
        name = entry.name
        if name.startswith(ASIDE_PREFIX):
            sha = name.removeprefix(ASIDE_PREFIX)
            if _SHA256.fullmatch(sha):
                found.aside.append(sha)
            continue
        with contextlib.suppress(FileNotFoundError):
            changed = entry.stat(follow_symlinks=False).st_mtime
            if changed >= older_than:
                continue
            if _SHA256.fullmatch(name) and name.startswith(prefix):
                found.blobs.append(name)
            elif name.startswith(INCOMING_PREFIX):
                found.temporary.append(Path(entry.path))
    return found


def _unlink_all(paths: list[Path]) -> int:
    removed = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def _set_aside(folder: Path, shas: list[str]) -> list[str]:
    """Rename each blob to its aside name (atomic); a writer now finds no file to reuse."""
    moved = []
    for sha in shas:
        with contextlib.suppress(FileNotFoundError):
            (folder / sha).rename(folder / f"{ASIDE_PREFIX}{sha}")
            moved.append(sha)
    return moved


def _finish(folder: Path, aside: Sequence[str], wanted: set[str], older_than: float) -> SweepResult:
    blobs = size = 0
    for sha in aside:
        path = folder / f"{ASIDE_PREFIX}{sha}"
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if sha in wanted or stat.st_mtime >= older_than:
            # Referenced (or touched) since the first look: put it back. A writer that
            # found no file meanwhile wrote the same bytes again, so replacing is harmless.
            path.replace(folder / sha)
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            blobs += 1
            size += stat.st_size
    return SweepResult(blobs=blobs, bytes=size)
