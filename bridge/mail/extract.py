"""Reply extraction: what the person actually wrote in a reply email.

Owns the decision which part of a reply's body gets filed into the thread.
Given the text (or HTML) of a body it drops, in this order:

1. everything from the daemon's own marker line (`REPLY_MARKER`) down;
2. everything from the first *boundary* down: a signature delimiter (`-- `),
   a mobile footer ("Sent from my iPhone"), an original-message separator
   ("-----Original Message-----", an Outlook rule line), a quoted header block
   ("From: / Sent: / To: / Subject:", also translated), or an attribution
   line ("On ... wrote:", also translated and wrapped) followed by unquoted
   history. A *forwarded* message is the exception: when the first boundary
   introduces a forward, the writer deliberately sent it, so it is kept;
3. `>` quoted history: the quote block at the end (with its attribution),
   and a single quote block that the writer answered underneath (bottom
   posting). When the writer answers between two or more quote blocks
   (interleaved reply), or typed a quote without an attribution above their
   answer, the answered quotes are kept and only the attributions go.

What is left is returned with line endings normalised to `\\n`, trailing
whitespace stripped per line and leading/trailing blank lines removed. When
trimming would leave nothing although the mail had text, the full text is
returned and flagged (`Extracted.fallback`).

It deliberately does not parse MIME, pick a body part, decode charsets, sanitise
HTML, or log anything: strings in, a value out. The line vocabulary (which
lines are attributions, headers, separators, footers) lives in
`bridge.mail._quote_patterns`, the HTML rendering (shared with display text) in
`bridge.mail.sanitize.render_text`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from bridge.mail._quote_patterns import (
    MAX_ATTRIBUTION_CHARS,
    Attribution,
    HeaderLine,
    HeaderRole,
    Separator,
    attribution_strength,
    can_open_attribution,
    header_line,
    header_value_is_specific,
    is_dash_signoff,
    is_decoration,
    is_mobile_footer,
    is_signature_delimiter,
    opens_with_intro,
    separator_kind,
    split_inline_attribution,
)
from bridge.mail.sanitize import render_text

__all__ = ["REPLY_MARKER", "Extracted", "extract_reply", "extract_reply_html"]

REPLY_MARKER = "-- Reply above this line --"
"""The line the daemon puts into convenience notifications; all below it is ours."""

_QUOTED = re.compile(r"[ \t]{0,3}>")
_URLISH = re.compile(r"://|www\.", re.IGNORECASE)
_MARKER_NOISE = re.compile(r"[\W_]+")
_ATTRIBUTION_WINDOW = 6  # lines an attribution may be wrapped over, blank ones included
_HEADER_GAP = 2  # continuation lines allowed between two header lines of one block
_MAX_PASSES = 8


@dataclass(frozen=True)
class Extracted:
    """The part of a reply that gets filed."""

    text: str
    """What gets filed: the writer's own text, whitespace-normalised."""
    trimmed: bool
    """Something other than whitespace was removed."""
    fallback: bool
    """Trimming would have left nothing while the mail had text; `text` is the full text."""


def extract_reply(text: str, *, marker: str = REPLY_MARKER) -> Extracted:
    """Extract what the person wrote from a plain-text reply body."""
    lines = _normalise(text)
    return _verdict(_extract(lines, marker), lines)


def extract_reply_html(html: str, *, marker: str = REPLY_MARKER) -> Extracted:
    """Extract what the person wrote from an HTML reply body.

    History containers of known clients are dropped, the rest is rendered as
    text (blockquotes as `>` quotes) and read like a plain-text body, except
    that every quote block goes: in HTML, quoting is the mail client's
    `<blockquote>`, never something the writer typed. Answers written between
    quote blocks stay.
    """
    rendered = render_text(html)
    kept = _extract(_normalise(rendered.reply), marker, keep_answered_quotes=False)
    return _verdict(kept, _normalise(rendered.full))


def _verdict(kept: list[str], full: list[str]) -> Extracted:
    if kept:
        return Extracted(text="\n".join(kept), trimmed=kept != full, fallback=False)
    if full:
        return Extracted(text="\n".join(full), trimmed=False, fallback=True)
    return Extracted(text="", trimmed=False, fallback=False)


def _normalise(text: str) -> list[str]:
    """Lines with `\\n` endings and no trailing whitespace, without blank lines at either end."""
    # splitlines(), not split("\n"): vertical tab, form feed, NEL and the Unicode line and
    # paragraph separators end lines too, so no rule can match across one of them.
    lines = [line.rstrip() for line in text.splitlines()]
    return _strip_blank(lines)


def _strip_blank(lines: list[str]) -> list[str]:
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


def _extract(lines: list[str], marker: str, *, keep_answered_quotes: bool = True) -> list[str]:
    """Trim until nothing more is history.

    Dropping a quote block can bring two lines together that only now read as
    an attribution or a header block; another pass removes those too, so that
    extracting the result again changes nothing. Real replies settle after one
    or two passes; the bound keeps contrived input from costing more.
    """
    for _ in range(_MAX_PASSES):
        kept = _extract_once(lines, marker, keep_answered_quotes=keep_answered_quotes)
        if not kept or kept == lines:
            return kept
        lines = kept
    return lines


def _extract_once(lines: list[str], marker: str, *, keep_answered_quotes: bool) -> list[str]:
    text = _Text.read(_split_glued_attributions(_cut_at_marker(lines, marker)))
    cut, kind = _first_boundary(text)
    body = text.lines[:cut]
    tail = text.lines[cut:] if kind is _Boundary.FORWARD else []
    kept = _resolve_quotes(text, cut, keep_answered=keep_answered_quotes)
    if tail and kept and not body[-1].strip():
        kept.append("")  # keep the gap between the writer's note and the forward
    return _strip_blank(kept + tail)


# -- marker -------------------------------------------------------------------


def _marker_key(line: str) -> str:
    return _MARKER_NOISE.sub(" ", line.casefold()).strip()


def _cut_at_marker(lines: list[str], marker: str) -> list[str]:
    """Everything above the daemon's marker line, quoted or not, however decorated."""
    key = _marker_key(marker)
    if not key:
        return lines
    longest = 3 * len(marker) + 20
    probe = max(key.split(), key=len)  # a cheap test before the full comparison
    for index, line in enumerate(lines):
        if len(line) <= longest and probe in line.casefold() and _marker_key(line) == key:
            return lines[:index]
    return lines


# -- line classes ---------------------------------------------------------------


def _split_glued_attributions(lines: list[str]) -> list[str]:
    """Split a reply line with an attribution glued to its end ("ok On Mon, ... wrote:")."""
    result: list[str] = []
    for index, line in enumerate(lines):
        if line.strip() and not _QUOTED.match(line):
            following = _next_nonblank(lines, index + 1)
            if following is None or _QUOTED.match(lines[following]):
                split = split_inline_attribution(line)
                if split is not None:
                    result.extend(split)
                    continue
        result.append(line)
    return result


def _unclosed(text: str, opening: str, closing: str) -> bool:
    return text.count(opening) > text.count(closing)


def _quote_flags(lines: list[str]) -> list[bool]:
    """Which lines belong to `>` quoting.

    A `>` that closes an address wrapped from the line above ("Bob <" / "> wrote:")
    is not a quote. An unquoted line squeezed between two quoted lines that is the
    tail of a wrapped link is part of the quote.
    """
    flags: list[bool] = []
    for index, line in enumerate(lines):
        quoted = bool(_QUOTED.match(line))
        if quoted and index and not flags[-1] and _unclosed(lines[index - 1], "<", ">"):
            quoted = False
        flags.append(quoted)
    result = list(flags)
    for index in range(1, len(lines) - 1):
        if not flags[index] and flags[index - 1] and flags[index + 1] and lines[index].strip():
            above = lines[index - 1]
            if (
                _URLISH.search(lines[index])
                or _unclosed(above, "(", ")")
                or _unclosed(above, "<", ">")
                or _unclosed(above, "[", "]")
            ):
                result[index] = True
    return result


def _next_nonblank(lines: list[str], start: int) -> int | None:
    for index in range(start, len(lines)):
        if lines[index].strip():
            return index
    return None


@dataclass(frozen=True)
class _Span:
    start: int
    end: int  # inclusive
    strength: Attribution


def _attribution_at(lines: list[str], quoted: list[bool], start: int) -> _Span | None:
    """The shortest attribution starting at line `start`, possibly wrapped over lines."""
    first = lines[start]
    if len(first) > MAX_ATTRIBUTION_CHARS:
        return None
    strength = attribution_strength(first)
    if strength:
        return _Span(start, start, strength)
    if not can_open_attribution(first):
        return None
    parts = [first]
    for index in range(start + 1, min(len(lines), start + _ATTRIBUTION_WINDOW)):
        line = lines[index]
        if not line.strip():
            continue
        closes_address = line.lstrip().startswith(">") and _unclosed(" ".join(parts), "<", ">")
        if (quoted[index] and not closes_address) or opens_with_intro(line):
            return None
        if separator_kind(line) is not Separator.NONE:
            return None
        parts.append(line)
        strength = attribution_strength(" ".join(parts))
        if strength:
            return _Span(start, index, strength)
    return None


def _attribution_spans(lines: list[str], quoted: list[bool]) -> dict[int, _Span]:
    """Attributions by their first line, found top-down without overlaps."""
    spans: dict[int, _Span] = {}
    index = 0
    while index < len(lines):
        if not quoted[index] and lines[index].strip():
            span = _attribution_at(lines, quoted, index)
            if span is not None:
                spans[index] = span
                index = span.end + 1
                continue
        index += 1
    return spans


# -- boundaries -------------------------------------------------------------------


class _Boundary(Enum):
    NONE = "none"
    SIGNATURE = "signature"
    FOOTER = "footer"
    ORIGINAL = "original"
    FORWARD = "forward"
    HEADERS = "headers"
    ATTRIBUTION = "attribution"


@dataclass(frozen=True)
class _Text:
    """One pass's view of the lines: which are quoted, attributions, header lines."""

    lines: list[str]
    quoted: list[bool]
    spans: dict[int, _Span]  # attributions by first line
    headers: list[HeaderLine | None]

    @classmethod
    def read(cls, lines: list[str]) -> _Text:
        quoted = _quote_flags(lines)
        headers = [None if q else header_line(line) for line, q in zip(lines, quoted, strict=True)]
        return cls(lines, quoted, _attribution_spans(lines, quoted), headers)


def _header_block_at(text: _Text, start: int) -> bool:
    """Whether a quoted header block ("From: / Sent: / To: / Subject:") starts here.

    Two different header names are needed, one of them the sender or the date,
    and either a sender header or a machine-looking value (an address, a time),
    so that "Date: Monday" and "Time: 3 pm" in a message stay text.
    """
    first = text.headers[start]
    if first is None:
        return False
    names = set(first.names)
    roles = set(first.roles)
    specific = header_value_is_specific(first.value)
    gap = 0
    for index in range(start + 1, min(len(text.lines), start + 20)):
        line = text.lines[index]
        if not line.strip() or text.quoted[index]:
            break
        parsed = text.headers[index]
        if parsed is None:
            gap += 1
            if gap > _HEADER_GAP or separator_kind(line) is not Separator.NONE:
                break
            continue
        gap = 0
        names |= parsed.names
        roles |= parsed.roles
        specific = specific or header_value_is_specific(parsed.value)
    has_sender = HeaderRole.FROM in roles
    return len(names) >= 2 and (has_sender or HeaderRole.DATE in roles) and (has_sender or specific)


def _history_below(text: _Text, index: int, *, end_counts: bool) -> bool:
    """Whether the next line that is not blank starts history (or, if allowed, there is none)."""
    following = _next_nonblank(text.lines, index + 1)
    if following is None:
        return end_counts
    if text.quoted[following] or following in text.spans:
        return True
    line = text.lines[following]
    return (
        is_signature_delimiter(line)
        or separator_kind(line) is not Separator.NONE
        or is_mobile_footer(line)
        or _header_block_at(text, following)
    )


def _first_boundary(text: _Text) -> tuple[int, _Boundary]:
    """The first unquoted line from which everything below is history.

    A mobile footer only counts when it stands apart from the writer's text and
    nothing but history follows it, so that "Sent via mail to your office" in the
    middle of a message stays. A dash sign-off ("-Anna") starts the signature
    only right above the history: at the very end it is a plain sign-off, and in
    the middle a list item.
    """
    lines, quoted = text.lines, text.quoted
    for index, line in enumerate(lines):
        if quoted[index] or not line.strip():
            continue
        if is_signature_delimiter(line):
            return index, _Boundary.SIGNATURE
        apart = index == 0 or quoted[index - 1] or lines[index - 1].strip() in ("", "--")
        if apart and is_mobile_footer(line) and _history_below(text, index, end_counts=True):
            return index, _Boundary.FOOTER
        if apart and is_dash_signoff(line) and _history_below(text, index, end_counts=False):
            return index, _Boundary.SIGNATURE
        separator = separator_kind(line)
        if separator is Separator.FORWARD:
            return index, _Boundary.FORWARD
        if separator is Separator.ORIGINAL:
            return index, _Boundary.ORIGINAL
        if _header_block_at(text, index):
            return index, _Boundary.HEADERS
        span = text.spans.get(index)
        if span is not None and span.strength is Attribution.STRONG:
            following = _next_nonblank(lines, span.end + 1)
            if following is not None and not quoted[following]:
                return index, _Boundary.ATTRIBUTION
    return len(lines), _Boundary.NONE


# -- quote blocks -----------------------------------------------------------------


def _previous_nonblank(lines: list[str], index: int) -> int:
    while index >= 0 and not lines[index].strip():
        index -= 1
    return index


def _attribution_start(lines: list[str], by_end: dict[int, _Span], last: int) -> int:
    """First line of the attribution ending at `last`, with any stacked directly above it."""
    start = by_end[last].start
    above = _previous_nonblank(lines, start - 1)
    while above in by_end:
        start = by_end[above].start
        above = _previous_nonblank(lines, start - 1)
    return start


def _strip_trailing_history(body: list[str], quoted: list[bool], by_end: dict[int, _Span]) -> int:
    """The end of `body` once trailing quotes, attributions and rule lines are gone."""
    end = len(body)
    while True:
        while end and not body[end - 1].strip():
            end -= 1
        if not end:
            return 0
        last = end - 1
        if quoted[last]:
            while end and (quoted[end - 1] or not body[end - 1].strip()):
                end -= 1
        elif last in by_end:
            end = _attribution_start(body, by_end, last)
        elif is_decoration(body[last]) or separator_kind(body[last]) is not Separator.NONE:
            end = last
        else:
            return end


def _resolve_quotes(text: _Text, cut: int, *, keep_answered: bool) -> list[str]:
    """Drop quoted history above line `cut`, keeping quotes the writer answered in between.

    With `keep_answered` false every quote block goes (HTML, where quoting is the
    client's `<blockquote>`, never something the writer typed) and only the
    answers between them stay.
    """
    body, quoted = text.lines[:cut], text.quoted
    by_end = {span.end: span for span in text.spans.values() if span.end < cut}
    end = _strip_trailing_history(body, quoted, by_end)
    # Quote blocks that remain are followed by the writer's text: they were answered.
    # (first quoted line, first line after the block, first line of its attribution)
    blocks: list[tuple[int, int, int | None]] = []
    index = 0
    while index < end:
        if not quoted[index]:
            index += 1
            continue
        first = index
        while index < end and (quoted[index] or not body[index].strip()):
            index += 1
        above = _previous_nonblank(body, first - 1)
        start = _attribution_start(body, by_end, above) if above in by_end else None
        blocks.append((first, index, start))
    drop: set[int] = set()
    if not keep_answered:
        for first, after, start in blocks:
            drop.update(range(first if start is None else start, after))
    elif len(blocks) == 1:
        first, after, start = blocks[0]
        if start is not None:  # bottom posting: the one quote was history, not a citation
            drop.update(range(start, after))
    else:
        for first, _after, start in blocks:
            if start is not None:  # interleaved: keep the quotes, drop who-wrote-what
                drop.update(range(start, first))
    return [line for index, line in enumerate(body[:end]) if index not in drop]
