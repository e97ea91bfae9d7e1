"""Benchmark of reply extraction and HTML sanitising on a synthetic mix of mail.

Times `extract_reply` / `extract_reply_html`, `html_to_text` and `sanitize_html`
on plain-text replies, ~60 KB HTML replies (Gmail- and Outlook-shaped, built
here from a fixed seed) and a few hostile inputs, and prints, per operation and
kind of input, the per-item p50 and p99 latency and the throughput. `--json FILE`
also writes the figures as JSON.

Not a test and not run by `make test`: the figures depend on the machine, so
nothing here asserts a speed. Run it as `.venv/bin/python bench/mail.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bridge.mail.extract import extract_reply, extract_reply_html
from bridge.mail.sanitize import html_to_text, sanitize_html

WORDS = [
    "appointment", "tuesday", "thanks", "please", "confirm", "the", "form", "invoice",
    "insurance", "we", "will", "call", "you", "about", "your", "results", "next", "week",
    "copay", "billing", "office", "hours", "reminder", "prescription", "refill", "follow-up",
    "question", "answer", "sure", "fine", "later", "morning",
]  # fmt: skip
NAMES = ["Anna Berg", "Desk", "Dr. Lena Fischer", "Bob Stone", "Praxis Nord"]
HTML_TARGET_BYTES = 60_000


@dataclass(frozen=True)
class Item:
    """One input of the mix."""

    kind: str
    body: str
    html: bool


@dataclass(frozen=True)
class Figures:
    """What one operation measured on one kind of input."""

    operation: str
    kind: str
    items: int
    mean_bytes: int
    p50_ms: float
    p99_ms: float
    items_per_s: float
    mb_per_s: float


def sentence(rng: random.Random, words: int = 12) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def attribution(rng: random.Random) -> str:
    name = rng.choice(NAMES)
    day = rng.randint(1, 28)
    return f"On Mon, {day} Jun 2024 at 09:{day:02d}, {name} <desk@example.org> wrote:"


def plain_reply(rng: random.Random) -> str:
    """A plain-text reply in one of the shapes mail clients write."""
    answer = "\n".join(sentence(rng) for _ in range(rng.randint(1, 4)))
    history = "\n".join(f"> {sentence(rng)}" for _ in range(rng.randint(3, 30)))
    shape = rng.randrange(4)
    if shape == 0:  # top posting with an attribution
        return f"{answer}\n\nAnna\n\n{attribution(rng)}\n{history}\n"
    if shape == 1:  # Outlook header block
        headers = "From: Desk <desk@example.org>\nSent: Monday, June 3, 2024 9:41 AM\nTo: Anna"
        old = history.replace("> ", "")
        return f"{answer}\n\n-----Original Message-----\n{headers}\nSubject: Hi\n\n{old}\n"
    if shape == 2:  # interleaved
        return f"{attribution(rng)}\n> {sentence(rng)}\n{answer}\n> {sentence(rng)}\nYes.\n"
    return f"{answer}\n\n-- \nAnna Berg\nSent from my iPhone\n\n{attribution(rng)}\n{history}\n"


def gmail_reply(rng: random.Random) -> str:
    """A Gmail-shaped HTML reply whose quoted history fills it to ~60 KB."""
    answer = "".join(f"<div>{sentence(rng)}</div>" for _ in range(3))
    answer += "<ul>" + "".join(f"<li>{sentence(rng, 5)}</li>" for _ in range(3)) + "</ul>"
    answer += '<div>See <a href="https://portal.example/t/1">the portal</a>.</div>'
    signature = '<div class="gmail_signature"><table><tr><td>Anna</td><td>+49 30 1234</td></tr>'
    head = "<html><head><style>p{margin:0}</style></head><body>"
    opening = f'{head}<div dir="ltr">{answer}{signature}</table></div></div><br>'
    history: list[str] = []
    size = len(opening)
    while size < HTML_TARGET_BYTES:
        paragraph = f"<p>{sentence(rng, 30)}<br>{sentence(rng, 20)}</p>"
        history.append(paragraph)
        size += len(paragraph)
    quote = (
        f'<div class="gmail_quote"><div class="gmail_attr">{attribution(rng)}<br></div>'
        '<blockquote class="gmail_quote" style="margin:0 0 0 .8ex;border-left:1px #ccc solid">'
    )
    return f"{opening}{quote}{''.join(history)}</blockquote></div></body></html>"


def outlook_reply(rng: random.Random) -> str:
    """An Outlook-shaped HTML reply: MsoNormal paragraphs, a reply header, old text."""
    head = (
        "<html><head><!--[if gte mso 9]><xml><o:OfficeDocumentSettings>"
        "</o:OfficeDocumentSettings></xml><![endif]--><style>p.MsoNormal{margin:0}</style>"
        "</head><body><div class=WordSection1>"
    )
    answer = "".join(f"<p class=MsoNormal>{sentence(rng)}<o:p></o:p></p>" for _ in range(4))
    header = (
        "<div id=appendonsend></div><hr><div id=divRplyFwdMsg><b>From:</b> Desk "
        "&lt;desk@example.org&gt;<br><b>Sent:</b> Monday, June 3, 2024 9:41 AM</div>"
    )
    history: list[str] = []
    size = len(head) + len(answer) + len(header)
    while size < HTML_TARGET_BYTES:
        cells = "".join(f"<td><p class=MsoNormal>{sentence(rng, 6)}</p></td>" for _ in range(3))
        paragraph = f"<p class=MsoNormal>{sentence(rng, 25)}</p><table><tr>{cells}</tr></table>"
        history.append(paragraph)
        size += len(paragraph)
    return f"{head}{answer}{header}{''.join(history)}</div></body></html>"


def hostile_items() -> list[Item]:
    """Inputs built to make a parser or a regular expression slow."""
    forward = "<div class='gmail_quote'>---------- Forwarded message ---------<br>x"
    long_line = "On " * 6_000
    html = {
        "unclosed attributes": "<p>before</p>" + "<a x='" * 9_000,
        "nested blockquotes": "<blockquote>x" * 9_000,
        "nested lists": "<ul><li>x" * 4_500,
        "nested forwards": forward * 3_000,
        "stray <": "a<b " * 20_000 + "</div>",
        "unterminated comment": "<p>x</p><!--" + "a" * 200_000,
    }
    items = [Item(f"hostile: {name}", body, html=True) for name, body in html.items()]
    plain = f"Hi\n{long_line}\n{long_line}:\n> {long_line}\n"
    items.append(Item("hostile: long plain lines", plain, html=False))
    return items


def build_mix(seed: int, replies: int) -> list[Item]:
    rng = random.Random(seed)
    items = [Item("plain reply", plain_reply(rng), html=False) for _ in range(replies)]
    for _ in range(max(1, replies // 4)):
        items.append(Item("60 KB gmail html", gmail_reply(rng), html=True))
        items.append(Item("60 KB outlook html", outlook_reply(rng), html=True))
    return items + hostile_items()


def extract(item: Item) -> object:
    return extract_reply_html(item.body) if item.html else extract_reply(item.body)


OPERATIONS: dict[str, tuple[Callable[[Item], object], bool]] = {
    # name: (call, whether it only applies to HTML)
    "extract": (extract, False),
    "html_to_text": (lambda item: html_to_text(item.body), True),
    "sanitize_html": (lambda item: sanitize_html(item.body), True),
}


def percentile(sorted_samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    rank = max(1, math.ceil(fraction * len(sorted_samples)))
    return sorted_samples[rank - 1]


def measure(name: str, kind: str, items: list[Item], rounds: int) -> Figures:
    call, _ = OPERATIONS[name]
    call(items[0])  # warm caches and lazily built state
    samples: list[float] = []
    for _ in range(rounds):
        for item in items:
            start = time.perf_counter_ns()
            call(item)
            samples.append((time.perf_counter_ns() - start) / 1e9)
    samples.sort()
    total = sum(samples)
    size = sum(len(item.body.encode("utf-8", "surrogatepass")) for item in items) * rounds
    return Figures(
        operation=name,
        kind=kind,
        items=len(samples),
        mean_bytes=size // len(samples),
        p50_ms=round(percentile(samples, 0.50) * 1e3, 3),
        p99_ms=round(percentile(samples, 0.99) * 1e3, 3),
        items_per_s=round(len(samples) / total, 1),
        mb_per_s=round(size / total / 1e6, 2),
    )


def run(items: list[Item], rounds: int) -> list[Figures]:
    kinds: dict[str, list[Item]] = {}
    for item in items:
        kinds.setdefault(item.kind, []).append(item)
    figures: list[Figures] = []
    for name, (_, html_only) in OPERATIONS.items():
        for kind, group in kinds.items():
            if html_only and not group[0].html:
                continue
            # One slow input each: fewer passes, but enough for a p99 to mean something.
            hostile = kind.startswith("hostile")
            figures.append(measure(name, kind, group, max(3, rounds // 2) if hostile else rounds))
    return figures


def print_table(figures: list[Figures]) -> None:
    header = f"{'operation':<14}{'input':<30}{'items':>7}{'bytes':>9}"
    print(f"{header}{'p50 ms':>10}{'p99 ms':>10}{'items/s':>10}{'MB/s':>8}")
    for row in figures:
        print(
            f"{row.operation:<14}{row.kind:<30}{row.items:>7}{row.mean_bytes:>9}"
            f"{row.p50_ms:>10.3f}{row.p99_ms:>10.3f}{row.items_per_s:>10.1f}{row.mb_per_s:>8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="passes over the mix (default 5)")
    parser.add_argument("--replies", type=int, default=40, help="plain replies in the mix")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the synthetic mix")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    figures = run(build_mix(args.seed, args.replies), max(1, args.rounds))
    print_table(figures)
    if args.json is not None:
        report = {"rounds": args.rounds, "seed": args.seed, "figures": [asdict(f) for f in figures]}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
