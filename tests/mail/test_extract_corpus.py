"""Reply extraction against the shared corpus of public reply fixtures.

The corpus lives beside the repository (`../shared/corpus/replies`) and is never
copied into it. Each case folder holds `input.eml` and `expected.txt`; the
project's target is an exact match (after whitespace normalisation) on at least
90 % of the cases. One test scores them all so that a single miss does not fail
the suite, and prints every case's verdict when the ratio is not met.
"""

from __future__ import annotations

import csv
import email
import email.policy
import re
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

from bridge.mail.extract import extract_reply, extract_reply_html

CORPUS = Path(__file__).parents[2].parent / "shared" / "corpus" / "replies"
TARGET = 0.90

pytestmark = pytest.mark.skipif(
    not (CORPUS / "MANIFEST.tsv").is_file(),
    reason=f"reply corpus not present at {CORPUS} (it lives beside the repository)",
)


def body_parts(msg: Message) -> tuple[str | None, str | None]:
    """The first inline text/plain and text/html bodies of `msg`."""
    plain: str | None = None
    html: str | None = None
    for part in msg.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        content_type = part.get_content_type()
        if content_type not in ("text/plain", "text/html"):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        try:
            text = payload.decode(part.get_content_charset() or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know
            text = payload.decode("utf-8", errors="replace")
        if content_type == "text/plain" and plain is None:
            plain = text
        elif content_type == "text/html" and html is None:
            html = text
    return plain, html


def normalise(text: str) -> str:
    """Strip trailing spaces per line, collapse blank-line runs, strip blank lines at the ends."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    collapsed: list[str] = []
    for line in lines:
        if not line and collapsed and not collapsed[-1]:
            continue
        collapsed.append(line)
    return "\n".join(collapsed).strip("\n")


def without_whitespace(text: str) -> str:
    return re.sub(r"\s+", "", text)


@dataclass(frozen=True)
class Case:
    name: str
    folder: Path
    html_compare: bool  # upstream compared these with all whitespace removed


def load_cases() -> list[Case]:
    with (CORPUS / "MANIFEST.tsv").open(encoding="utf-8", newline="") as manifest:
        rows = list(csv.DictReader(manifest, delimiter="\t"))
    return [
        Case(
            name=f"{row['source']}/{row['case']}",
            folder=CORPUS / row["source"] / row["case"],
            html_compare=row["kind"] == "text/html body",
        )
        for row in rows
    ]


def run_case(case: Case) -> tuple[bool, str]:
    """Whether the extractor's text matches the expected text, and what it produced."""
    msg = email.message_from_bytes(
        (case.folder / "input.eml").read_bytes(), policy=email.policy.default
    )
    plain, html = body_parts(msg)
    if plain is not None:
        got = extract_reply(plain).text
    elif html is not None:
        got = extract_reply_html(html).text
    else:
        return False, "<no text body>"
    expected = (case.folder / "expected.txt").read_text(encoding="utf-8")
    if case.html_compare:
        return without_whitespace(got) == without_whitespace(expected), got
    return normalise(got) == normalise(expected), got


def test_corpus_is_complete() -> None:
    cases = load_cases()
    missing = [case.name for case in cases if not (case.folder / "input.eml").is_file()]
    assert cases
    assert not missing


def test_exact_match_ratio_meets_the_target() -> None:
    cases = load_cases()
    verdicts = [(case, *run_case(case)) for case in cases]
    passed = sum(ok for _, ok, _ in verdicts)
    ratio = passed / len(verdicts)
    report = "\n".join(
        f"{'pass' if ok else 'FAIL'}  {case.name}" + ("" if ok else f"\n      got: {got[:200]!r}")
        for case, ok, got in verdicts
    )
    print(f"\nreply corpus: {passed}/{len(verdicts)} exact ({ratio:.1%})\n{report}")
    assert ratio >= TARGET, f"{passed}/{len(verdicts)} exact ({ratio:.1%}) < {TARGET:.0%}\n{report}"
