"""Hostile and broken input through the whole pipeline: every row ends with a clear status.

Known traps are listed one by one (a `Content-Type` of 5000 "(", which makes
`policy.default` recurse out of the stack; MIME nested 3000 deep; unknown
charsets; a multi-megabyte header; markup that is quadratic for
`html.parser`); then Hypothesis feeds random and mutated MIME through the
pipeline and checks that no row is left `received` and none needed the
"unexpected error" path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_pipeline import PDF, Harness, harness_for, reply

from bridge.store.models import Message

if TYPE_CHECKING:
    from conftest import Practice

FROM = b"From: Client <client@home.example.net>\r\nTo: reply@replies.example.org\r\nSubject: Re\r\n"
NESTED = FROM + b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"


def nested(depth: int) -> bytes:
    parts = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(depth)
    )
    return NESTED + parts + b"--b%d\r\nContent-Type: text/plain\r\n\r\nDeep hello\r\n" % depth


HOSTILE: dict[str, tuple[bytes, str, str | None, str | None]] = {
    # name: (raw, status, reason, a line the filed text contains)
    "5000 ( in Content-Type": (
        FROM + b"Content-Type: " + b"(" * 5000 + b"\r\n\r\nParen hello\r\n",
        "filed",
        None,
        "Paren hello",
    ),
    "5000 ( in a parameter": (
        FROM + b"Content-Type: text/plain; charset=" + b"(" * 5000 + b"\r\n\r\nParam hello\r\n",
        "filed",
        None,
        "Param hello",
    ),
    "5000 ( as the sender": (
        b"From: " + b"(" * 5000 + b"\r\n\r\nhello\r\n",
        "held",
        "sender_mismatch",
        None,
    ),
    "MIME nested 3000 deep": (nested(3000), "parked", "malformed", None),
    "MIME nested 300 deep": (nested(300), "filed", None, "Deep hello"),
    "unknown charset": (
        FROM + b"Content-Type: text/plain; charset=x-klingon\r\n\r\nQapla \xff\xfe friend\r\n",
        "filed",
        None,
        "Qapla",
    ),
    "a 3 MB header": (
        FROM + b"X-Huge: " + b"x" * 3_000_000 + b"\r\n\r\nHuge hello\r\n",
        "filed",
        None,
        "Huge hello",
    ),
    "50 000 headers": (
        FROM + b"".join(b"X-H%d: v\r\n" % i for i in range(50_000)) + b"\r\nMany hello\r\n",
        "filed",
        None,
        "Many hello",
    ),
    "no closing boundary": (
        FROM
        + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        + b"Content-Type: text/plain\r\n\r\nUnclosed hello\r\n",
        "filed",
        None,
        "Unclosed hello",
    ),
    "quadratic markup": (
        FROM + b"Content-Type: text/html\r\n\r\n" + b"<a x='" * 50_000,
        "held",
        "empty_reply",
        None,
    ),
    "100 000 nested divs": (
        FROM + b"Content-Type: text/html\r\n\r\n" + b"<div>" * 100_000 + b"Div hello",
        "filed",
        None,
        "Div hello",
    ),
    "NUL and 8-bit bytes": (
        b"From: Cl\xe9ment <client@home.example.net>\r\nSubject: \xff\r\n\r\nNul\x00 hello\r\n",
        "filed",
        None,
        "Nul hello",
    ),
    "random bytes": (bytes(range(256)) * 40, "held", "sender_mismatch", None),
    "nothing at all": (b"", "held", "sender_mismatch", None),
}


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_input_gets_a_clear_status(
    practice: Practice, tmp_path: Path, name: str
) -> None:
    raw, status, reason, text = HOSTILE[name]
    harness = harness_for(practice, tmp_path)
    address = await practice.address(practice.client_id)
    row_id = await harness.deliver(raw, address)

    await harness.run()

    row = await harness.row(row_id)
    assert (row.status, row.reason) == (status, reason)
    if text is not None:
        [message] = await harness.messages()
        assert text in message.body_text and "\x00" not in message.body_text


async def test_a_large_mail_is_filed(practice: Practice, tmp_path: Path) -> None:
    harness = harness_for(practice, tmp_path)
    body = "A long letter.\n" + "line of text\n" * 400_000  # about 5 MB
    big = PDF + b"0" * 8_000_000
    row_id = await harness.deliver(
        reply("x@y.example", text=body, attachments=[("big.pdf", "application/pdf", big)]),
        await practice.address(practice.client_id),
    )

    await harness.run()

    assert (await harness.row(row_id)).status == "filed"
    [message] = await harness.messages()
    assert message.body_text.startswith("A long letter.")


# --- random and mutated MIME -------------------------------------------------------------

SEEDS = [
    reply("x@replies.example.org", text="Plain hello"),
    reply("x@replies.example.org", text="Both hello", html="<p>Both <b>hello</b></p>"),
    reply(
        "x@replies.example.org", text=None, html="<div>Html hello<blockquote>q</blockquote></div>"
    ),
    reply("x@replies.example.org", attachments=[("../a.pdf", "application/pdf", PDF)]),
    HOSTILE["no closing boundary"][0],
    HOSTILE["unknown charset"][0],
]
SPLICES = [
    b"\r\n",
    b"\r\n\r\n",
    b"--",
    b"(" * 200,
    b"=?utf-8?b?_?=",
    b"Content-Type: multipart/mixed; boundary=x\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b'charset="x-unknown"',
    b"\xff\xfe\x00",
    b"<blockquote><div>",
]


@st.composite
def mutated_mime(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        action = draw(st.sampled_from(["insert", "delete", "flip", "splice", "repeat", "cut"]))
        if action == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del raw[at : at + draw(st.integers(min_value=1, max_value=64))]
        elif action == "flip" and at < len(raw):
            raw[at] ^= draw(st.integers(min_value=1, max_value=255))
        elif action == "splice":
            raw[at:at] = draw(st.sampled_from(SPLICES))
        elif action == "repeat":
            raw[at:at] = raw[at : at + 40] * draw(st.integers(min_value=2, max_value=50))
        elif action == "cut":
            del raw[at:]
    return bytes(raw)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=st.one_of(mutated_mime(), st.binary(max_size=3000)))
async def test_random_and_mutated_mime_always_ends_with_a_status(
    practice: Practice, tmp_path: Path, raw: bytes
) -> None:
    harness: Harness = harness_for(
        practice, tmp_path, sender_limit_per_hour=10_000, thread_limit_per_hour=10_000
    )
    address = await practice.address(practice.client_id)
    row_id = await harness.deliver(raw, address)

    await harness.run()

    row = await harness.row(row_id)
    assert row.status in {"filed", "dropped", "held", "parked"}
    # Parked only for bytes that cannot be parsed, never after an unexpected error.
    assert row.status != "parked" or row.reason == "malformed"
    assert row.attempts == 1
    if row.status == "filed":
        messages = await harness.all(Message, Message.inbound_email_id == row_id)
        assert len(messages) == 1 and "\x00" not in messages[0].body_text
