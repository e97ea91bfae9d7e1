"""Notification emails as a mail client sees them: serialised, parsed back, fully decoded.

Every email is turned into bytes and read back with the standard library's
`policy.default` parser, so headers are RFC 2047-decoded and bodies
transfer-decoded exactly as a recipient's client would show them.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import html
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.mail.compose import (
    INVITATION_SUBJECT,
    NOTICE_REASONS,
    NOTICE_SUBJECT,
    SECURE_SUBJECT,
    AttachmentLink,
    ComposeError,
    ConvenienceNotice,
    Item,
    NoticeReason,
    RefusalNotice,
    SecureNotice,
    compose_convenience,
    compose_notice,
    compose_secure,
    new_message_id,
    thread_root_id,
)
from bridge.mail.extract import REPLY_MARKER, extract_reply
from bridge.mail.headers import OWN_MAIL_HEADER

FROM = "no-reply@bridge.example"
DOMAIN = "reply.example.com"
SECRET = b"0123456789abcdef0123456789abcdef"
SENT = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
ROOT = thread_root_id(SECRET, 7, 42, DOMAIN)
PORTAL = "https://portal.example.com"
REPLY_TO = "reply+abcdefghijklmnopqrstuvwxyz234567@reply.example.com"


# -- reading an email back ----------------------------------------------------------------


def parse(msg: EmailMessage) -> EmailMessage:
    parsed = email.message_from_bytes(bytes(msg), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def everything_readable(raw: bytes) -> str:
    """Every place a string could hide in `raw`, decoded every way a reader could decode it.

    The raw bytes themselves, every header value (RFC 2047 decoded), every
    part's content (charset decoded) and every part's transfer-decoded payload.
    """
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    found = [raw.decode("utf-8", "replace"), raw.decode("latin-1")]
    for part in parsed.walk():
        found += [f"{name}: {value}" for name, value in part.items()]
        if part.is_multipart():
            continue
        assert isinstance(part, EmailMessage)
        found.append(str(part.get_content()))
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        found.append(payload.decode("utf-8", "replace"))
    return "\n".join(found)


def body(msg: EmailMessage, subtype: str) -> str:
    part = parse(msg).get_body(preferencelist=(subtype,))
    assert part is not None and part.get_content_type() == f"text/{subtype}"
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


# -- building notices ------------------------------------------------------------------------


def item(
    author: str = "Dr. Dana Reyes",
    text: str = "See you on Tuesday.",
    html: str | None = None,
    attachments: tuple[AttachmentLink, ...] = (),
) -> Item:
    return Item(author, datetime(2026, 3, 2, 9, 5, tzinfo=UTC), text, html, attachments)


def convenience(**overrides: object) -> ConvenienceNotice:
    notice = ConvenienceNotice(
        to_address="client@example.org",
        reply_to=REPLY_TO,
        subject="Appointment next week",
        items=(item(),),
        portal_link=f"{PORTAL}/threads/7",
        invitation=False,
        practice_name="Harbour Therapy",
        message_id=new_message_id(99, DOMAIN),
        thread_root_id=ROOT,
        outbox_id=99,
        sent_at=SENT,
    )
    return replace(notice, **overrides)  # type: ignore[arg-type]


def secure(**overrides: object) -> SecureNotice:
    notice = SecureNotice(
        to_address="client@example.org",
        portal_link=f"{PORTAL}/threads/7",
        invitation=False,
        message_id=new_message_id(99, DOMAIN),
        thread_root_id=ROOT,
        outbox_id=99,
        sent_at=SENT,
    )
    return replace(notice, **overrides)  # type: ignore[arg-type]


# -- invariant 3: secure mode leaks nothing ---------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One message as the store might hold it; every content field carries a marker."""

    subject: str
    body_text: str
    body_html: str
    author_name: str
    recipient_name: str
    practice_name: str
    attachment_name: str
    markers: tuple[str, ...]
    invitation: bool


text_with_anything = st.text(max_size=60)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    ids = draw(st.lists(st.uuids(version=4), min_size=7, max_size=7, unique=True))
    markers = tuple(f"mk{uid.hex}" for uid in ids)

    def marked(marker: str) -> str:
        text = draw(text_with_anything)
        cut = draw(st.integers(0, len(text)))
        return text[:cut] + marker + text[cut:]

    before, after = draw(text_with_anything), draw(text_with_anything)
    return Scenario(
        subject=marked(markers[0]),
        body_text=marked(markers[1]),
        # Escaped around the marker, so that the marker stays text and is not eaten as a tag.
        body_html=f"<p>{html.escape(before)}{markers[2]}{html.escape(after)}</p>",
        author_name=marked(markers[3]),
        recipient_name=marked(markers[4]),
        practice_name=marked(markers[5]),
        attachment_name=marked(markers[6]),
        markers=markers,
        invitation=draw(st.booleans()),
    )


def notices_for(s: Scenario) -> tuple[SecureNotice, ConvenienceNotice]:
    """The secure and the convenience email of one scenario."""
    common = {
        "to_address": "client@example.org",
        "portal_link": f"{PORTAL}/invitation" if s.invitation else f"{PORTAL}/threads/7",
        "invitation": s.invitation,
        "message_id": new_message_id(5, DOMAIN),
        "thread_root_id": ROOT,
        "outbox_id": 5,
        "sent_at": SENT,
    }
    attachment = AttachmentLink(s.attachment_name, f"{PORTAL}/threads/7/attachments/3", 2048)
    carried = Item(
        author_name=s.author_name,
        created_at=SENT - timedelta(minutes=5),
        text=f"Dear {s.recipient_name},\n{s.body_text}",
        html=s.body_html,
        attachments=(attachment,),
    )
    return (
        SecureNotice(**common),  # type: ignore[arg-type]
        ConvenienceNotice(
            reply_to=REPLY_TO,
            subject=s.subject,
            items=(carried,),
            practice_name=s.practice_name,
            **common,  # type: ignore[arg-type]
        ),
    )


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_secure_email_contains_no_content_while_the_convenience_email_of_the_same_scenario_does(
    scenario: Scenario,
) -> None:
    # `SecureNotice` cannot even receive these values, so this proves the composer adds
    # nothing of its own; tests/outbound/test_render.py proves it end to end from the store.
    secure_notice, convenience_notice = notices_for(scenario)
    leaked = everything_readable(bytes(compose_secure(secure_notice, from_address=FROM)))
    assert [m for m in scenario.markers if m in leaked] == []
    # The positive control: the same search finds every marker when content is meant to go.
    shown = everything_readable(bytes(compose_convenience(convenience_notice, from_address=FROM)))
    assert [m for m in scenario.markers if m not in shown] == []


@pytest.mark.parametrize(
    ("invitation", "subject", "link"),
    [
        (False, SECURE_SUBJECT, f"{PORTAL}/threads/7"),
        (True, INVITATION_SUBJECT, f"{PORTAL}/invitation"),
    ],
)
def test_secure_email_has_fixed_subject_and_the_portal_link_in_both_parts(
    invitation: bool, subject: str, link: str
) -> None:
    msg = parse(compose_secure(secure(invitation=invitation, portal_link=link), from_address=FROM))
    assert msg["Subject"] == subject
    assert link in body(msg, "plain")
    assert f'href="{link}"' in body(msg, "html")
    assert msg["Reply-To"] is None
    assert str(msg["From"]) == FROM  # no display name from the store


def test_invitation_explains_creating_an_account_and_the_notification_does_not() -> None:
    invitation = body(compose_secure(secure(invitation=True), from_address=FROM), "plain")
    notification = body(compose_secure(secure(invitation=False), from_address=FROM), "plain")
    assert "create your portal account" in invitation
    assert "create your portal account" not in notification
    assert "secure message" in notification


# -- headers of both modes ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["secure", "convenience"])
def test_headers_follow_the_contract(mode: str) -> None:
    built = (
        compose_secure(secure(), from_address=FROM)
        if mode == "secure"
        else compose_convenience(convenience(), from_address=FROM)
    )
    msg = parse(built)
    assert msg["To"].addresses[0].addr_spec == "client@example.org"
    assert len(msg["To"].addresses) == 1
    assert msg.get_all("To") == ["client@example.org"]
    assert msg["Cc"] is None and msg["Bcc"] is None
    assert msg["From"].addresses[0].addr_spec == FROM
    assert re.fullmatch(r"<n\.99\.[0-9a-f]{16}@reply\.example\.com>", msg["Message-ID"])
    assert msg["In-Reply-To"] == ROOT
    assert msg["References"] == ROOT
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg[OWN_MAIL_HEADER] == "99"
    assert msg["Date"].datetime == SENT
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in msg.iter_parts())


# -- notices: automatic answers to emails that could not be accepted --------------------


def notice(**overrides: object) -> RefusalNotice:
    value = RefusalNotice(
        to_address="client@example.org",
        reason=NoticeReason.SENDER_MISMATCH,
        portal_link=f"{PORTAL}/threads/7",
        message_id=new_message_id(99, DOMAIN),
        thread_root_id=ROOT,
        outbox_id=99,
        sent_at=SENT,
    )
    return replace(value, **overrides)  # type: ignore[arg-type]


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("reason", list(NoticeReason))
def test_each_notice_says_what_went_wrong_and_what_to_do_with_the_link_in_both_parts(
    reason: NoticeReason,
) -> None:
    msg = compose_notice(notice(reason=reason), from_address=FROM)
    text, page = body(msg, "plain"), body(msg, "html")
    assert [r for r in NoticeReason if flat(NOTICE_REASONS[r]) in flat(text)] == [reason]
    assert flat(html.escape(NOTICE_REASONS[reason])) in flat(page)
    assert "portal" in NOTICE_REASONS[reason], "every notice offers the portal"
    assert f"{PORTAL}/threads/7" in text and f'href="{PORTAL}/threads/7"' in page
    parsed = parse(msg)
    assert parsed["Subject"] == NOTICE_SUBJECT
    assert str(parsed["From"]) == FROM and parsed["Reply-To"] is None


def test_the_empty_reply_notice_names_the_reply_marker() -> None:
    text = body(compose_notice(notice(reason=NoticeReason.EMPTY_REPLY), from_address=FROM), "plain")
    assert REPLY_MARKER in flat(text)


def test_a_notice_is_an_auto_reply_marked_as_ours_and_threaded_when_a_root_is_given() -> None:
    msg = parse(compose_notice(notice(), from_address=FROM))
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg[OWN_MAIL_HEADER] == "99"
    assert re.fullmatch(r"<n\.99\.[0-9a-f]{16}@reply\.example\.com>", msg["Message-ID"])
    assert msg["In-Reply-To"] == msg["References"] == ROOT
    assert msg.get_all("To") == ["client@example.org"]

    unthreaded = parse(compose_notice(notice(thread_root_id=None), from_address=FROM))
    assert unthreaded["In-Reply-To"] is None and unthreaded["References"] is None


def test_a_notice_refuses_unsafe_links_and_unusable_addresses() -> None:
    with pytest.raises(ComposeError) as refused:
        compose_notice(notice(portal_link="javascript:alert(1)"), from_address=FROM)
    assert refused.value.reason == "unsafe_link"
    with pytest.raises(ComposeError) as refused:
        compose_notice(notice(to_address="a@b.example\r\nBcc: x@y.example"), from_address=FROM)
    assert refused.value.reason == "bad_address"


def test_message_ids_are_fresh_for_every_email() -> None:
    ids = {new_message_id(99, DOMAIN) for _ in range(50)}
    assert len(ids) == 50


def test_thread_root_is_the_hmac_of_thread_and_participant_and_stable() -> None:
    expected = hmac.new(SECRET, b"thread:7:42", hashlib.sha256).hexdigest()[:24]
    assert thread_root_id(SECRET, 7, 42, DOMAIN) == f"<t.{expected}@{DOMAIN}>"
    assert thread_root_id(SECRET, 7, 42, DOMAIN) == thread_root_id(SECRET, 7, 42, DOMAIN)
    others = {
        thread_root_id(SECRET, 7, 43, DOMAIN),
        thread_root_id(SECRET, 8, 42, DOMAIN),
        thread_root_id(b"another secret, just as long", 7, 42, DOMAIN),
    }
    assert ROOT not in others and len(others) == 3


def test_email_is_seven_bit_clean_with_short_lines_even_for_long_non_latin_content() -> None:
    long_text = "Καλημέρα σας, 予約の変更について 😀 " * 40 + "x" * 2000
    raw = bytes(
        compose_convenience(
            convenience(subject="Ραντεβού " * 30, items=(item(text=long_text),)),
            from_address=FROM,
        )
    )
    assert raw.isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    assert (
        body(
            compose_convenience(convenience(items=(item(text=long_text),)), from_address=FROM),
            "plain",
        ).count("x" * 2000)
        == 1
    )


# -- convenience: language, structure, safety -------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [
        "Ραντεβού την Τρίτη; αλλαγή ώρας",
        "予約の変更について（来週の火曜日）",
        "关于下周的预约",
        "Rendez-vous 📅 😀 👨‍👩‍👧 ✅",
        ("Ελληνικά 中文 العربية עברית " * 8).strip(),
        "=?utf-8?q?not_an_encoded_word?= and a literal =?",
    ],
)
def test_non_latin_subject_round_trips_exactly(subject: str) -> None:
    built = compose_convenience(convenience(subject=subject), from_address=FROM)
    raw_subject = next(line for line in bytes(built).split(b"\r\n") if line.startswith(b"Subject:"))
    assert raw_subject.isascii()
    assert parse(built)["Subject"] == f"Re: {subject}"


@settings(max_examples=200, deadline=None)
@given(
    st.text(min_size=1, max_size=300).filter(lambda s: " ".join(s.split()) == s and s.isprintable())
)
def test_any_printable_single_line_subject_round_trips_exactly(subject: str) -> None:
    assert (
        parse(compose_convenience(convenience(subject=subject), from_address=FROM))["Subject"]
        == f"Re: {subject}"
    )


def test_line_breaks_in_store_values_cannot_inject_headers() -> None:
    built = compose_convenience(
        convenience(
            subject="Hello\r\nBcc: victim@example.net\r\n\r\nbody",
            practice_name="Practice\nCc: other@example.net",
        ),
        from_address=FROM,
    )
    msg = parse(built)
    assert msg["Bcc"] is None and msg["Cc"] is None
    assert msg["Subject"] == "Re: Hello Bcc: victim@example.net body"
    assert msg["From"].addresses[0].display_name == "Practice Cc: other@example.net"


def test_control_characters_and_lone_surrogates_in_store_values_are_harmless() -> None:
    odd = "a\x00b\x1b[31mc\ud800d\u2028e"
    attachment = AttachmentLink(odd, f"{PORTAL}/threads/7/attachments/3", 1)
    notice = convenience(
        subject=odd,
        practice_name=odd,
        items=(item(author=odd, text=odd, html=f"<p>{odd}</p>", attachments=(attachment,)),),
    )
    msg = parse(compose_convenience(notice, from_address=FROM))
    assert msg["Subject"] == "Re: a b [31mc d e"
    assert msg["From"].addresses[0].display_name == "a b [31mc d e"
    assert "c\ufffdd" in body(msg, "plain")


def test_convenience_email_carries_items_in_order_with_names_dates_and_attachment_links() -> None:
    first = item("Dana Reyes", "First message.")
    second = Item(
        author_name="Sam Ortiz",
        created_at=datetime(2026, 3, 2, 10, 15, tzinfo=UTC),
        text="Second message.",
        attachments=(
            AttachmentLink("Befund März.pdf", f"{PORTAL}/threads/7/attachments/3", 12_345),
        ),
    )
    built = compose_convenience(convenience(items=(first, second)), from_address=FROM)
    text, page = body(built, "plain"), body(built, "html")
    assert text.index("First message.") < text.index("Second message.")
    assert "Dana Reyes wrote on 2 March 2026, 09:05 UTC" in text
    assert "Sam Ortiz wrote on 2 March 2026, 10:15 UTC" in text
    assert f"Befund März.pdf (12 KB): {PORTAL}/threads/7/attachments/3" in text
    assert f'<a href="{PORTAL}/threads/7/attachments/3">Befund März.pdf</a>' in page
    assert page.index("First message.") < page.index("Second message.")
    assert parse(built)["Reply-To"] == REPLY_TO
    assert parse(built)["From"].addresses[0].display_name == "Harbour Therapy"


def test_html_part_shows_sanitised_message_html_and_escaped_text_otherwise() -> None:
    rich = item(text="fallback", html="<p>Take <b>two</b> <a href='https://ex.org/a'>steps</a></p>")
    plain = item(text="1 < 2 & <b>not bold</b>\nsecond line")
    page = body(compose_convenience(convenience(items=(rich, plain)), from_address=FROM), "html")
    assert "Take <b>two</b>" in page
    assert "1 &lt; 2 &amp; &lt;b&gt;not bold&lt;/b&gt;<br>\nsecond line" in page
    assert "fallback" not in page


def test_text_part_renders_html_only_messages_as_text() -> None:
    only_html = item(text="", html="<p>Hello <b>there</b></p><ul><li>one</li></ul>")
    text = body(compose_convenience(convenience(items=(only_html,)), from_address=FROM), "plain")
    assert "Hello there" in text
    assert "- one" in text


def test_reply_marker_tops_both_parts_and_cuts_the_quoted_email_from_a_reply() -> None:
    built = compose_convenience(convenience(), from_address=FROM)
    text, page = body(built, "plain"), body(built, "html")
    assert text.splitlines()[0] == REPLY_MARKER
    assert re.match(
        r"<!DOCTYPE html>\s*<html[^>]*>\s*<body>\s*<p>" + re.escape(html.escape(REPLY_MARKER)), page
    )
    # A reply written above the marker, with our email pasted below it unquoted.
    reply = "Tuesday works for me, thanks.\n\n" + text
    assert extract_reply(reply).text == "Tuesday works for me, thanks."


def test_recipient_with_non_ascii_domain_is_addressed_in_punycode() -> None:
    msg = parse(
        compose_convenience(convenience(to_address="anna@bücher.example"), from_address=FROM)
    )
    assert msg["To"].addresses[0].addr_spec == "anna@xn--bcher-kva.example"


def test_recipient_with_non_ascii_local_part_gets_an_smtputf8_message() -> None:
    built = compose_secure(secure(to_address="jörg@example.org"), from_address=FROM)
    assert isinstance(built.policy, email.policy.EmailPolicy) and built.policy.utf8
    # The standard library's parser cannot read UTF-8 headers back; the bytes tell.
    assert b"\r\nTo: j\xc3\xb6rg@example.org\r\n" in bytes(built)
    ascii_policy = compose_secure(secure(), from_address=FROM).policy
    assert isinstance(ascii_policy, email.policy.EmailPolicy) and not ascii_policy.utf8


@pytest.mark.parametrize(
    "address",
    ["", "no-at-sign", "two@@example.org", "a@b.example\r\nBcc: x@y.example", "a b@example.org"],
)
def test_unusable_recipient_address_is_refused_with_a_reason(address: str) -> None:
    with pytest.raises(ComposeError) as refused:
        compose_secure(secure(to_address=address), from_address=FROM)
    assert refused.value.reason == "bad_address"
    assert address == "" or address not in str(refused.value)


@pytest.mark.parametrize(
    "link",
    ["javascript:alert(1)", "data:text/html,x", "//evil.example/x", "https://ok.example/a b"],
)
def test_non_web_links_are_refused(link: str) -> None:
    with pytest.raises(ComposeError) as refused:
        compose_secure(secure(portal_link=link), from_address=FROM)
    assert refused.value.reason == "unsafe_link"
    attachment = AttachmentLink("x.pdf", link, 1)
    with pytest.raises(ComposeError):
        compose_convenience(
            convenience(items=(item(attachments=(attachment,)),)), from_address=FROM
        )


# -- hostile HTML -----------------------------------------------------------------------

XSS_VECTORS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    "<iframe src='javascript:alert(1)'></iframe>",
    "<object data='javascript:alert(1)'></object>",
    "<embed src='https://evil.example/x.swf'>",
    "<a href='javascript:alert(1)'>click</a>",
    "<a href=' jav&#x09;ascript:alert(1)'>click</a>",
    "<a href='JaVaScRiPt:alert(1)'>x</a>",
    "<a href='vbscript:msgbox(1)'>x</a>",
    "<a href='data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=='>x</a>",
    "<body onload=alert(1)>",
    "<div style='background:url(javascript:alert(1))'>x</div>",
    "<style>@import 'https://evil.example/x.css';</style>",
    "<link rel=stylesheet href='https://evil.example/x.css'>",
    "<meta http-equiv='refresh' content='0;url=javascript:alert(1)'>",
    "<base href='https://evil.example/'>",
    "<form action='https://evil.example/'><input name=x></form>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
    '"><script>alert(1)</script>',
    "'><img src=x onerror=alert(1)>",
    "<details open ontoggle=alert(1)>",
    "<video><source onerror=alert(1)></video>",
    "<!--<img src=x onerror=alert(1)>-->",
    "<p onmouseover=alert(1)>hover</p>",
    "<img src='https://tracker.example/pixel.gif' width=1 height=1>",
]

FORBIDDEN_TAGS = {
    "script", "iframe", "frame", "object", "embed", "applet", "img", "image", "svg", "math",
    "style", "link", "meta", "base", "form", "input", "video", "audio", "source", "picture",
}  # fmt: skip


class HtmlChecker(HTMLParser):
    """Records every element or attribute in an email's HTML part that could run or load."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.violations: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in FORBIDDEN_TAGS:
            self.violations.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on") or name in {"src", "srcset", "style", "background", "action"}:
                self.violations.append(f"{name} on <{tag}>")
            if name == "href":
                compact = re.sub(r"[\x00-\x20\x7f]", "", value or "").lower()
                if not compact.startswith(("https://", "http://", "mailto:")):
                    self.violations.append(f"href {value!r}")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)


def violations(page: str) -> list[str]:
    checker = HtmlChecker()
    checker.feed(page)
    checker.close()
    return checker.violations


def test_the_checker_sees_what_it_looks_for() -> None:
    assert violations("<p onclick=x><img src=y><a href=' javascript:z'>") == [
        "onclick on <p>",
        "<img>",
        "src on <img>",
        "href ' javascript:z'",
    ]


@pytest.mark.parametrize("vector", XSS_VECTORS)
def test_html_part_is_harmless_whatever_the_store_holds(vector: str) -> None:
    hostile = Item(
        author_name=f"Dana {vector}",
        created_at=SENT,
        text=f"text {vector}",
        html=f"<p>before</p>{vector}<p>after</p>",
        attachments=(
            AttachmentLink(f"file {vector}.pdf", f"{PORTAL}/threads/7/attachments/1", 10),
        ),
    )
    text_only = replace(hostile, html=None)
    notice = convenience(
        subject=f"Hi {vector}", practice_name=f"Practice {vector}", items=(hostile, text_only)
    )
    page = body(compose_convenience(notice, from_address=FROM), "html")
    assert violations(page) == []
    # The message is still there: the text-only copy shows the vector as harmless text.
    assert html.escape(f"text {vector}") in page
