"""HTML as line-oriented text, with the lines of quoted history marked.

Owns the rendering behind `bridge.mail.sanitize.html_to_text` (display and
notification text) and `bridge.mail.extract.extract_reply_html` (reply
extraction): paragraphs and line breaks survive, list items get "- " or
"1. " bullets with a hanging indent, table cells are joined with " | ", a link
reads "text (url)", `<pre>` keeps its lines, and `<blockquote>` becomes "> "
quoting (so that an answer written between quotes is still recognised), except
a borderless one, which only indents. The containers in which mail clients park
the quoted history (Gmail's `gmail_quote`, Yahoo's `yahoo_quoted`,
Thunderbird's `moz-cite-prefix`, Outlook's `divRplyFwdMsg` / `appendonsend` /
`OLK_SRC_BODY_SECTION`) are flagged line by line; a container that holds a
forwarded message rather than a quote is not flagged.

Two steps, run in this order by `bridge.mail.sanitize.render_text`:

* `defuse` reads raw markup the way this module wants it read: comments and
  declarations go, a `<` that does not open a complete tag is text, and a tag
  left open at the end of the input is dropped, as browsers drop it.
* `render` walks markup that nh3 has already normalised (balanced tags, no
  script, style or head, only safe link targets, but still with the `class`,
  `id`, `style` and `type` attributes that the history and quote rules read).

It deliberately does not sanitise, resolve CSS, or decide what part of the
text is the reply: it only renders and flags. Prefixes are capped at a fixed
nesting depth, so hostile nesting cannot make every line as long as the input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Final

from bridge.mail._quote_patterns import Separator, separator_kind

__all__ = ["LAYOUT_TAGS", "Rendered", "defuse", "render"]

_BLOCK: Final = frozenset(
    {
        "address", "article", "aside", "blockquote", "caption", "center", "dd", "details",
        "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form",
        "h1", "h2", "h3", "h4", "h5", "h6", "header", "li", "main", "nav", "ol", "p", "pre",
        "section", "summary", "table", "tbody", "tfoot", "thead", "tr", "ul",
    }
)  # fmt: skip
# Set apart by a blank line; every other block only starts a new line.
_PARAGRAPH: Final = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "dl"})
_CELLS: Final = frozenset({"td", "th"})
LAYOUT_TAGS: Final = _BLOCK | _CELLS | {"a", "br", "hr"}
"""Every element whose tags change the text; a normaliser must keep at least these."""

# HTML's white space is ASCII only: a no-break space is text, and so is U+3000.
_SPACES: Final = re.compile(r"[ \t\n\r\f]+")
_MAX_NESTING: Final = 8
_DECLARATION: Final = re.compile(r"<[!?][^<>]*>")
# `[^<>]` rather than `[^>]`: each scan stops at the next "<", so the pass stays linear.
_STRAY_LT: Final = re.compile(r"<(?!/?[A-Za-z][^<>]*>)")
_TAG_OPEN: Final = re.compile(r"</?[A-Za-z]")
_NO_BORDER: Final = re.compile(r"border(?:-left)?\s*:\s*(?:none|0)", re.IGNORECASE)
# A line's scope: outside every history container, after an Outlook reply header,
# or (0, 1, ...) the number of the outermost history container around it.
_REPLY: Final = -1
_TRUNCATED: Final = -2


@dataclass(frozen=True)
class Rendered:
    """The text of an HTML body: all of it, and the part outside history containers."""

    full: str
    reply: str


@dataclass(slots=True)
class _Open:
    """An element on the parser's stack and the state it changed on entry."""

    tag: str
    block: bool = False
    paragraph: bool = False
    quote: bool = False
    indent: bool = False
    history: bool = False
    pre: bool = False
    list: bool = False
    item: bool = False
    link: bool = False


@dataclass(slots=True)
class _List:
    ordered: bool
    count: int = 0
    hang: int = 0  # width of the current item's bullet, the indent of its other lines


@dataclass(slots=True)
class _Link:
    url: str
    text: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Blank:
    """A blank line asked for but not yet written: it only appears between two lines."""

    depth: int  # the shallowest quote depth since it was asked for
    scope: int


class _Renderer(HTMLParser):
    """Streams normalised HTML into `lines`, each with the scope it was written in.

    A line's scope is `_REPLY`, `_TRUNCATED` (after an Outlook reply header), or
    the number of the outermost history container around it. Containers are judged
    once, when the outermost one closes: `forwards[number]` says it held a forward.
    Nested containers thus cost nothing extra, and a forward quoted inside a quote
    stays history.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[tuple[str, int]] = []
        self.forwards: list[bool] = []
        self._container_start = 0  # index of the first line of the open outer container
        self._parts: list[str] = []
        self._parts_have_text = False
        self._stack: list[_Open] = []
        self._lists: list[_List] = []
        self._bullet = ""
        self._blank: _Blank | None = None
        self._link: _Link | None = None
        self._row_has_cell = False
        self._history = 0
        self._truncated = False
        self._quote = 0
        self._indent = 0
        self._pre = 0

    # -- output --------------------------------------------------------------

    def _scope(self) -> int:
        if self._truncated:
            return _TRUNCATED
        return len(self.forwards) - 1 if self._history else _REPLY

    def _ask_blank(self) -> None:
        if self.lines and self._blank is None:
            self._blank = _Blank(depth=self._quote, scope=self._scope())

    def _line(self, text: str) -> None:
        if not text.strip():
            self._ask_blank()
            return
        if self._blank is not None:
            # The blank line belongs to the outermost quote it separates.
            depth = min(self._blank.depth, self._quote, _MAX_NESTING)
            self.lines.append((("> " * depth).rstrip(), self._blank.scope))
            self._blank = None
        bullet, self._bullet = self._bullet, ""
        self.lines.append(((self._prefix(bullet) + text).rstrip(), self._scope()))

    def _prefix(self, bullet: str) -> str:
        # Capped, so that hostile nesting cannot make every line as long as the document.
        quote = min(self._quote, _MAX_NESTING)
        indent = min(self._indent, _MAX_NESTING)
        lists = self._lists[-_MAX_NESTING:]
        hang = "".join(" " * state.hang for state in lists[:-1])
        if lists:
            hang += bullet or " " * lists[-1].hang
        return "> " * quote + "    " * indent + hang

    def _flush(self, *, force: bool = False) -> None:
        """End the current line; `force` keeps it even when empty (a `<br>`)."""
        text = "".join(self._parts)
        self._parts = []
        self._parts_have_text = False
        if self._pre:
            for piece in text.split("\n"):
                self._line(piece.replace("\xa0", " "))
            return
        spacer = "\xa0" in text and not text.strip()  # "<p>&nbsp;</p>": a deliberate blank line
        text = _SPACES.sub(" ", text).strip(" ").replace("\xa0", " ")
        if text.strip() or force or spacer:
            self._line(text)

    def _paragraph_break(self) -> None:
        self._flush()
        self._ask_blank()

    # -- parser callbacks ----------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self._flush(force=True)
        elif tag == "hr":
            self._paragraph_break()
        else:
            self._open(tag, dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        # nh3 balances every tag, so the element on top is the one closing; a stray
        # end tag cannot occur, and would be ignored rather than trusted.
        if self._stack and self._stack[-1].tag == tag:
            self._close(self._stack.pop())

    def handle_data(self, data: str) -> None:
        self._parts.append(data)
        self._parts_have_text = self._parts_have_text or bool(data.strip())
        if self._link is not None:
            self._link.text.append(data)

    def close(self) -> None:
        super().close()
        while self._stack:
            self._close(self._stack.pop())
        self._flush()

    # -- element effects -----------------------------------------------------

    def _open(self, tag: str, attrs: dict[str, str | None]) -> None:
        entry = _Open(tag=tag, block=tag in _BLOCK)
        self._stack.append(entry)
        if entry.block:
            if tag in _PARAGRAPH and "msonormal" not in (attrs.get("class") or "").lower():
                entry.paragraph = True
                self._paragraph_break()
            else:
                self._flush()
        if "class" in attrs or "id" in attrs:
            self._enter_container(entry, attrs)
        if tag == "blockquote":
            if _NO_BORDER.search(attrs.get("style") or "") and attrs.get("type") != "cite":
                entry.indent = True
                self._indent += 1
            else:
                entry.quote = True
                self._quote += 1
        elif tag in ("ul", "ol"):
            entry.list = True
            self._lists.append(_List(ordered=tag == "ol"))
            if len(self._lists) == 1:
                entry.paragraph = True
                self._paragraph_break()
        elif tag == "li" and self._lists:
            entry.item = True
            state = self._lists[-1]
            state.count += 1
            self._bullet = f"{state.count}. " if state.ordered else "- "
            state.hang = len(self._bullet)
        elif tag == "pre":
            entry.pre = True
            self._pre += 1
        elif tag == "tr":
            self._row_has_cell = False
        elif tag in _CELLS:
            if self._row_has_cell and self._parts_have_text:
                self._parts.append(" | ")
            self._row_has_cell = True
        elif tag == "a" and (href := attrs.get("href")):
            entry.link = True
            self._link = _Link(url=href.strip())

    def _enter_container(self, entry: _Open, attrs: dict[str, str | None]) -> None:
        container = _history_container(attrs)
        if container == "truncate":
            self._flush()
            self._truncated = True
        elif container == "drop":
            self._flush()
            if not self._history:
                self.forwards.append(False)
                self._container_start = len(self.lines)
            entry.history = True
            self._history += 1

    def _close(self, entry: _Open) -> None:
        if entry.link:
            self._close_link()
        if entry.block:
            self._flush()
        if entry.quote:
            self._quote -= 1
            if self._blank is not None:
                self._blank.depth = min(self._blank.depth, self._quote)
        if entry.indent:
            self._indent -= 1
        if entry.pre:
            self._pre -= 1
        if entry.list and self._lists:
            self._lists.pop()
        if entry.item and self._lists:
            self._bullet = ""
            self._lists[-1].hang = 0
        if entry.paragraph:
            self._ask_blank()
        if entry.history:
            self._flush()
            self._history -= 1
            if not self._history:
                self.forwards[-1] = self._opens_with_forward(self._container_start)

    def _close_link(self) -> None:
        link, self._link = self._link, None
        if link is None:
            return
        text = " ".join("".join(link.text).split())
        if not text:
            self._parts.append(link.url)
            self._parts_have_text = True
        elif not _same_link(text, link.url):
            self._parts.append(f" ({link.url})")

    def _opens_with_forward(self, start: int) -> bool:
        """A history container that opens with a forward separator holds a forward: keep it."""
        for index in range(start, len(self.lines)):
            text = self.lines[index][0]
            if text.strip():
                return separator_kind(text) is Separator.FORWARD
        return False


def _history_container(attrs: dict[str, str | None]) -> str | None:
    """'truncate' for a node after which all is history, 'drop' for a history subtree."""
    ident = (attrs.get("id") or "").lower()
    classes = (attrs.get("class") or "").lower()
    if "divrplyfwdmsg" in ident or "appendonsend" in ident:
        return "truncate"
    if "olk_src_body_section" in ident or "yahoo_quoted" in ident:
        return "drop"
    if any(name in classes for name in ("gmail_quote", "yahoo_quoted", "moz-cite-prefix")):
        return "drop"
    if "gmail_signature" in classes:
        return "drop"
    return None


def _same_link(text: str, url: str) -> bool:
    """Whether a link's text already says its URL (then "(url)" would only repeat it)."""

    def plain(value: str) -> str:
        value = value.strip().casefold()
        for prefix in ("mailto:", "https://", "http://"):
            value = value.removeprefix(prefix)
        return value.removeprefix("www.").rstrip("/")

    return plain(text) == plain(url)


def _without_comments(html: str) -> str:
    """Drop `<!-- ... -->`; an unterminated comment runs to the end, as in browsers."""
    pieces: list[str] = []
    position = 0
    while (start := html.find("<!--", position)) != -1:
        pieces.append(html[position:start])
        end = html.find("-->", start + 4)
        if end == -1:
            return "".join(pieces)
        position = end + 3
    pieces.append(html[position:])
    return "".join(pieces)


def defuse(html: str) -> str:
    """Raw markup as this module reads it; every step is one linear pass.

    Comments, declarations and processing instructions carry no text, so they
    go. A tag still open at the end of the input (a truncated body, or
    thousands of unclosed `<a x='`) is dropped with the rest, as browsers drop
    it. Any other `<` that does not open a complete tag is text, and is
    escaped: "a<b and x <3" is what the writer typed, not an element.
    """
    html = _DECLARATION.sub("", _without_comments(html))
    unterminated = _TAG_OPEN.search(html, html.rfind(">") + 1)
    if unterminated is not None:
        html = html[: unterminated.start()]
    return _STRAY_LT.sub("&lt;", html)


def render(markup: str) -> Rendered:
    """Render normalised `markup`; `reply` leaves out what sits in history containers.

    Leading and trailing blank lines are left out, and blank lines never come
    two in a row.
    """
    renderer = _Renderer()
    renderer.feed(markup)
    renderer.close()
    forwards = renderer.forwards
    full = "\n".join(text for text, _ in renderer.lines)
    reply = "\n".join(
        text
        for text, scope in renderer.lines
        if scope == _REPLY or (scope >= 0 and forwards[scope])
    )
    return Rendered(full=full, reply=reply)
