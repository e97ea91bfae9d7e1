"""Hostile HTML in, harmless HTML or readable text out.

Owns the allow-list that decides which HTML from an inbound email may be shown
(in the portal, or quoted in a convenience-mode notification), and the one
HTML -> plain-text pipeline: `html_to_text` for display and a notification's text
part, `render_text` for reply extraction. Both guard against hostile markup here
(lone surrogates, `MAX_TAGS`, nh3 normalisation) and leave the rendering itself to
`bridge.mail._html_text`.

`sanitize_html` is an allow-list built on nh3 (Ammonia, an html5ever parser):
what is not named here is removed. It keeps formatting and plain links; it drops
everything that executes (scripts, event handlers, `javascript:` URLs), everything
that loads something remote (images, CSS, frames, objects, forms, `<base>`), and
everything that styles or targets the host page (`style`, `class`, `id`, `target`).

Does not: extract the new part of a reply from the quoted history (that is
`bridge.mail.extract`), decode MIME parts or charsets (the caller hands in `str`),
or decide whether content may leave the store at all (that is `bridge.policy`).
Every function is pure: a string in, a value out.
"""

from __future__ import annotations

import re
from html import escape, unescape
from itertools import islice
from typing import Final

import nh3

from bridge.mail._html_text import LAYOUT_TAGS, Rendered, defuse, render

__all__ = [
    "MAX_TAGS",
    "SAFE_URL_SCHEMES",
    "Rendered",
    "html_to_text",
    "is_safe_url",
    "render_text",
    "sanitize_html",
    "url_scheme",
]

SAFE_URL_SCHEMES: Final = frozenset({"http", "https", "mailto"})

# Formatting and structure only. No <img>: a remote image is a tracking pixel that
# tells the sender when, where and on which device the message was read; a `data:`
# image is not worth its parsing risk. So no images at all, of any kind.
_ALLOWED_TAGS: Final = frozenset(
    {
        "p", "br", "div", "span", "b", "strong", "i", "em", "u", "s",
        "blockquote", "pre", "code", "ul", "ol", "li",
        "h1", "h2", "h3", "h4", "h5", "h6",
        "table", "thead", "tbody", "tfoot", "caption", "tr", "td", "th",
        "a", "hr", "sub", "sup",
    }
)  # fmt: skip

# Elements removed together with their content. Script and style text would
# otherwise survive as visible garbage; the others hold markup or fallback text that
# is either never shown to a reader or exists only as a parsing trick (the
# `<noscript><p title="</noscript><img ...>">` mutation-XSS family).
_DROPPED_WITH_CONTENT: Final = frozenset(
    {"script", "style", "template", "title", "noscript", "iframe", "noembed", "noframes", "xmp"}
)

_ALLOWED_ATTRIBUTES: Final = {
    # Named explicitly: Ammonia would otherwise add its own generic defaults.
    # `lang` picks the right glyphs for CJK text and is free of side effects.
    "*": {"lang"},
    "a": {"href", "title"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
    "ol": {"start"},
}

# Text direction matters for Arabic and Hebrew mail; only the three real values pass.
_DIRECTION: Final = {"dir": {"ltr", "rtl", "auto"}}

_CLEANER: Final = nh3.Cleaner(
    tags=set(_ALLOWED_TAGS),
    clean_content_tags=set(_DROPPED_WITH_CONTENT),
    attributes=_ALLOWED_ATTRIBUTES,
    tag_attribute_values=dict.fromkeys(_ALLOWED_TAGS, _DIRECTION),
    # Ammonia adds `rel` to every <a>; `rel` and `target` from the input are dropped
    # because neither is in `_ALLOWED_ATTRIBUTES`.
    link_rel="noopener noreferrer nofollow",
    url_schemes=set(SAFE_URL_SCHEMES),
    # A relative URL in an email has no base of its own; shown in the portal it
    # would resolve against the portal's origin, so it is removed.
    url_relative="deny",
    strip_comments=True,
)

# Normalises markup for `render`: every tag that affects the layout of text is kept,
# with only the attributes `render` reads and only safe link targets; invisible
# content goes with its tags, and `<head>` cannot occur in nh3's output.
_TEXT_CLEANER: Final = nh3.Cleaner(
    tags=set(_ALLOWED_TAGS | LAYOUT_TAGS),
    clean_content_tags=set(_DROPPED_WITH_CONTENT | {"svg", "xml"}),
    attributes={"*": {"class", "id"}, "a": {"href"}, "blockquote": {"style", "type"}},
    link_rel=None,
    url_schemes=set(SAFE_URL_SCHEMES),
    url_relative="deny",
)

# Python strings from `surrogateescape` decoding can hold lone surrogates; nh3 must
# hand the text to Rust as UTF-8 and raises on them, so they become U+FFFD first.
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# html5ever (inside nh3) spends time in proportion to tags x nesting depth, so
# 100 000 nested <div>s take half a minute. Markup with more start tags than this is
# shown as unformatted text instead; real mail stays far below it.
MAX_TAGS: Final = 10_000
_START_TAG: Final = re.compile(r"<[A-Za-z]")
# `[^<>]` rather than `[^>]`: an unclosed "<" fails at the next "<", keeping it linear.
_ANY_TAG: Final = re.compile(r"<[^<>]*>")
# What browsers ignore inside a URL scheme: ASCII whitespace and control characters.
_URL_IGNORED: Final = re.compile("[\x00-\x20\x7f]")


def sanitize_html(html: str) -> str:
    """Return `html` reduced to the allow-list: safe to show, loads nothing remote.

    Kept: paragraphs, line breaks, emphasis, quotes, code, lists, headings, tables,
    rules, sub/superscript, and links with an `http`, `https` or `mailto` URL (every
    link gets `rel="noopener noreferrer nofollow"`; `target` is removed). Removed:
    every other element (script, style, iframe, object, embed, form, svg, math,
    base, meta, link, img, ...), event handlers, `style`, `class` and `id`
    attributes, relative and non-allow-listed URLs. Images are removed entirely:
    remote images are tracking pixels. Text is kept and re-escaped.

    Markup with more than `MAX_TAGS` start tags comes back as escaped, unformatted
    text (see `MAX_TAGS` for why).
    """
    html = _LONE_SURROGATE.sub("\ufffd", html)
    if _has_too_many_tags(html):
        return escape(_markup_free_text(html), quote=False)
    return _CLEANER.clean(html)


def url_scheme(url: str) -> str | None:
    """The scheme of `url` as a browser would read it (lower-case), or None if relative.

    Whitespace and control characters are ignored the way browsers ignore them, so
    `" java\\tscript:"` reads as `javascript`.
    """
    compact = _URL_IGNORED.sub("", url)
    scheme, colon, _ = compact.partition(":")
    if not colon or not scheme or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        return None
    return scheme.lower()


def is_safe_url(url: str) -> bool:
    """Whether `url` is absolute with an allow-listed scheme (http, https, mailto)."""
    return url_scheme(url) in SAFE_URL_SCHEMES


def html_to_text(html: str) -> str:
    """A readable plain-text rendering of `html`, for display and for text/plain parts.

    Block elements start new lines (paragraphs, headings, quotes, top-level lists
    and rules are separated by a blank line; Outlook's `MsoNormal` paragraphs are
    not), `<br>` is a newline, list items start with "- " or "1. " and their other
    lines hang under the text, quoted lines start with "> " (a borderless
    `<blockquote>` only indents), table cells are joined with " | ", a link reads
    "text (url)" unless the text already is the URL, entities are decoded,
    invisible content (script, style, head, title, template, svg) is dropped,
    white space inside a paragraph collapses to single spaces (a no-break space is
    kept) and `<pre>` is kept as is. A `<` that opens no complete tag is text.
    Links with a scheme other than http, https or mailto show only their text.
    """
    return render_text(html).full


def render_text(html: str) -> Rendered:
    """`html_to_text`, also without the lines inside mail clients' history containers.

    The one pipeline behind every HTML -> text conversion. `defuse` reads the raw
    markup in one linear pass; past `MAX_TAGS` only the words remain; otherwise nh3
    normalises it, so the standard library parser in `render` only ever walks
    well-formed HTML (on hostile markup the 3.11 `html.parser` needs quadratic
    time). History containers are found by `class` and `id`, which this normaliser,
    unlike `sanitize_html`, keeps (with a blockquote's `style` and `type`): its
    output is only read by `render`, never shown.
    """
    html = defuse(_LONE_SURROGATE.sub("\ufffd", html))
    if _has_too_many_tags(html):
        words = _markup_free_text(html)
        return Rendered(full=words, reply=words)
    return render(_TEXT_CLEANER.clean(html))


def _has_too_many_tags(html: str) -> bool:
    return next(islice(_START_TAG.finditer(html), MAX_TAGS, None), None) is not None


def _markup_free_text(html: str) -> str:
    """The words of pathological markup: tags dropped, entities decoded, no structure."""
    return " ".join(unescape(_ANY_TAG.sub(" ", html)).split())
