"""HTML mail bodies as plain text, with the quoted history marked.

Owns the conversion of an HTML reply into the line-oriented text that the reply
extractor reads: paragraphs and line breaks survive, list items get bullets,
`<blockquote>` becomes `> ` quoting (so that an answer written between quotes
is still recognised), and the containers in which mail clients park the
quoted history (Gmail's `gmail_quote`, Yahoo's `yahoo_quoted`, Thunderbird's
`moz-cite-prefix`, Outlook's `divRplyFwdMsg` / `appendonsend` /
`OLK_SRC_BODY_SECTION`) are flagged as history. A container that holds a
forwarded message rather than a quote is not flagged.

It deliberately does not sanitise HTML, resolve CSS, keep link targets or
images, or decide what part of the text is the reply: it only renders.
Built on the standard library's tolerant `html.parser`, so broken markup
renders as well as it can and never raises.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser

from bridge.mail._quote_patterns import Separator, separator_kind

_SKIP = frozenset({"script", "style", "head", "title", "template", "noscript", "svg", "xml"})
_HEAD_CHILDREN = frozenset({"title", "meta", "link", "style", "script", "base", "xml"})
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param"}
    | {"source", "track", "wbr"}
)
_BLOCK = frozenset(
    {"address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details"}
    | {"dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form"}
    | {"h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "html", "li", "main", "nav", "ol"}
    | {"p", "pre", "section", "summary", "table", "tbody", "tfoot", "thead", "tr", "ul"}
)
_PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "dl"})
_CELLS = frozenset({"td", "th"})
_SPACES = re.compile(r"[ \t\n\r\f\v]+")
_MAX_NESTING = 8
_DECLARATION = re.compile(r"<[!?][^<>]{0,2000}>")
_STRAY_LT = re.compile(r"<(?!/?[A-Za-z][^<>]{0,2000}>)")
_NO_BORDER = re.compile(r"border(?:-left)?\s*:\s*(?:none|0)", re.IGNORECASE)


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
    skip: bool = False
    history_from: int | None = None  # first line index when this is a history container
    pre: bool = False
    list_ordered: bool | None = None


@dataclass(slots=True)
class _ListState:
    ordered: bool
    count: int = 0


class _Renderer(HTMLParser):
    """Streams HTML into `lines`, each flagged when it sits in a history container."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[tuple[str, bool]] = []
        self._parts: list[str] = []
        self._stack: list[_Open] = []
        self._open_tags: Counter[str] = Counter()  # how often each tag is on the stack
        self._lists: list[_ListState] = []
        self._bullet = ""
        self._skip = 0
        self._history = 0
        self._truncated = False
        self._quote = 0
        self._indent = 0
        self._pre = 0
        self._last_blank = True

    # -- output --------------------------------------------------------------

    def _prefix(self) -> str:
        # Capped, so that hostile nesting cannot make every line as long as the document.
        quote = min(self._quote, _MAX_NESTING)
        indent = min(self._indent, _MAX_NESTING)
        lists = min(max(len(self._lists) - 1, 0), _MAX_NESTING)
        return "> " * quote + "    " * indent + "  " * lists

    def _emit(self, text: str) -> None:
        line = (self._prefix() + text).rstrip()
        blank = not line.strip(" >")
        if blank and self._last_blank:
            return
        self._last_blank = blank
        self.lines.append((line, self._truncated or self._history > 0))

    def _flush(self, *, force: bool = False) -> None:
        """End the current line; `force` emits it even when empty (a `<br>`)."""
        text = "".join(self._parts)
        self._parts = []
        if self._pre:
            for piece in text.replace("\xa0", " ").split("\n"):
                self._emit(self._take_bullet() + piece)
            return
        spacer = "\xa0" in text and not text.strip()  # "<p>&nbsp;</p>": a deliberate blank line
        text = text.strip(" ").replace("\xa0", " ")
        if text.strip() or force or spacer:
            self._emit(self._take_bullet() + text if text.strip() else "")

    def _take_bullet(self) -> str:
        bullet, self._bullet = self._bullet, ""
        return bullet

    def _paragraph_break(self) -> None:
        self._flush()
        self._emit("")

    # -- parser callbacks ----------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._stack and self._stack[-1].tag == "head" and tag not in _HEAD_CHILDREN:
            self._close_to("head")
        if tag in ("p", "li") and self._stack and self._stack[-1].tag == tag:
            self._close_to(tag)  # an unclosed <p> or <li> ends at the next one
        if tag == "br":
            if not self._skip:
                self._flush(force=True)
            return
        if tag in _CELLS and self._parts:
            self._parts.append(" ")
        if tag in _VOID:
            if tag == "hr" and not self._skip:
                self._paragraph_break()
            return
        self._open(tag, dict(attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._open_tags[tag]:
            self._close_to(tag)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self._parts.append(data if self._pre else _SPACES.sub(" ", data))

    def close(self) -> None:
        super().close()
        while self._stack:
            self._close_to(self._stack[-1].tag)
        self._flush()

    # -- element effects -----------------------------------------------------

    def _open(self, tag: str, attrs: dict[str, str | None]) -> None:
        entry = _Open(tag=tag, skip=tag in _SKIP)
        self._stack.append(entry)
        self._open_tags[tag] += 1
        if entry.skip:
            self._skip += 1
            return
        if self._skip:
            return
        entry.block = tag in _BLOCK
        if entry.block:
            if tag in _PARAGRAPH and "msonormal" not in (attrs.get("class") or "").lower():
                entry.paragraph = True
                self._paragraph_break()
            else:
                self._flush()
        container = _history_container(attrs) if "class" in attrs or "id" in attrs else None
        if container == "truncate":
            self._flush()
            self._truncated = True
        elif container == "drop":
            self._flush()
            entry.history_from = len(self.lines)
            self._history += 1
        if tag == "blockquote":
            if _NO_BORDER.search(attrs.get("style") or "") and attrs.get("type") != "cite":
                entry.indent = True
                self._indent += 1
            else:
                entry.quote = True
                self._quote += 1
        elif tag in ("ul", "ol"):
            entry.list_ordered = tag == "ol"
            self._lists.append(_ListState(ordered=tag == "ol"))
            if len(self._lists) == 1:
                entry.paragraph = True
                self._paragraph_break()
        elif tag == "li" and self._lists:
            state = self._lists[-1]
            state.count += 1
            self._bullet = f"{state.count}. " if state.ordered else "- "
        elif tag == "pre":
            entry.pre = True
            self._pre += 1

    def _close_to(self, tag: str) -> None:
        while self._stack:
            entry = self._stack.pop()
            self._open_tags[entry.tag] -= 1
            self._close(entry)
            if entry.tag == tag:
                return

    def _close(self, entry: _Open) -> None:
        if entry.skip:
            self._skip -= 1
            return
        if self._skip:
            return
        if entry.block:
            self._flush()
        if entry.quote:
            self._quote -= 1
        if entry.indent:
            self._indent -= 1
        if entry.pre:
            self._pre -= 1
        if entry.list_ordered is not None and self._lists:
            self._lists.pop()
        if entry.paragraph:
            self._emit("")  # the blank line after a paragraph sits outside its quote
        if entry.history_from is not None:
            self._flush()
            self._history -= 1
            self._unflag_forward(entry.history_from)

    def _unflag_forward(self, start: int) -> None:
        """A history container that opens with a forward separator holds a forward: keep it."""
        first = next((text for text, _ in self.lines[start:] if text.strip()), None)
        if first is not None and separator_kind(first) is Separator.FORWARD:
            self.lines[start:] = [(text, self._truncated) for text, _ in self.lines[start:]]


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


def _defuse(html: str) -> str:
    """Markup that `html.parser` reads in linear time, and that renders the same.

    The standard parser rescans to the end of its buffer for every construct it
    cannot close (a `<` without `>`, an unterminated comment or declaration),
    which makes hostile input quadratic. Comments, declarations and processing
    instructions carry no text, so they go; a `<` that does not open a complete
    tag is text, so it is escaped.
    """
    html = _DECLARATION.sub("", _without_comments(html))
    return _STRAY_LT.sub("&lt;", html)


def html_to_text(html: str) -> Rendered:
    """Render `html` as text; `reply` leaves out what sits in history containers."""
    renderer = _Renderer()
    renderer.feed(_defuse(html))
    renderer.close()
    full = "\n".join(text for text, _ in renderer.lines)
    reply = "\n".join(text for text, history in renderer.lines if not history)
    return Rendered(full=full, reply=reply)
