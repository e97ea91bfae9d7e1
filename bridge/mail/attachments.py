"""Attachments of inbound mail: what the bytes really are, and how many bytes are too many.

Owns two small decisions of the inbound pipeline (docs/inbound.md, step 8):

* `sniff_type` names the type of a file from its first bytes (magic numbers),
  never from what the sender declared: a `Content-Type` header and a file name
  are the sender's claims, and an executable called `invoice.pdf` must be
  stored as what it is. The name only refines containers whose bytes look
  alike (an Office file is a ZIP or an OLE2 file inside) and tells text
  formats apart. `name_type` gives the type a name claims, so a mismatch can
  be counted.
* `check_limits` applies the configured count, per-file and total size limits.

Pure: bytes and names in, values out. Does not: make file names safe
(`bridge.mail.filenames`), store bytes (`bridge.store.blobs`), refuse types
(nothing is refused for its type; the portal decides how to offer a file), or
log anything.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

OCTET_STREAM: Final = "application/octet-stream"
TEXT_PLAIN: Final = "text/plain"

# How much of a file is looked at: magic numbers sit at the start; ZIP entry names
# of Office files within the first few entries; text is judged on its opening.
_ZIP_SCAN: Final = 64 * 1024
_TEXT_SCAN: Final = 8 * 1024

# Fixed signatures at offset 0, most specific first.
_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"{\\rtf", "application/rtf"),
    (b"\x1f\x8b", "application/gzip"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"Rar!\x1a\x07", "application/vnd.rar"),
    (b"OggS", "audio/ogg"),
    (b"fLaC", "audio/flac"),
    (b"ID3", "audio/mpeg"),
    (b"\x7fELF", "application/x-executable"),
    (b"MZ", "application/x-msdownload"),
    (b"\xfe\xed\xfa\xce", "application/x-mach-binary"),
    (b"\xfe\xed\xfa\xcf", "application/x-mach-binary"),
    (b"\xce\xfa\xed\xfe", "application/x-mach-binary"),
    (b"\xcf\xfa\xed\xfe", "application/x-mach-binary"),
    (b"%!PS", "application/postscript"),
)
_RIFF_FORMS: Final = {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}
# ISO base media files (`....ftyp<brand>`): the brand says which family.
_FTYP_BRANDS: Final = {
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"hevc": "image/heic",
    b"heim": "image/heic",
    b"heis": "image/heic",
    b"mif1": "image/heif",
    b"msf1": "image/heif",
    b"avif": "image/avif",
    b"qt  ": "video/quicktime",
    b"M4A ": "audio/mp4",
}
_OLE2: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP: Final = (b"PK\x03\x04", b"PK\x05\x06")
# OpenDocument and EPUB put their type, uncompressed, in the first entry `mimetype`.
_ZIP_MIMETYPE: Final = b"mimetypeapplication/"
_ZIP_DECLARED: Final = frozenset(
    {
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
        "application/vnd.oasis.opendocument.presentation",
        "application/epub+zip",
    }
)
_OOXML_PARTS: Final = (
    (b"word/", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    (b"xl/", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    (b"ppt/", "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
)

# What a file name claims, by extension (lower case). Deliberately small and fixed:
# `mimetypes` reads the host's /etc/mime.types, which differs between machines.
_BY_EXTENSION: Final = {
    "pdf": "application/pdf",
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "bmp": "image/bmp",
    "webp": "image/webp",
    "heic": "image/heic",
    "heif": "image/heif",
    "avif": "image/avif",
    "svg": "image/svg+xml",
    "txt": TEXT_PLAIN,
    "csv": "text/csv",
    "md": "text/markdown",
    "htm": "text/html",
    "html": "text/html",
    "ics": "text/calendar",
    "vcf": "text/vcard",
    "xml": "application/xml",
    "rtf": "application/rtf",
    "zip": "application/zip",
    "gz": "application/gzip",
    "7z": "application/x-7z-compressed",
    "rar": "application/vnd.rar",
    "doc": "application/msword",
    "xls": "application/vnd.ms-excel",
    "ppt": "application/vnd.ms-powerpoint",
    "msg": "application/vnd.ms-outlook",
    "docx": _OOXML_PARTS[0][1],
    "xlsx": _OOXML_PARTS[1][1],
    "pptx": _OOXML_PARTS[2][1],
    "odt": "application/vnd.oasis.opendocument.text",
    "ods": "application/vnd.oasis.opendocument.spreadsheet",
    "odp": "application/vnd.oasis.opendocument.presentation",
    "epub": "application/epub+zip",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
    "wav": "audio/wav",
    "ogg": "audio/ogg",
    "flac": "audio/flac",
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "avi": "video/x-msvideo",
    "exe": "application/x-msdownload",
    "dll": "application/x-msdownload",
    "ps": "application/postscript",
    "eml": "message/rfc822",
}
# Containers whose bytes cannot tell their flavours apart: the name decides among these.
_OLE2_FLAVOURS: Final = frozenset({"doc", "xls", "ppt", "msg"})
# Text files: the name decides between these and plain text.
_TEXT_FLAVOURS: Final = frozenset({"csv", "md", "ics", "vcf"})
_MPEG_FRAME_SYNC: Final = (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")


def sniff_type(data: bytes, filename: str = "") -> str:
    """The type of `data` (`type/subtype`, lower case) judged from its bytes.

    Recognised: PDF, common images, audio and video, archives, Office (OOXML,
    OpenDocument, legacy OLE2), RTF, executables, and text (HTML, XML, SVG,
    calendar, vCard, else `text/plain`; CSV and Markdown by name). Anything
    else is `application/octet-stream`. `filename` only picks a flavour
    among types whose bytes look alike; it never turns bytes into another type.
    """
    head = data[:_ZIP_SCAN]
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    special = _riff_or_ftyp(head) or _bitmap(head) or _mpeg_audio(head)
    if special is not None:
        return special
    extension = _extension(filename)
    if head.startswith(_OLE2):
        return (
            _BY_EXTENSION[extension] if extension in _OLE2_FLAVOURS else "application/x-ole-storage"
        )
    if head.startswith(_ZIP):
        return _zip_flavour(head, extension)
    if _looks_like_text(head[:_TEXT_SCAN]):
        return _text_flavour(head[:_TEXT_SCAN], extension)
    return OCTET_STREAM


def name_type(filename: str) -> str | None:
    """The type a file name claims by its extension, or None when it claims none we know."""
    return _BY_EXTENSION.get(_extension(filename))


def type_mismatch(sniffed: str, filename: str) -> bool:
    """Whether the name claims a known type other than the one the bytes have."""
    claimed = name_type(filename)
    return claimed is not None and claimed != sniffed


class LimitExceeded(StrEnum):
    """Which attachment limit a message breaks."""

    COUNT = "count"
    SIZE = "size"
    TOTAL = "total"


@dataclass(frozen=True)
class AttachmentLimits:
    """`inbound.pipeline.max_attachments`, `max_attachment_bytes`, `max_total_attachment_bytes`."""

    max_count: int
    max_bytes: int
    max_total_bytes: int


def check_limits(sizes: Sequence[int], limits: AttachmentLimits) -> LimitExceeded | None:
    """The first limit that `sizes` (one per attachment, in bytes) breaks, or None."""
    if len(sizes) > limits.max_count:
        return LimitExceeded.COUNT
    if any(size > limits.max_bytes for size in sizes):
        return LimitExceeded.SIZE
    if sum(sizes) > limits.max_total_bytes:
        return LimitExceeded.TOTAL
    return None


def _extension(filename: str) -> str:
    _, dot, extension = filename.rpartition(".")
    return extension.strip().lower() if dot else ""


def _riff_or_ftyp(head: bytes) -> str | None:
    if head.startswith(b"RIFF") and len(head) >= 12:
        return _RIFF_FORMS.get(head[8:12])
    if head[4:8] == b"ftyp" and len(head) >= 12:
        return _FTYP_BRANDS.get(head[8:12], "video/mp4")
    return None


def _bitmap(head: bytes) -> str | None:
    # "BM" alone is two letters a text file may start with; the four reserved bytes
    # of the BMP header are zero, which text never is.
    if head.startswith(b"BM") and len(head) >= 26 and head[6:10] == b"\x00\x00\x00\x00":
        return "image/bmp"
    return None


def _mpeg_audio(head: bytes) -> str | None:
    return "audio/mpeg" if head[:2] in _MPEG_FRAME_SYNC else None


def _zip_flavour(head: bytes, extension: str) -> str:
    at = head.find(_ZIP_MIMETYPE)
    if 0 <= at < 64:  # the `mimetype` entry is the first one, right after its header
        end = at + len(b"mimetype")
        declared = head[end : end + 80].split(b"PK", 1)[0].decode("ascii", "replace")
        return declared if declared in _ZIP_DECLARED else "application/zip"
    if b"[Content_Types].xml" in head:
        for part, kind in _OOXML_PARTS:
            if part in head:
                return kind
        if _BY_EXTENSION.get(extension) in {kind for _, kind in _OOXML_PARTS}:
            return _BY_EXTENSION[extension]
    return "application/zip"


def _looks_like_text(sample: bytes) -> bool:
    """UTF-8 (or UTF-16 with a byte-order mark) without NUL or stray control bytes."""
    if not sample:
        return False
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return True
    if b"\x00" in sample:
        return False
    try:
        # Incremental: a multi-byte character cut at the end of the sample is fine.
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return False
    controls = sum(1 for byte in sample if byte < 0x20 and byte not in b"\t\n\r\f\x1b")
    return controls * 100 <= len(sample)


def _text_flavour(sample: bytes, extension: str) -> str:
    start = sample.lstrip(codecs.BOM_UTF8 + b" \t\r\n").lower()
    if start.startswith(b"<?xml"):
        return "image/svg+xml" if b"<svg" in start[:2048] else "application/xml"
    if start.startswith(b"<svg"):
        return "image/svg+xml"
    if start.startswith((b"<!doctype html", b"<html")):
        return "text/html"
    if start.startswith(b"begin:vcalendar"):
        return "text/calendar"
    if start.startswith(b"begin:vcard"):
        return "text/vcard"
    if extension in _TEXT_FLAVOURS:
        return _BY_EXTENSION[extension]
    return TEXT_PLAIN
