"""safe_filename: names from uploads and MIME headers made harmless."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.mail.filenames import FALLBACK_FILENAME, MAX_FILENAME_BYTES, safe_filename


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\fakepath\\report.pdf", "report.pdf"),
        ("/absolute/path/scan.png", "scan.png"),
        ("notes/", "notes"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),  # right-to-left override removed
        ("line\nbreak\r.txt", "line break .txt"),  # line breaks become blanks
        ("tab\there.txt", "tab here.txt"),
        ("nul\x00byte.doc", "nulbyte.doc"),
        ("  spaced   out .txt  ", "spaced out .txt"),
        ("trailing dots...", "trailing dots"),
        (".hidden", "hidden"),
        ("CON.txt", "_CON.txt"),
        ("lpt1", "_lpt1"),
        ("Jose\u0301.txt", "Jos\u00e9.txt"),
    ],
)
def test_safe_filename_keeps_the_recognisable_part(name: str, expected: str) -> None:
    assert safe_filename(name) == expected


@pytest.mark.parametrize(
    "name", ["", ".", "..", "...", "/", "\\", "../..", " . ", "\x00\x01", "\u202e"]
)
def test_names_with_nothing_left_become_the_fallback(name: str) -> None:
    assert safe_filename(name) == FALLBACK_FILENAME


def test_a_custom_fallback_is_itself_made_safe() -> None:
    assert safe_filename("..", fallback="scan.pdf") == "scan.pdf"
    assert safe_filename("..", fallback="../..") == FALLBACK_FILENAME


def test_truncation_keeps_a_short_extension() -> None:
    result = safe_filename("x" * 400 + ".pdf")
    assert result.endswith(".pdf")
    assert len(result.encode()) == MAX_FILENAME_BYTES


def test_truncation_never_splits_a_multibyte_character() -> None:
    result = safe_filename("é" * 200 + ".txt")  # 2 bytes each in UTF-8
    assert result.endswith(".txt")
    assert len(result.encode()) <= MAX_FILENAME_BYTES
    assert set(result[:-4]) == {"é"}


@given(st.text(st.characters(exclude_categories=()), max_size=400))
def test_safe_filename_output_is_always_safe(name: str) -> None:
    result = safe_filename(name)
    assert result not in ("", ".", "..")
    assert "/" not in result
    assert "\\" not in result
    assert "\x00" not in result
    assert not any(unicodedata.category(ch) in {"Cc", "Cf", "Cs"} for ch in result)
    assert unicodedata.is_normalized("NFC", result)
    assert len(result.encode("utf-8")) <= MAX_FILENAME_BYTES


@given(st.lists(st.sampled_from(["..", ".", "/", "\\", "etc", "passwd", "\x00", " "]), max_size=20))
def test_traversal_fragments_never_survive(parts: list[str]) -> None:
    result = safe_filename("".join(parts))
    assert "/" not in result and "\\" not in result
    assert not result.startswith(".")


@given(st.text(st.characters(exclude_categories=()), max_size=400))
def test_safe_filename_is_idempotent(name: str) -> None:
    once = safe_filename(name)
    assert safe_filename(once) == once
