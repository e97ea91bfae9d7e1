"""Attachment types from bytes, not from the sender's claims; and the size limits."""

from __future__ import annotations

import io
import zipfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.mail.attachments import (
    AttachmentLimits,
    LimitExceeded,
    check_limits,
    name_type,
    sniff_type,
    type_mismatch,
)

OOXML_WORD = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def zipped(entries: dict[str, bytes], *, stored_first: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, (name, data) in enumerate(entries.items()):
            method = zipfile.ZIP_STORED if stored_first and index == 0 else zipfile.ZIP_DEFLATED
            archive.writestr(name, data, compress_type=method)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"%PDF-1.7\n...", "application/pdf"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"II*\x00\x08\x00", "image/tiff"),
        (b"BM\x3a\x00\x00\x00\x00\x00\x00\x00" + b"\x00" * 20, "image/bmp"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00", "image/heic"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00", "video/mp4"),
        (b"ID3\x03\x00", "audio/mpeg"),
        (b"{\\rtf1\\ansi", "application/rtf"),
        (b"\x1f\x8b\x08\x00", "application/gzip"),
        (b"MZ\x90\x00\x03", "application/x-msdownload"),
        (b"\x7fELF\x02\x01", "application/x-executable"),
        (b"Hello,\nthis is text.\n", "text/plain"),
        ("Grüße, \u00e9t\u00e9\n".encode(), "text/plain"),
        (b"\xef\xbb\xbf<!DOCTYPE html><html>", "text/html"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg">', "image/svg+xml"),
        (b"BEGIN:VCALENDAR\r\nVERSION:2.0", "text/calendar"),
        (b"\x00\x01\x02\x03binary", "application/octet-stream"),
        (b"", "application/octet-stream"),
    ],
)
def test_the_type_comes_from_the_bytes(data: bytes, kind: str) -> None:
    assert sniff_type(data, "whatever.bin") == kind


def test_a_name_never_turns_bytes_into_another_type() -> None:
    assert sniff_type(b"MZ\x90\x00", "invoice.pdf") == "application/x-msdownload"
    assert type_mismatch("application/x-msdownload", "invoice.pdf")
    assert not type_mismatch("application/pdf", "invoice.PDF")
    assert not type_mismatch("application/pdf", "no-extension")


def test_office_files_are_told_apart_by_their_contents_or_their_name() -> None:
    docx = zipped({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w/>"})
    odt = zipped(
        {"mimetype": b"application/vnd.oasis.opendocument.text", "content.xml": b"<x/>"},
        stored_first=True,
    )
    ole2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100

    assert sniff_type(docx, "letter.zip") == OOXML_WORD
    assert sniff_type(odt, "x") == "application/vnd.oasis.opendocument.text"
    assert sniff_type(zipped({"a.txt": b"a"}), "a.docx") == "application/zip"
    assert sniff_type(ole2, "old.doc") == "application/msword"
    assert sniff_type(ole2, "old.xls") == "application/vnd.ms-excel"
    assert sniff_type(ole2, "old.exe") == "application/x-ole-storage"


def test_text_flavours_come_from_the_name() -> None:
    assert sniff_type(b"a,b\n1,2\n", "table.CSV") == "text/csv"
    assert sniff_type(b"a,b\n1,2\n", "table.exe") == "text/plain"
    assert name_type("photo.JPG") == "image/jpeg"
    assert name_type("README") is None


LIMITS = AttachmentLimits(max_count=2, max_bytes=100, max_total_bytes=150)


@pytest.mark.parametrize(
    ("sizes", "verdict"),
    [
        ([], None),
        ([100, 50], None),
        ([1, 1, 1], LimitExceeded.COUNT),
        ([101], LimitExceeded.SIZE),
        ([100, 51], LimitExceeded.TOTAL),
    ],
)
def test_limits_are_inclusive_and_checked_count_first(
    sizes: list[int], verdict: LimitExceeded | None
) -> None:
    assert check_limits(sizes, LIMITS) == verdict


def test_no_attachments_allowed_at_all() -> None:
    assert check_limits([1], AttachmentLimits(0, 10, 10)) is LimitExceeded.COUNT
    assert check_limits([], AttachmentLimits(0, 10, 10)) is None


@given(st.binary(max_size=512), st.text(max_size=40))
def test_any_bytes_and_name_get_a_well_formed_type(data: bytes, name: str) -> None:
    kind = sniff_type(data, name)

    major, slash, minor = kind.partition("/")
    assert slash and major and minor and kind == kind.lower()
