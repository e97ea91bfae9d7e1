"""Line patterns that mark where quoted history, signatures and footers begin.

Owns the vocabulary of reply extraction: what an attribution line ("On ... wrote:"
and its translations) looks like, which header names open an Outlook-style
header block, which separator lines introduce an original or forwarded message,
and which one-line footers mobile clients append. Every function here judges
one line, or one short run of joined lines, and returns a verdict.

It deliberately does not decide what to cut: the structure of a whole reply
(quote blocks, bottom posting, interleaving) is `bridge.mail.extract`'s job.
All patterns use bounded quantifiers and are only applied to short strings, so
a hostile line cannot make them backtrack for long.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

# Attributions and header lines are short; anything longer is prose.
MAX_ATTRIBUTION_CHARS = 400
MAX_HEADER_LINE_CHARS = 2000
MAX_FOOTER_CHARS = 80

_EMAIL = re.compile(r"[\w.+'-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")
_DIGIT = re.compile(r"\d")
_TIME = re.compile(r"\d{1,2}[:.]\d{2}")
_DATE = re.compile(
    r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}"
    r"|\d{1,2}\.? ?[^\W\d_]{3,10}\.?,? \d{4}"
    r"|[^\W\d_]{3,10}\.? \d{1,2},? \d{4}"
    r"|\d{4}年\d{1,2}月\d{1,2}日"
)
_DATE_START = re.compile(r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b")
_DATE_OPEN = re.compile(r"\d{1,4}[./-]\d{1,2}\b|\d{1,2}\.? ?[^\W\d_]{3,10}\.? \d{2,4}\b|\d{4}年")

# Verbs that close an attribution ("... wrote:"), in the languages we meet most.
# Latin-script verbs need a word boundary before them; CJK verbs follow a name
# or a date directly.
_LATIN_VERBS = (
    r"wrote|writes|sent|schrieb|geschrieben|a écrit|écrit|escribió|escribio|escreveu"
    r"|ha scritto|scrisse|schreef|geschreven|skrev|skrivit|kirjoitti"
    r"|napisał\(a\)|napisała|napisał|napsal\(a\)|napsala|napsal"
    r"|написал\(а\)|написала|написал|написав|пишет|yazdı|írta|đã viết|viết"
    r"|έγραψε|a scris|va escriure"
)
_CJK_VERBS = r"写道|寫道|書きました|작성"
_VERB_AT_END = re.compile(rf"(?:\b(?:{_LATIN_VERBS})|{_CJK_VERBS})\s{{0,3}}[:：]$", re.IGNORECASE)
_VERB_ANYWHERE = re.compile(rf"(?:\b(?:{_LATIN_VERBS})\b|{_CJK_VERBS})", re.IGNORECASE)
_VERB_BARE_AT_END = re.compile(
    rf"(?:\b(?:{_LATIN_VERBS})|{_CJK_VERBS})\s{{0,3}}[:：]?$", re.IGNORECASE
)

# Words that open an attribution ("On", "Am", "Le", "El", ...). Case-sensitive on
# purpose: a wrapped sentence continuing with "on 3 May" must not look like one.
_INTRO = re.compile(
    r"(?:On|Am|Le|El|Em|Op|Il(?: giorno)?|Den|På|Dne|W dniu|В|Vào|在|Στις|Pe|Kl\.)(?=[\s,])"
)
_WEEKDAY_OR_MONTH = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun|Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]{0,7}\b"
)
_DASH_WRAPPED = re.compile(r"-{2,20}\s{0,5}(.{1,300}?)\s{0,5}-{2,20}")


class Attribution(IntEnum):
    """How sure we are that a (joined) line introduces quoted history."""

    NONE = 0
    WEAK = 1  # "26.06.2014, 14:41, Bob <bob@example.com>:" — trusted next to a quote
    STRONG = 2  # "On Mon, 5 Apr 2021 at 10:00, Bob wrote:" — trusted anywhere


def collapse(text: str) -> str:
    """Whitespace runs to one space, without leading/trailing whitespace."""
    return " ".join(text.split())


def can_open_attribution(line: str) -> bool:
    """Whether `line` may be the first line of an attribution wrapped over several lines."""
    head = line.lstrip(" \t*-")
    return bool(_INTRO.match(head) or _DATE_OPEN.match(head) or _WEEKDAY_OR_MONTH.match(head))


def opens_with_intro(line: str) -> bool:
    """Whether `line` starts with an attribution's opening word ("On", "Am", ...)."""
    return bool(_INTRO.match(line.lstrip(" \t*-")))


def _tail(text: str, size: int = 48) -> str:
    """The end of `text`, starting at a word boundary, for patterns anchored at the end."""
    if len(text) <= size:
        return text
    tail = text[-size:]
    space = tail.find(" ")
    return tail[space:] if space != -1 else tail


def attribution_strength(text: str) -> Attribution:
    """Judge one line, or several lines joined with spaces, as an attribution."""
    if not text.rstrip().endswith((":", "：", "-", ">")):  # every form ends in one of these
        return Attribution.NONE
    s = collapse(text)
    if not s or len(s) > MAX_ATTRIBUTION_CHARS:
        return Attribution.NONE
    if s.startswith("--") and s.endswith("--"):
        wrapped = _DASH_WRAPPED.fullmatch(s)
        if wrapped and _VERB_BARE_AT_END.search(_tail(wrapped.group(1))):
            # "---- Bob wrote ----", "-----On 1/2/2003, Bob wrote-----"
            return Attribution.STRONG
    s = s.lstrip("-* ").rstrip("-* ")
    ends_colon = s.endswith((":", "："))
    if not ends_colon and not s.endswith(">"):
        return Attribution.NONE
    has_email = bool(_EMAIL.search(s))
    without_email = _EMAIL.sub(" ", s) if has_email else s
    has_digit = bool(_DIGIT.search(without_email))
    if not ends_colon:
        # "2011/4/7 Bob <bob@example.com>" (older Gmail, no colon)
        dated_start = has_email and _DATE_START.match(s)
        return Attribution.WEAK if dated_start else Attribution.NONE
    # Mail clients date their attributions. An address and a number, or an opening
    # word and a clock time, tell "On 3 May, 10:02, Bob wrote:" from "On 3 May my
    # doctor wrote:" or "my colleague jane@example.org wrote:", which a client may type.
    dated = (has_email and has_digit) or (
        bool(_INTRO.match(s)) and bool(_TIME.search(without_email))
    )
    if dated and _VERB_AT_END.search(_tail(s)):
        return Attribution.STRONG
    if dated and _VERB_ANYWHERE.search(s):
        # "Am 5. Mai 2021 um 10:00 schrieb Bob <bob@example.com>:"
        return Attribution.STRONG
    if has_email and (has_digit or _VERB_AT_END.search(_tail(s))):
        return Attribution.WEAK
    if _DATE.search(without_email) and _TIME.search(without_email):
        return Attribution.WEAK
    if _INTRO.match(s) and _VERB_AT_END.search(_tail(s)):
        # "On Monday, Dr. Rivers wrote:" carries no date a client would print, so it is
        # only weak: it goes with a quote block right below it, never on its own.
        return Attribution.WEAK
    return Attribution.NONE


def split_inline_attribution(line: str) -> tuple[str, str] | None:
    """Split "text On <date>, Bob wrote:" into the writer's text and the attribution.

    Some clients glue the attribution to the last line of the reply. Only a
    strong attribution that opens with an intro word qualifies.
    """
    if len(line) > MAX_ATTRIBUTION_CHARS * 2 or not _VERB_AT_END.search(_tail(line)):
        return None
    for match in _INTRO.finditer(line):
        start = match.start()
        if start == 0 or not (line[start - 1].isspace() or line[start - 1] == "-"):
            continue
        prefix = line[:start].rstrip(" \t-")
        suffix = line[start:]
        if prefix and attribution_strength(suffix) is Attribution.STRONG:
            return prefix, suffix
    return None


# Header names of quoted header blocks, by role. Outlook translates them.
_FROM_NAMES = (
    "From|Von|De|Da|Van|Fra|Från|Od|От|Lähettäjä|Feladó|Kimden|Remitente|Mittente"
    "|Afzender|Expéditeur|Avsändare|差出人|发件人|發件人|寄件者|보낸 사람"
)
_DATE_NAMES = (
    "Sent|Date|Gesendet|Datum|Envoyé|Envoyé le|Enviado|Enviado el|Enviada em|Inviato"
    "|Data|Verzonden|Sendt|Skickat|Wysłano|Wysłane|Отправлено|Дата|Lähetetty"
    "|Päivämäärä|Fecha|Elküldve|Gönderildi|Odesláno"
    "|送信日時|日付|发送时间|發送時間|日期|時間|보낸 날짜"
)
_OTHER_NAMES = (
    "To|An|À|A|Para|Aan|Til|Till|Do|Кому|Vastaanottaja|Címzett|Kime|Komu|Destinatario"
    "|Cc|Bcc|Kopie|Copie|CC|Копия|Kopia|Kopio|Másolat|Kopi|Kopie an"
    "|Subject|Betreff|Objet|Asunto|Oggetto|Assunto|Onderwerp|Emne|Ämne|Temat|Тема|Aihe"
    "|Tárgy|Konu|Předmět|件名|主题|主旨|제목|Reply-To|Antwort an|宛先|收件人|收件者|받는 사람"
)
_HEADER = re.compile(
    rf"[ \t]{{0,8}}\*{{0,2}}(?P<name>{_FROM_NAMES}|{_DATE_NAMES}|{_OTHER_NAMES})\*{{0,2}}"
    r"[ \t]?[:：]\*{0,2}(?:[ \t\xa0]|$)(?P<value>.*)",
    re.IGNORECASE,
)
_MULTI_LETTER_NAMES = "|".join(
    name for name in f"{_FROM_NAMES}|{_DATE_NAMES}|{_OTHER_NAMES}".split("|") if len(name) > 1
)
# A header glued onto the previous one's line ("From: bob@example.com Date: Mon, ..."),
# as HTML renders when the client put them in one block without line breaks.
_GLUED_HEADER = re.compile(
    rf"(?<=\s)\*{{0,2}}({_MULTI_LETTER_NAMES})\*{{0,2}}[ \t]?[:：]\*{{0,2}}(?=\s)", re.IGNORECASE
)
_FROM_SET = frozenset(n.casefold() for n in _FROM_NAMES.split("|"))
_DATE_SET = frozenset(n.casefold() for n in _DATE_NAMES.split("|"))


class HeaderRole(IntEnum):
    """Which part of a quoted header block a header line names."""

    OTHER = 0
    FROM = 1
    DATE = 2


@dataclass(frozen=True)
class HeaderLine:
    """A line of a quoted header block: the header names on it and the first value."""

    names: frozenset[str]
    roles: frozenset[HeaderRole]
    value: str


def _role(name: str) -> HeaderRole:
    if name in _FROM_SET:
        return HeaderRole.FROM
    return HeaderRole.DATE if name in _DATE_SET else HeaderRole.OTHER


def header_line(line: str) -> HeaderLine | None:
    """Parse "From: Bob" (also "*From:* Bob", "De : Bob") into header names and value."""
    if len(line) > MAX_HEADER_LINE_CHARS or (":" not in line and "：" not in line):
        return None
    match = _HEADER.match(line)
    if match is None:
        return None
    value = match.group("value")
    names = {match.group("name").casefold()}
    if ":" in value or "：" in value:
        names.update(glued.group(1).casefold() for glued in _GLUED_HEADER.finditer(value))
    return HeaderLine(frozenset(names), frozenset(_role(name) for name in names), value)


def header_value_is_specific(value: str) -> bool:
    """Whether a header value looks machine-written: an address or a clock time."""
    return bool(_EMAIL.search(value) or _TIME.search(value))


# "-----Original Message-----", "----- Forwarded message -----" and translations.
_MESSAGE_WORDS = re.compile(
    r"message|nachricht|meddelelse|meddelande|melding|mensaje|messaggio|mensagem|bericht"
    r"|wiadomość|wiadomosc|сообщение|viesti|zpráva|üzenet|mesaj|original|origine|e-?mail",
    re.IGNORECASE,
)
_FORWARD_WORDS = re.compile(
    r"forward|weitergeleitet|transféré|réexpédié|reenviado|doorgestuurd|inoltrato"
    r"|encaminhad|vidarebefordra|videresend|przekazan|пересыла|переслан|välitetty|přeposlan",
    re.IGNORECASE,
)
_SEPARATOR = re.compile(r"\s{0,8}-{2,40}\s{0,3}([^-]{3,60}?)\s{0,3}-{2,40}\s{0,3}:?")
_BEGIN_FORWARD = re.compile(
    r"(?:Begin forwarded message|Anfang der weitergeleiteten Nachricht"
    r"|Début du message réexpédié|Inicio del mensaje reenviado|Doorgestuurd bericht)\s?:",
    re.IGNORECASE,
)
_RULE = re.compile(r"\s{0,8}_{16,200}\s{0,8}")


class Separator(IntEnum):
    """What a separator line introduces."""

    NONE = 0
    ORIGINAL = 1  # the message being replied to, or an Outlook rule line
    FORWARD = 2  # a forwarded message


def separator_kind(line: str) -> Separator:
    """Classify "-----Original Message-----", "---- Forwarded message ----", "____"."""
    if len(line) > 200 or not ("-" in line or "_" in line or line.rstrip().endswith(":")):
        return Separator.NONE
    if _RULE.fullmatch(line):
        return Separator.ORIGINAL
    if _BEGIN_FORWARD.fullmatch(line.strip()):
        return Separator.FORWARD
    match = _SEPARATOR.fullmatch(line)
    if match is None:
        return Separator.NONE
    inner = match.group(1)
    if _FORWARD_WORDS.search(inner):
        return Separator.FORWARD
    if _MESSAGE_WORDS.search(inner):
        return Separator.ORIGINAL
    return Separator.NONE


_DECORATION = re.compile(r"[-_=*~–—\s]{3,}")


def is_decoration(line: str) -> bool:
    """A line drawn with dashes, underscores or stars, and nothing else."""
    return bool(_DECORATION.fullmatch(line)) and not line.isspace()


# "-Anna", "--Rick Smith": a dash glued to a short name, a sign-off style of its own.
_DASH_SIGNOFF = re.compile(r"(?:-|-- ?)[A-Z][^\W\d_]{0,30}(?:[ .'][^\W\d_]{1,30}){0,2}\.?")


def is_signature_delimiter(line: str) -> bool:
    """The RFC 3676 signature delimiter "-- " (often stripped to "--") on its own line."""
    return line in ("--", "-- ")


def is_dash_signoff(line: str) -> bool:
    """A dash glued to a short name ("-Anna", "--Rick Smith"), which opens a signature."""
    return line.startswith("-") and bool(_DASH_SIGNOFF.fullmatch(line))


_FOOTER_DEVICE = re.compile(
    r"\b(?:iphone\w{0,6}|ipad|ipod|blackberry|android|mobil\w{0,8}|phone|handy|smartphone"
    r"|samsung|galaxy|htc|nokia|motorola|huawei|xiaomi|pixel|sony|windows|outlook|mail|gmail"
    r"|yahoo|aol|acompli|ios|tablet|device|appareil|téléphone|móvil|movil|celular|telefon\w{0,6}"
    r"|dispositivo|мобильн\w{0,6}|телефон\w{0,3}|spark|airmail|superhuman|protonmail)\b",
    re.IGNORECASE,
)
_FOOTER_SENT = re.compile(
    r"(?:Sent (?:from|via|with|using|on|by)|Envoyé (?:de|depuis|avec)|Gesendet (?:von|mit|vom)"
    r"|Enviado (?:desde|do|de|con|com)|Inviato (?:da|dal|con)|Verzonden (?:vanaf|met|van)"
    r"|Verstuurd (?:vanaf|met|van)|Skickat (?:från|med)|Sendt (?:fra|med)|Wysłane (?:z|przez)"
    r"|Odesláno (?:z|ze)|Отправлено (?:с|из|со)|Lähetetty|Gönderildi"
    r"|Von meinem|Get Outlook|Download Outlook|Holen Sie sich Outlook|Obtenir Outlook"
    r"|Obtener Outlook|Scarica Outlook)\b",
    re.IGNORECASE,
)
_FOOTER_CJK = re.compile(r".{1,30}から送信|(?:发自|發自|从|從)我的.{1,30}")
_TRAILING_LINK = re.compile(r"\s?<[^<>\s]{1,200}>$")


def is_mobile_footer(line: str) -> bool:
    """A mobile footer: "Sent from my iPhone", "Get Outlook for Android", and translations."""
    if len(line) > 4 * MAX_FOOTER_CHARS:
        return False
    text = _TRAILING_LINK.sub("", line.strip())
    if not text or len(text) > MAX_FOOTER_CHARS or "," in text or len(text.split()) > 10:
        return False
    if _FOOTER_CJK.fullmatch(text):
        return True
    return bool(_FOOTER_SENT.match(text) and _FOOTER_DEVICE.search(text))
