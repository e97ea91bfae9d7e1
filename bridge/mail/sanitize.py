"""Hostile HTML in, harmless HTML or readable text out.

Owns the allow-list that decides which HTML from an inbound email may be shown
(in the portal, or quoted in a convenience-mode notification), and the general
HTML -> plain-text rendering used for display and for a notification's text part.

`sanitize_html` is an allow-list built on nh3 (Ammonia, an html5ever parser):
what is not named here is removed. It keeps formatting and plain links; it drops
everything that executes (scripts, event handlers, `javascript:` URLs), everything
that loads something remote (images, CSS, frames, objects, forms, `<base>`), and
everything that styles or targets the host page (`style`, `class`, `id`, `target`).

Does not: extract the new part of a reply from the quoted history (that is
`bridge.mail.extract`), decode MIME parts or charsets (the caller hands in `str`),
or decide whether content may leave the store at all (that is `bridge.policy`).
Both functions are pure: a string in, a string out.
"""

from __future__ import annotations

import re
from html import escape, unescape
from html.parser import HTMLParser
from itertools import islice
from typing import Final

import nh3

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
_WHITESPACE: Final = re.compile(r"\s+")


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

    Block elements start new lines (paragraphs, headings, quotes, lists and tables
    are separated by a blank line), `<br>` is a newline, list items start with
    "- " (indented when nested), quoted lines start with "> ", a link reads
    "text (url)" unless the text already is the URL, entities are decoded, the
    content of script, style, head, title and template is dropped, whitespace
    inside a paragraph collapses to single spaces and `<pre>` is kept as is.
    Links with a scheme other than http, https or mailto show only their text.

    The markup is first normalised by nh3, so the standard library parser only ever
    walks well-formed HTML: on hostile markup (thousands of unclosed `<a x='`) the
    3.11 `html.parser` needs quadratic time.
    """
    html = _LONE_SURROGATE.sub("\ufffd", html)
    if _has_too_many_tags(html):
        return _markup_free_text(html)
    renderer = _TextRenderer()
    renderer.feed(_TEXT_CLEANER.clean(html))
    renderer.close()
    return renderer.text()


def _has_too_many_tags(html: str) -> bool:
    return next(islice(_START_TAG.finditer(html), MAX_TAGS, None), None) is not None


def _markup_free_text(html: str) -> str:
    """The words of pathological markup: tags dropped, entities decoded, no structure."""
    return " ".join(unescape(_ANY_TAG.sub(" ", html)).split())


# Elements that end the current line when they open or close.
_LINE_BLOCKS: Final = frozenset(
    {
        "address", "article", "aside", "center", "dd", "details", "dialog", "div",
        "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "li",
        "main", "nav", "section", "summary", "tr", "caption",
    }
)  # fmt: skip
# Elements that are set apart by a blank line.
_PARAGRAPH_BLOCKS: Final = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "dl", "hr"}
)
_LISTS: Final = frozenset({"ul", "ol"})
_CELLS: Final = frozenset({"td", "th"})

# Normalises markup for `_TextRenderer`: every tag that affects the layout of text
# is kept (without attributes, except a link's URL); invisible content (script,
# style, title, template, ...) goes with its tags, and `<head>` cannot occur in
# nh3's output.
_TEXT_CLEANER: Final = nh3.Cleaner(
    tags=set(_ALLOWED_TAGS | _LINE_BLOCKS | _PARAGRAPH_BLOCKS),
    clean_content_tags=set(_DROPPED_WITH_CONTENT),
    attributes={"*": set(), "a": {"href"}},
    link_rel=None,
    url_schemes=set(SAFE_URL_SCHEMES),
    url_relative="deny",
)


class _TextRenderer(HTMLParser):
    """Collects lines of text while walking the tags; see `html_to_text`.

    Expects markup normalised by `_TEXT_CLEANER`: balanced tags, no script, no
    `<head>`, and `<pre>` content from which HTML's leading newline is already gone.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._lines: list[str] = []
        self._fragments: list[str] = []  # the line being built
        self._raw_line = False  # the line being built came from <pre>
        self._separation = 0  # 1: start a new line, 2: leave a blank line first
        self._separation_depth = 0  # the shallowest quote depth since the last line
        self._pre = 0
        self._quote_depth = 0
        self._lists = 0
        self._bullet_pending = False
        self._items = 0  # open <li> elements, never more than open lists
        self._link: tuple[str, list[str]] | None = None
        self._row_has_cell = False

    # -- parser callbacks -------------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self._end_line(force=True)
        elif tag == "a":
            self._close_link()
            href = next((value for name, value in attrs if name == "href" and value), None)
            self._link = (href.strip(), []) if href and is_safe_url(href) else None
        elif tag in _CELLS:
            if self._row_has_cell and self._fragments:
                self._fragments.append(" | ")
            self._row_has_cell = True
        else:
            self._start_block(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._close_link()
        else:
            self._end_block(tag)

    def handle_data(self, data: str) -> None:
        if self._pre:
            self._pre_data(data)
            return
        text = _WHITESPACE.sub(" ", data)
        self._fragments.append(text)
        if self._link is not None:
            self._link[1].append(text)

    # -- blocks -----------------------------------------------------------------

    def _start_block(self, tag: str) -> None:
        if tag in _PARAGRAPH_BLOCKS or (tag in _LISTS and not self._lists):
            self._end_line(blank=True)
        elif tag in _LINE_BLOCKS or tag in _LISTS:
            self._end_line()
        if tag == "blockquote":
            self._quote_depth += 1
        elif tag == "pre":
            self._pre += 1
        elif tag in _LISTS:
            self._lists += 1
        elif tag == "li":
            self._bullet_pending = True
            # `</li>` is optional: a new item in the same list closes the previous one.
            self._items = min(self._items + 1, self._lists)
        elif tag == "tr":
            self._row_has_cell = False

    def _end_block(self, tag: str) -> None:
        if tag in _PARAGRAPH_BLOCKS or (tag in _LISTS and self._lists <= 1):
            self._end_line(blank=True)
        elif tag in _LINE_BLOCKS or tag in _LISTS:
            self._end_line()
        if tag == "blockquote":
            self._quote_depth = max(0, self._quote_depth - 1)
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
        elif tag in _LISTS:
            self._lists = max(0, self._lists - 1)
            self._items = min(self._items, self._lists)
        elif tag == "li":
            self._items = max(0, self._items - 1)

    def _pre_data(self, data: str) -> None:
        first, *rest = data.replace("\r\n", "\n").split("\n")
        self._fragments.append(first)
        self._raw_line = True
        for line in rest:
            self._end_line(force=True)
            self._fragments.append(line)
            self._raw_line = True

    def _close_link(self) -> None:
        if self._link is None:
            return
        url, fragments = self._link
        self._link = None
        text = _WHITESPACE.sub(" ", "".join(fragments)).strip()
        if not text:
            self._fragments.append(url)
        elif not _same_link(text, url):
            self._fragments.append(f" ({url})")

    # -- lines ------------------------------------------------------------------

    def _end_line(self, *, blank: bool = False, force: bool = False) -> None:
        """Finish the line being built; `force` keeps it even when empty (a `<br>`)."""
        joined = "".join(self._fragments)
        text = joined.rstrip() if self._raw_line else _WHITESPACE.sub(" ", joined).strip()
        self._fragments = []
        self._raw_line = False
        if text or force:
            if self._lines and self._separation == 2:
                # The blank line belongs to the outermost quote it separates.
                depth = min(self._quote_depth, self._separation_depth)
                self._lines.append(("> " * depth).rstrip())
            self._lines.append(self._prefix(bullet=bool(text)) + text)
            self._separation = 0
            self._separation_depth = self._quote_depth
        self._separation = max(self._separation, 2 if blank else 1)
        self._separation_depth = min(self._separation_depth, self._quote_depth)

    def _prefix(self, *, bullet: bool) -> str:
        prefix = "> " * self._quote_depth
        if self._items:
            indent = "  " * (self._items - 1)
            if bullet and self._bullet_pending:
                self._bullet_pending = False
                return f"{prefix}{indent}- "
            return f"{prefix}{indent}  "
        return prefix

    def text(self) -> str:
        self._close_link()
        self._end_line()
        lines = [line.rstrip() for line in self._lines]
        while lines and not lines[0].strip(" >"):
            lines.pop(0)
        while lines and not lines[-1].strip(" >"):
            lines.pop()
        return "\n".join(_squeeze_blank_lines(lines))


def _squeeze_blank_lines(lines: list[str]) -> list[str]:
    """Never more than one blank line in a row."""
    squeezed: list[str] = []
    for line in lines:
        if not line.strip(" >") and squeezed and not squeezed[-1].strip(" >"):
            continue
        squeezed.append(line)
    return squeezed


def _same_link(text: str, url: str) -> bool:
    """Whether a link's text already says its URL (then "(url)" would only repeat it)."""

    def plain(value: str) -> str:
        value = value.strip().casefold()
        for prefix in ("mailto:", "https://", "http://"):
            value = value.removeprefix(prefix)
        return value.removeprefix("www.").rstrip("/")

    return plain(text) == plain(url)
