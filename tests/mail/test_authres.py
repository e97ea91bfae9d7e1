"""Authentication-Results (RFC 8601): parsing, and the verdict for a trusted authserv-id."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.mail.authres import (
    AuthResults,
    AuthVerdict,
    MethodResult,
    authentication_verdict,
    parse_authentication_results,
)

MX = "mx.practice.example"


def test_a_typical_field_is_parsed() -> None:
    value = (
        f"{MX} 1;\r\n dkim=pass (1024-bit key) header.d=home.example header.s=s1 "
        'header.b="AbC/12+=";\r\n spf=pass smtp.mailfrom=client@home.example;\r\n'
        ' dmarc=pass (p=REJECT sp=REJECT dis=NONE) header.from="home.example"'
    )

    parsed = parse_authentication_results(value)

    assert parsed == AuthResults(
        authserv_id=MX,
        results=(
            MethodResult(
                "dkim",
                "pass",
                (("header.d", "home.example"), ("header.s", "s1"), ("header.b", "AbC/12+=")),
            ),
            MethodResult("spf", "pass", (("smtp.mailfrom", "client@home.example"),)),
            MethodResult("dmarc", "pass", (("header.from", "home.example"),)),
        ),
    )


def test_rfc_8601_examples_parse() -> None:
    # Appendix B of RFC 8601, in order: no results, a comment before the id, a version,
    # a reason, a method version.
    assert parse_authentication_results("example.org 1; none") == AuthResults("example.org", ())
    commented = parse_authentication_results(
        "example.com (comment); spf=pass smtp.mailfrom=example.net"
    )
    assert commented is not None and commented.results[0].method == "spf"
    reasoned = parse_authentication_results(
        'example.com; auth=pass (cram-md5) smtp.auth=sender@example.net; spf=fail reason="bad"'
    )
    assert reasoned is not None
    assert [(r.method, r.result) for r in reasoned.results] == [("auth", "pass"), ("spf", "fail")]
    assert reasoned.results[1].properties == ()  # a reason is not a property
    versioned = parse_authentication_results("example.com; dkim/1=pass header.i=@mail.example")
    assert versioned is not None and versioned.results[0].prop("header.i") == "@mail.example"


def test_a_field_without_an_authserv_id_is_none() -> None:
    assert parse_authentication_results("") is None
    assert parse_authentication_results("; dkim=pass") is None


def field(results: str, authserv_id: str = MX) -> str:
    return f"{authserv_id}; {results}"


@pytest.mark.parametrize(
    ("fields", "verdict"),
    [
        ([field("dmarc=pass header.from=home.example")], AuthVerdict.DMARC_PASS),
        ([field("dmarc=pass")], AuthVerdict.DMARC_PASS),
        ([field("dmarc=pass header.from=other.example")], AuthVerdict.NOT_PASSED),
        ([field("dmarc=fail header.from=home.example")], AuthVerdict.NOT_PASSED),
        ([field("dkim=pass header.d=home.example")], AuthVerdict.DKIM_PASS),
        ([field("dkim=pass header.d=HOME.example.")], AuthVerdict.DKIM_PASS),
        ([field("dkim=pass header.i=@home.example")], AuthVerdict.DKIM_PASS),
        ([field("dkim=pass header.d=mail.home.example")], AuthVerdict.NOT_PASSED),
        ([field("dkim=pass header.d=example")], AuthVerdict.NOT_PASSED),
        ([field("dkim=pass header.d=evil.example")], AuthVerdict.NOT_PASSED),
        ([field("spf=pass smtp.mailfrom=home.example")], AuthVerdict.NOT_PASSED),
        ([field("dmarc=pass", authserv_id="evil.example")], AuthVerdict.NO_TRUSTED_RESULT),
        ([], AuthVerdict.NO_TRUSTED_RESULT),
        # Only the top-most trusted field counts: a forged one below it changes nothing.
        ([field("dmarc=fail"), field("dmarc=pass")], AuthVerdict.NOT_PASSED),
        (
            [field("dmarc=pass", "other.example"), field("dkim=pass header.d=home.example")],
            AuthVerdict.DKIM_PASS,
        ),
    ],
)
def test_the_verdict_for_the_from_domain(fields: list[str], verdict: AuthVerdict) -> None:
    assert authentication_verdict(fields, [MX, "MX2.example"], "home.example") is verdict


def test_a_subdomain_sender_aligns_with_its_parents_signature() -> None:
    fields = [field("dkim=pass header.d=home.example")]

    assert authentication_verdict(fields, [MX], "mail.home.example").passed


def test_authserv_ids_compare_without_case() -> None:
    fields = [field("dmarc=pass", authserv_id="MX.Practice.Example")]

    assert authentication_verdict(fields, [" mx.practice.example "], "home.example").passed


def test_hostile_fields_cost_linear_time() -> None:
    hostile = [f"{MX}; " + "(" * 5000, f"{MX}; dkim=" + "\\" * 10_000, "x" * 100_000]
    started = time.perf_counter()

    verdict = authentication_verdict(hostile * 20, [MX], "home.example")

    assert verdict is AuthVerdict.NOT_PASSED
    assert time.perf_counter() - started < 5


@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused(value: str) -> None:
    parsed = parse_authentication_results(value)

    assert parsed is None or isinstance(parsed.authserv_id, str)
