"""`parse_mail`: what the pipeline reads from raw bytes, and what it survives."""

from __future__ import annotations

import base64
import email
from email import policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.mail.parse import MAX_REFERENCE_IDS, MalformedMail, ParsedMail, parse_mail

PDF = b"%PDF-1.7\nbinary \x00\xff\xfe bytes\n%%EOF\n"

REPLY = (
    b"Return-Path: <client@home.example.net>\r\n"
    b"Delivered-To: reply+abc@replies.example.org\r\n"
    b'From: "Client, A." <Client@Home.example.net>\r\n'
    b"To: Practice <office@practice.example.org>\r\n"
    b"Cc: other@home.example.net\r\n"
    b"Subject: Re: a message\r\n"
    b"Message-ID: <m1@home.example.net>\r\n"
    b"In-Reply-To: <n.5.aa@replies.example.org>\r\n"
    b"References: <t.root@replies.example.org>\r\n <n.4.bb@replies.example.org>\r\n"
    b"\t<n.5.aa@replies.example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="alt"\r\n'
    b"\r\n"
    b"--alt\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Ol=E9, see you Tuesday.\r\n"
    b"--alt\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>Ol\xc3\xa9, see you <b>Tuesday</b>.</p>\r\n"
    b"--alt--\r\n"
    b"--outer\r\n"
    b'Content-Type: image/png; name="scan.pdf"\r\n'
    b'Content-Disposition: attachment; filename="../../scan.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.encodebytes(PDF).replace(b"\n", b"\r\n") + b"--outer--\r\n"
)


def test_a_reply_is_read_into_its_parts() -> None:
    parsed = parse_mail(REPLY)

    assert parsed.from_addresses == ("Client@Home.example.net",)
    assert parsed.from_fields == 1
    assert parsed.recipients == (
        "reply+abc@replies.example.org",
        "office@practice.example.org",
        "other@home.example.net",
    )
    assert parsed.message_id == "<m1@home.example.net>"
    assert parsed.reply_ids == (
        "<n.5.aa@replies.example.org>",
        "<n.4.bb@replies.example.org>",
        "<t.root@replies.example.org>",
    )
    assert parsed.text is not None and parsed.text.strip() == "Olé, see you Tuesday."
    assert parsed.html is not None and "<b>Tuesday</b>" in parsed.html
    [attachment] = parsed.attachments
    assert (attachment.filename, attachment.declared_type, attachment.data) == (
        "../../scan.pdf",
        "image/png",
        PDF,
    )
    assert parsed.defects == 0
    assert parsed.header_values("SUBJECT") == ("Re: a message",)
    assert parsed.header_values("references")[0].count("<") == 3  # unfolded, one value


def test_the_repr_shows_no_content_and_no_address() -> None:
    shown = repr(parse_mail(REPLY))

    for private in ("Tuesday", "Client", "home.example", "scan.pdf", "office"):
        assert private not in shown


def test_two_from_fields_are_counted() -> None:
    raw = b"From: a@x.example\r\nFrom: b@y.example\r\n\r\nhi\r\n"

    parsed = parse_mail(raw)

    assert parsed.from_fields == 2


def test_several_from_mailboxes_are_all_reported() -> None:
    parsed = parse_mail(b"From: a@x.example, Bee <b@y.example>\r\n\r\nhi\r\n")

    assert parsed.from_addresses == ("a@x.example", "b@y.example")


def test_text_is_cleaned_of_nul_and_undecodable_bytes() -> None:
    raw = b"From: a@x.example\r\nSubject: \xff\xfe\r\n\r\nhel\x00lo \xff there\r\n"

    parsed = parse_mail(raw)

    assert parsed.text is not None and "\x00" not in parsed.text and "hello" in parsed.text
    parsed.text.encode("utf-8")  # no lone surrogates: storable as text on PostgreSQL
    for _, value in parsed.headers:
        value.encode("utf-8")


def test_base64_with_a_dangling_character_is_decoded_and_counted_as_a_defect() -> None:
    raw = (
        b"From: a@x.example\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
        b"--b\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename=a.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjcKJ\r\n--b--\r\n"
    )

    parsed = parse_mail(raw)

    assert parsed.attachments[0].data.startswith(b"%PDF-1.")
    assert parsed.defects >= 1


def test_a_content_type_of_5000_parentheses_parses_though_the_default_policy_recurses() -> None:
    raw = b"From: a@x.example\r\nContent-Type: " + b"(" * 5000 + b"\r\n\r\nhello\r\n"
    with pytest.raises(RecursionError):
        _ = email.message_from_bytes(raw, policy=policy.default)["content-type"]

    parsed = parse_mail(raw)

    assert parsed.text is not None and parsed.text.strip() == "hello"


def test_mime_nested_too_deep_for_the_parser_is_malformed() -> None:
    parts = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(3000)
    )
    raw = b"From: a@x.example\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n" + parts

    with pytest.raises(MalformedMail) as caught:
        parse_mail(raw)

    assert caught.value.reason == "too_deep"


def test_reply_ids_are_capped() -> None:
    ids = " ".join(f"<id{n}@x.example>" for n in range(200))
    parsed = parse_mail(f"From: a@x.example\r\nReferences: {ids}\r\n\r\nhi\r\n".encode())

    assert len(parsed.reply_ids) == MAX_REFERENCE_IDS
    assert parsed.reply_ids[0] == "<id199@x.example>"  # the newest first


def test_a_message_id_without_angle_brackets_is_no_message_id() -> None:
    parsed = parse_mail(b"From: a@x.example\r\nMessage-ID: bare@x.example\r\n\r\nhi\r\n")

    assert parsed.message_id is None


@given(st.binary(max_size=2000))
def test_any_bytes_parse_or_are_refused_as_malformed(raw: bytes) -> None:
    try:
        parsed = parse_mail(raw)
    except MalformedMail:
        return
    assert isinstance(parsed, ParsedMail)
    assert parsed.defects >= 0
    for text in (parsed.text or "", parsed.html or ""):
        assert "\x00" not in text
        text.encode("utf-8")
