"""Attachment filenames made safe to store, show and hand to a mail client.

A filename arrives from a portal upload or from a MIME header written by
anyone. `safe_filename` keeps what a person would recognise (the last path
component, its extension) and removes what could hurt a reader: path
separators, control and bidirectional-formatting characters (the
"invoice\u202egpj.exe" trick), names that mean "this folder" or "the parent
folder", and names too long for a file system.

Bridge never uses the result as a path of its own (blobs are stored by
content hash); the rules protect whoever saves the attachment later.
Pure: no I/O.
"""

from __future__ import annotations

import unicodedata

FALLBACK_FILENAME = "attachment"
MAX_FILENAME_BYTES = 255

# An extension longer than this is treated as part of the name when truncating.
_MAX_EXTENSION_CHARS = 16

# Cc control, Cf format (bidi overrides, zero-width), Cs lone surrogates (not
# encodable), Zl/Zp line and paragraph separators.
_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

# Device names Windows refuses as file names, whatever the extension.
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)

# Characters stripped from both ends: surrounding blanks, and dots (which make
# "." and "..", hidden files, and names Windows silently truncates).
_EDGE_CHARS = " ."


def safe_filename(name: str, *, fallback: str = FALLBACK_FILENAME) -> str:
    """A filename without separators or control characters, NFC, at most 255 bytes.

    Only the last component of a path survives (`../../etc/passwd` becomes
    `passwd`, `C:\\fakepath\\cv.pdf` becomes `cv.pdf`). The result is never
    empty, `.` or `..`; a name with nothing left in it becomes `fallback`
    (itself made safe).
    """
    text = "".join(_clean_char(ch) for ch in unicodedata.normalize("NFC", name))
    components = [part for part in text.replace("\\", "/").split("/") if part.strip(_EDGE_CHARS)]
    text = " ".join(components[-1].split()) if components else ""  # runs of blanks become one
    text = _settle(text)
    if not text:
        return FALLBACK_FILENAME if fallback == FALLBACK_FILENAME else safe_filename(fallback)
    if text.partition(".")[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
        text = _settle(f"_{text}")
    return text


def _clean_char(ch: str) -> str:
    if ch.isspace():
        return " "
    return "" if unicodedata.category(ch) in _REMOVED_CATEGORIES else ch


def _settle(text: str) -> str:
    """NFC, no dots or blanks at the edges, within the byte limit; repeated until stable.

    Each step can undo another's work (cutting strands a combining mark,
    composing changes lengths), so they run until nothing changes.
    """
    while True:
        settled = _truncate(unicodedata.normalize("NFC", text).strip(_EDGE_CHARS))
        if settled == text:
            return text
        text = settled


def _truncate(text: str) -> str:
    """At most MAX_FILENAME_BYTES of UTF-8, keeping a short extension whole."""
    if len(text.encode("utf-8")) <= MAX_FILENAME_BYTES:
        return text
    stem, dot, extension = text.rpartition(".")
    if not dot or not stem.strip(_EDGE_CHARS) or len(extension) > _MAX_EXTENSION_CHARS:
        stem, dot, extension = text, "", ""
    suffix = f"{dot}{extension}"
    budget = MAX_FILENAME_BYTES - len(suffix.encode("utf-8"))
    cut = stem.encode("utf-8")[:budget].decode("utf-8", errors="ignore")
    return cut.rstrip(_EDGE_CHARS) + suffix
