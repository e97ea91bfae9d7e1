"""Reply extraction on invented replies: one behaviour per test, plus properties."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge.mail.extract import REPLY_MARKER, Extracted, extract_reply, extract_reply_html
from bridge.mail.sanitize import MAX_TAGS


def reply(text: str, **kwargs: str) -> str:
    return extract_reply(text, **kwargs).text


# -- what is kept ----------------------------------------------------------------


def test_a_plain_message_is_returned_whole_and_not_flagged() -> None:
    text = "Hi Dr. Moreau,\n\nI can make Thursday at 4.\n\nBest,\nLena"
    assert extract_reply(text) == Extracted(text=text, trimmed=False, fallback=False)


def test_plain_sign_offs_are_kept() -> None:
    text = (
        "See you next week.\n\nThanks,\nAnna\n\n"
        "On Tue, 4 Jun 2024 at 09:12, Clinic <c@example.org> wrote:\n> Reminder"
    )
    assert reply(text) == "See you next week.\n\nThanks,\nAnna"


def test_indentation_and_line_structure_are_kept() -> None:
    text = "My list:\n\n    1. sleep diary\n    2. breathing exercise\n\n  - done twice\n"
    assert reply(text) == text.rstrip("\n")


def test_a_sentence_with_wrote_in_the_middle_is_not_history() -> None:
    text = (
        "Last week I wrote: nothing helps. Today I feel a bit better.\n"
        "My mother wrote: call the clinic, so here I am.\n\nRegards,\nTom"
    )
    assert reply(text) == text


def test_a_line_starting_with_on_is_not_an_attribution() -> None:
    text = "On Monday I can come at 10.\nOn Tuesday I work late.\n\nMaria"
    assert extract_reply(text).trimmed is False


def test_someone_wrote_without_date_or_address_keeps_the_quote_it_introduces() -> None:
    text = "My sister wrote:\n> he seems calmer lately\nI agree with her."
    assert reply(text) == text


def test_a_quote_the_writer_typed_above_everything_is_kept() -> None:
    text = (
        "> can you bring the form?\n"
        "Yes, I will bring it.\n\n"
        "On Wed, 5 Jun 2024 at 14:03, Front Desk <desk@example.org> wrote:\n"
        "> can you bring the form?\n> Thanks, the front desk"
    )
    assert reply(text) == "> can you bring the form?\nYes, I will bring it."


def test_interleaved_answers_keep_the_quotes_they_answer() -> None:
    text = (
        "On Thu, 6 Jun 2024 at 08:00, Dr. Kaye <kaye@example.org> wrote:\n"
        "> Did the new dose help?\n\n"
        "A little, mostly at night.\n\n"
        "> Any side effects?\n\n"
        "Dry mouth.\n\n"
        "> See you on Friday.\n> Dr. Kaye\n"
    )
    assert reply(text) == (
        "> Did the new dose help?\n\nA little, mostly at night.\n\n"
        "> Any side effects?\n\nDry mouth."
    )


def test_a_bottom_posted_answer_drops_the_quote_above_it() -> None:
    text = (
        "On 07/06/2024 10:15, Clinic wrote:\n"
        "> Please confirm your appointment.\n\nConfirmed, thank you."
    )
    assert reply(text) == "Confirmed, thank you."


def test_an_appointment_with_date_and_time_lines_is_not_a_header_block() -> None:
    text = "Here are my options:\n\nDate: Friday 14 June\nTime: 3 pm\nPlace: your office\n\nJo"
    assert reply(text) == text


def test_a_forwarded_message_sent_on_purpose_is_kept() -> None:
    text = (
        "This is the letter from my school I mentioned.\n\n"
        "---------- Forwarded message ---------\n"
        "From: School Office <office@school.example>\n"
        "Date: Mon, 3 Jun 2024 at 11:00\n"
        "Subject: Absence\n"
        "To: Sam <sam@example.com>\n\n"
        "Dear Sam, please provide a note."
    )
    assert reply(text) == text


def test_a_forward_inside_quoted_history_goes_with_the_history() -> None:
    text = (
        "Sounds good.\n\n-----Original Message-----\nFrom: Desk\n\n"
        "---------- Forwarded message ---------\n"
        "From: x@example.com\nDate: Mon, 3 Jun 2024 at 11:00"
    )
    assert reply(text) == "Sounds good."


# -- quoted history -----------------------------------------------------------------


def test_gmail_attribution_and_quote_are_dropped() -> None:
    text = (
        "Yes, 3pm works.\n\n"
        "On Mon, Jun 3, 2024 at 9:41 AM Riverside Practice <notify@riverside.example> wrote:\n\n"
        "> Would Tuesday at 3pm suit you?\n>\n"
    )
    assert extract_reply(text) == Extracted("Yes, 3pm works.", trimmed=True, fallback=False)


def test_attribution_wrapped_over_two_lines() -> None:
    text = (
        "Thank you!\n\nOn Mon, Jun 3, 2024 at 9:41 AM, Riverside Practice\n"
        "<notify@riverside.example> wrote:\n\n> Your invoice is ready."
    )
    assert reply(text) == "Thank you!"


def test_attribution_wrapped_over_three_lines_followed_by_unquoted_history() -> None:
    text = (
        "Got it.\n\nOn 3 Jun 2024, at 09:41, Riverside\n"
        "Practice <notify@riverside.example>\nwrote:\n\nYour invoice is ready.\n"
    )
    assert reply(text) == "Got it."


def test_attribution_glued_to_the_last_line_of_the_reply() -> None:
    text = "fine by me On Mon, Jun 3, 2024 at 9:41 AM, desk@example.org wrote:\n> Tuesday?"
    assert reply(text) == "fine by me"


@pytest.mark.parametrize(
    "attribution",
    [
        "Am 03.06.2024 um 09:41 schrieb Praxis Weber <praxis@weber.example>:",
        "Am Mo., 3. Juni 2024 um 09:41 Uhr schrieb Praxis <praxis@weber.example>:",
        "Le lun. 3 juin 2024 à 09:41, Cabinet Martin <cabinet@martin.example> a écrit :",
        "El lun, 3 jun 2024 a las 9:41, Consulta <consulta@ejemplo.example> escribió:",
        "Op ma 3 jun. 2024 om 09:41 schreef Praktijk <praktijk@voorbeeld.example>:",
        "Il giorno lun 3 giu 2024 alle ore 09:41 Studio <studio@esempio.example> ha scritto:",
        "Em seg., 3 de jun. de 2024 às 09:41, Clínica <clinica@exemplo.example> escreveu:",
        "Den mån 3 juni 2024 kl 09:41 skrev Mottagning <mottagning@exempel.example>:",
        "man. 3. jun. 2024 kl. 09:41 skrev Klinikk <klinikk@eksempel.example>:",
        "Den 3. jun. 2024 kl. 09.41 skrev Klinik <klinik@eksempel.example>:",
        "W dniu 3.06.2024 o 09:41, Gabinet <gabinet@przyklad.example> napisał(a):",
        "пн, 3 июн. 2024 г. в 09:41, Клиника <klinika@primer.example>:",
        "3 июня 2024 г., 09:41 пользователь Клиника <klinika@primer.example> написал:",
        "2024年6月3日(月) 9:41 クリニック <clinic@rei.example>:",
        "在 2024年6月3日 09:41，诊所 <clinic@lizi.example> 写道：",
    ],
)
def test_translated_attribution_lines(attribution: str) -> None:
    text = f"Danke, passt.\n\n{attribution}\n> Termin am Dienstag?\n"
    assert reply(text) == "Danke, passt."


@pytest.mark.parametrize(
    "header",
    [
        "From: Riverside Practice <notify@riverside.example>\nSent: Monday, June 3, 2024 9:41 AM\n"
        "To: Lena <lena@example.com>\nSubject: Appointment",
        "*From:* Riverside Practice [mailto:notify@riverside.example]\n"
        "*Sent:* Monday, June 3, 2024 9:41 AM\n"
        "*To:* Lena\n*Subject:* Appointment",
        "Von: Praxis Weber <praxis@weber.example>\nGesendet: Montag, 3. Juni 2024 09:41\n"
        "An: Lena\nBetreff: Termin",
        "De : Cabinet Martin <cabinet@martin.example>\nEnvoyé : lundi 3 juin 2024 09:41\n"
        "À : Lena\nObjet : Rendez-vous",
        "De: Consulta <consulta@ejemplo.example>\nEnviado el: lunes, 3 de junio de 2024 9:41\n"
        "Para: Lena\nAsunto: Cita",
        "Van: Praktijk <praktijk@voorbeeld.example>\nVerzonden: maandag 3 juni 2024 09:41\n"
        "Aan: Lena\nOnderwerp: Afspraak",
    ],
)
def test_outlook_header_blocks_in_several_languages(header: str) -> None:
    text = f"Works for me.\n\n{header}\n\nDear Lena, shall we meet on Tuesday?"
    assert reply(text) == "Works for me."


def test_outlook_rule_line_and_header_block() -> None:
    text = (
        "I will be there.\n\n________________________________\n"
        "From: Riverside Practice <notify@riverside.example>\nSent: Monday, June 3, 2024 9:41 AM\n"
        "To: Lena\nSubject: Appointment\n\nDear Lena,"
    )
    assert reply(text) == "I will be there."


def test_original_message_separator() -> None:
    text = "Noted.\n\n-----Original Message-----\nFrom: Desk\nSent: Monday\n\nHello"
    assert reply(text) == "Noted."


def test_a_wrapped_link_inside_the_quote_is_not_an_answer() -> None:
    text = (
        "Done.\n\nOn Mon, Jun 3, 2024 at 9:41 AM, desk@example.org wrote:\n"
        "> Fill in the form at (https://portal.example/forms?id=\n"
        "abc123)\n> and send it back."
    )
    assert reply(text) == "Done."


def test_mailing_list_footer_below_a_rule_line_is_dropped() -> None:
    text = "Count me in.\n\n" + "_" * 47 + "\nGroup list\nlist@example.org"
    assert reply(text) == "Count me in."


# -- signatures and footers ------------------------------------------------------------


def test_signature_below_the_delimiter_is_dropped() -> None:
    text = "See you then.\n\n-- \nLena Fischer\nPhone 555 0100\n"
    assert reply(text) == "See you then."


def test_a_double_dash_inside_a_sentence_is_not_a_signature() -> None:
    text = "I tried -- really tried -- to sleep earlier.\n\nLena"
    assert reply(text) == text


def test_a_dash_glued_to_a_name_above_the_history_is_a_signature() -> None:
    text = (
        "Thanks for the call.\n\n-Lena Fischer\n\n"
        "On 03/06/2024 09:41, Desk wrote:\n> Call you at 10."
    )
    assert reply(text) == "Thanks for the call."


def test_dash_list_items_in_the_middle_are_kept() -> None:
    text = "Who comes:\n\n-Anna\n-Ben\n\nSee you then."
    assert reply(text) == text


def test_a_dated_sentence_ending_in_wrote_is_not_an_attribution() -> None:
    text = "On 12 May my GP wrote:\nrest for two weeks.\n\nShould I still come?"
    assert reply(text) == text


def test_an_undated_attribution_with_an_address_is_not_a_boundary() -> None:
    text = "My colleague jane@clinic.example wrote:\nI am away next week.\n\nCan we move it?"
    assert reply(text) == text


def test_a_footer_followed_by_more_of_the_writers_text_is_kept() -> None:
    text = "Parcel arrived.\n\nSent via mail to your office\nthe signed forms, too."
    assert reply(text) == text


@pytest.mark.parametrize(
    "footer",
    [
        "Sent from my iPhone",
        "Sent from my Samsung Galaxy smartphone.",
        "Get Outlook for Android<https://aka.ms/ghei36>",
        "Sent from Mail for Windows",
        "Envoyé de mon iPhone",
        "Von meinem iPhone gesendet",
        "Enviado desde mi iPhone",
        "iPhoneから送信",
    ],
)
def test_mobile_footers_are_dropped(footer: str) -> None:
    history = "On 3 Jun 2024, at 09:41, Desk <d@example.org> wrote:\n> Hi"
    text = f"Running 5 min late.\n\n{footer}\n\n{history}"
    assert reply(text) == "Running 5 min late."


def test_a_sentence_starting_with_sent_from_is_kept() -> None:
    text = "Here it is.\n\nSent from my desk at work, because my phone is broken."
    assert reply(text) == text


# -- the daemon's marker ----------------------------------------------------------------


def test_everything_from_the_marker_down_is_dropped() -> None:
    text = f"Yes please.\n\n{REPLY_MARKER}\nYou have a new secure message from Riverside Practice."
    assert reply(text) == "Yes please."


def test_a_quoted_marker_takes_its_attribution_along() -> None:
    text = (
        "Yes please.\n\n"
        "On Mon, Jun 3, 2024 at 9:41 AM Riverside <reply+x@riverside.example> wrote:\n\n"
        f"> {REPLY_MARKER.upper()}\n> You have a new secure message."
    )
    assert reply(text) == "Yes please."


def test_a_custom_marker() -> None:
    text = "Ja.\n\n## Bitte oberhalb dieser Zeile antworten ##\nIhre Praxis"
    assert reply(text, marker="## Bitte oberhalb dieser Zeile antworten ##") == "Ja."


# -- normalisation and fallback ------------------------------------------------------------


def test_crlf_input_and_trailing_spaces_are_normalised() -> None:
    text = (
        "\r\n\r\nLine one   \r\nLine two\t\r\n\r\n"
        "On Mon, Jun 3, 2024 at 9:41 AM, d@example.org wrote:\r\n> hi\r\n"
    )
    assert extract_reply(text) == Extracted("Line one\nLine two", trimmed=True, fallback=False)


def test_whitespace_only_changes_do_not_count_as_trimming() -> None:
    result = extract_reply("\n\nHello   \r\nthere\n\n")
    assert result == Extracted("Hello\nthere", trimmed=False, fallback=False)


def test_a_reply_that_is_only_history_falls_back_to_the_full_text() -> None:
    text = "> Are you coming?\n> Desk\r\n"
    expected = Extracted("> Are you coming?\n> Desk", trimmed=False, fallback=True)
    assert extract_reply(text) == expected


def test_a_reply_that_is_only_a_signature_falls_back() -> None:
    assert extract_reply("-- \nLena Fischer").fallback is True


def test_empty_input_gives_empty_text_without_fallback() -> None:
    assert extract_reply(" \n\t\n") == Extracted("", trimmed=False, fallback=False)


# -- HTML ---------------------------------------------------------------------------------


def test_html_blockquote_and_its_attribution_are_dropped() -> None:
    html = (
        "<div>Tuesday is fine.</div><div><br></div><div>Lena</div>"
        "<div>On 3 Jun 2024, at 09:41, Desk &lt;desk@example.org&gt; wrote:</div>"
        "<blockquote type='cite'><div>Would Tuesday suit you?</div></blockquote>"
    )
    assert extract_reply_html(html) == Extracted("Tuesday is fine.\n\nLena", True, False)


def test_html_gmail_quote_is_dropped() -> None:
    html = (
        '<div dir="ltr">Yes &amp; thanks!</div><br><div class="gmail_quote">'
        '<div dir="ltr" class="gmail_attr">On Mon, Jun 3, 2024 at 9:41 AM Desk &lt;'
        '<a href="mailto:d@example.org">d@example.org</a>&gt; wrote:<br></div>'
        '<blockquote class="gmail_quote" style="margin:0 0 0 .8ex">Are you free?</blockquote></div>'
    )
    assert extract_reply_html(html).text == "Yes & thanks!"


def test_html_outlook_web_reply_is_cut_at_div_rply_fwd_msg() -> None:
    html = (
        "<div>Confirmed.</div><div id='appendonsend'></div><hr style='display:inline-block'>"
        "<div id='divRplyFwdMsg' dir='ltr'><b>From:</b> Desk<br><b>Sent:</b> Monday</div>"
        "<div>Please confirm your appointment.</div>"
    )
    assert extract_reply_html(html).text == "Confirmed."


def test_html_yahoo_and_thunderbird_history_nodes_are_dropped() -> None:
    html = (
        "<p>Thanks</p><div class='moz-cite-prefix'>On 03.06.2024 09:41, Desk wrote:</div>"
        "<blockquote type='cite'>Old text</blockquote>"
        "<div class='yahoo_quoted'><div>On Monday, Desk wrote:</div><div>Older text</div></div>"
    )
    assert extract_reply_html(html).text == "Thanks"


def test_html_bottom_posted_answer_below_a_blockquote_is_kept() -> None:
    html = (
        "<div>On 3 Jun 2024, at 09:41, Desk &lt;desk@example.org&gt; wrote:</div>"
        "<blockquote type='cite'>Would Tuesday suit you?</blockquote>"
        "<div>Tuesday suits me.</div>"
    )
    assert extract_reply_html(html).text == "Tuesday suits me."


def test_html_keeps_paragraphs_line_breaks_and_bullets() -> None:
    html = (
        "<html><head><style>p {margin:0}</style><title>x</title></head><body>"
        "<p>First paragraph<br>second line</p><p>Next paragraph</p>"
        "<ul><li>one</li><li>two<ol><li>nested</li></ol></li></ul>"
        "<script>alert(1)</script><p>&nbsp;</p><p>End</p></body></html>"
    )
    assert extract_reply_html(html).text == (
        "First paragraph\nsecond line\n\nNext paragraph\n\n- one\n- two\n  1. nested\n\nEnd"
    )


def test_html_forward_in_a_gmail_quote_is_kept() -> None:
    html = (
        "<div>See below.</div><div class='gmail_quote'>---------- Forwarded message ---------<br>"
        "From: School &lt;office@school.example&gt;<br>Date: Mon, 3 Jun 2024<br>"
        "Subject: Note<br><br>Please send a note.</div>"
    )
    assert extract_reply_html(html).text.endswith("Please send a note.")


def test_html_that_is_only_history_falls_back_to_all_of_its_text() -> None:
    html = "<blockquote>Are you coming?</blockquote>"
    assert extract_reply_html(html) == Extracted("> Are you coming?", trimmed=False, fallback=True)


def test_html_answers_between_blockquotes_stay_and_the_quotes_go() -> None:
    html = (
        "<div>On 3 Jun 2024, at 09:41, Desk &lt;desk@example.org&gt; wrote:</div>"
        "<blockquote type='cite'>Which day?</blockquote><div>Tuesday.</div>"
        "<blockquote type='cite'>Which time?</blockquote><div>After 4.</div>"
        "<blockquote type='cite'>Thanks</blockquote>"
    )
    assert extract_reply_html(html).text == "Tuesday.\n\nAfter 4."


def test_html_header_fields_glued_into_one_line_still_form_a_block() -> None:
    html = (
        "<div>Agreed.</div><hr><div><b>From: desk@example.org</b> "
        "<b>Date: Mon, 3 Jun 2024 09:41</b></div><div>Old message</div>"
    )
    assert extract_reply_html(html).text == "Agreed."


def test_html_text_with_stray_angle_brackets_and_entities_survives() -> None:
    html = "<div>dose &lt; 5 mg, a<b and x <3 &amp; &eacute;t&eacute;</div><!-- note"
    assert extract_reply_html(html).text == "dose < 5 mg, a<b and x <3 & été"


def test_html_indentation_blockquote_is_not_a_quote() -> None:
    indented = "<blockquote style='margin:0 0 0 40px;border:none'>walk daily</blockquote>"
    html = f"<div>My plan:</div>{indented}"
    assert extract_reply_html(html).text == "My plan:\n\n    walk daily"


def test_html_marker_cut() -> None:
    html = f"<p>Yes.</p><p style='color:#999'>{REPLY_MARKER}</p><p>Secure message text</p>"
    assert extract_reply_html(html).text == "Yes."


def test_html_links_keep_their_target() -> None:
    html = '<div>See <a href="https://ex.org/form">the form</a>.</div>'
    assert extract_reply_html(html).text == "See the form (https://ex.org/form)."


def test_html_forward_inside_a_quoted_message_stays_history() -> None:
    html = (
        "<div>Thanks</div><div class='gmail_quote'>On Mon, Jun 3, 2024 at 9:41 AM Desk "
        "&lt;d@example.org&gt; wrote:<br><div class='gmail_quote'>"
        "---------- Forwarded message ---------<br>From: School<br><br>Body</div></div>"
    )
    assert extract_reply_html(html).text == "Thanks"


def test_html_forward_keeps_the_quote_it_carries() -> None:
    html = (
        "<div>FYI</div><div class='gmail_quote'>---------- Forwarded message ---------<br>"
        "From: School &lt;s@school.example&gt;<br>Date: Mon, 3 Jun 2024<br><br>Please sign."
        "<div class='gmail_quote'>Earlier:<blockquote>Old</blockquote></div></div>"
    )
    assert extract_reply_html(html).text.endswith("Please sign.\nEarlier:\n\n> Old")


def test_html_with_more_tags_than_the_limit_is_read_as_words() -> None:
    html = "<div>" * (MAX_TAGS + 1) + "Yes, <b>Tuesday</b>."
    assert extract_reply_html(html).text.replace(" ", "") == "Yes,Tuesday."


def test_html_deeply_nested_forward_containers_keep_every_line() -> None:
    unit = "<div class='gmail_quote'>---------- Forwarded message ---------<br>x"
    result = extract_reply_html("<div>Hi</div>" + unit * 3_000)
    assert result.text.startswith("Hi\n---------- Forwarded message ---------\nx")
    assert result.text.count("x") == 3_000


# -- properties ----------------------------------------------------------------------------

_MAIL_LINES = st.sampled_from(
    [
        "",
        "Hello there",
        "  indented text",
        "Thanks,",
        "Anna",
        "> quoted",
        ">",
        "> > nested",
        ">> deep",
        "On Mon, Jun 3, 2024 at 9:41 AM, Desk <d@example.org> wrote:",
        "On Mon, Jun 3, 2024 at 9:41 AM, Desk",
        "<d@example.org> wrote:",
        "wrote:",
        "Am 03.06.2024 um 09:41 schrieb Praxis <p@example.org>:",
        "2024/6/3 Desk <d@example.org>",
        "From: Desk <d@example.org>",
        "Sent: Monday, June 3, 2024 9:41 AM",
        "To: Anna",
        "Subject: Hi",
        "Date: Mon, 3 Jun 2024 09:41",
        "-----Original Message-----",
        "---------- Forwarded message ---------",
        "________________________________",
        "-- ",
        "--",
        "-Anna",
        "----",
        "Sent from my iPhone",
        REPLY_MARKER,
        "> " + REPLY_MARKER,
        "see (https://example.org/a",
        "b=1)",
        "Bob <",
        "> wrote:",
        "reply On Mon, Jun 3, 2024 at 9:41 AM, d@example.org wrote:",
    ]
)
_MAILS = st.lists(st.one_of(_MAIL_LINES, st.text(max_size=30)), max_size=25).map("\n".join)


def _normalised_length(text: str) -> int:
    # The extractor's own notion of a line: every boundary str.splitlines() knows.
    lines = [line.rstrip() for line in text.splitlines()]
    return len("\n".join(lines).strip("\n"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_MAILS)
@example("0\x1e\n0")  # a record separator is a line boundary too
def test_extraction_never_grows_the_text_and_is_idempotent(text: str) -> None:
    first = extract_reply(text)
    assert len(first.text) <= _normalised_length(text)
    assert extract_reply(first.text).text == first.text


_HTML_PIECES = st.sampled_from(
    [
        *["<", ">", "</", "<!--", "-->", "<!", "<?", "]]>", "<![CDATA[", "&", "&#", ";", "="],
        *["<div>", "</div>", "<p>", "<br>", "<blockquote>", "</blockquote>", "<li>", "<ol>"],
        *["<div class='gmail_quote'>", "<div id='divRplyFwdMsg'>", "<style>", "<script>"],
        *["<head>", "<pre>", "text", " ", "\n", "&nbsp;", "&#0;", "&#x110000;", '"', "'"],
        "On 3 Jun 2024, at 09:41, a@b.c wrote:",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_HTML_PIECES, st.text(max_size=10)), max_size=40).map("".join))
@example("<\x0bOn 3 Jun 2024, at 09:41, a@b.c wrote:")  # a vertical tab ends a line
def test_html_extraction_never_raises_and_gives_settled_text(html: str) -> None:
    result = extract_reply_html(html)
    assert isinstance(result.text, str)
    assert extract_reply(result.text).text == result.text or result.fallback


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(["a", " ", "-", ">", ":", "<", "@", "1", "wrote", "On ", "\t"]),
    st.integers(min_value=1_000, max_value=20_000),
)
def test_long_adversarial_lines_are_handled(unit: str, repeat: int) -> None:
    line = unit * (repeat // len(unit))
    text = f"Hi\n{line}\n{line}:\n> {line}\n"
    result = extract_reply(text)
    assert len(result.text) <= _normalised_length(text)
    html = f"<div>{line}</div><blockquote>{line}</blockquote>"
    assert len(extract_reply_html(html).text) <= len(html)


def test_an_undated_attribution_goes_with_the_quote_below_it() -> None:
    text = "Thank you! Tuesday works.\n\nOn Monday, Dr. Dana Rivers wrote:\n> Could you come?\n"
    assert extract_reply(text).text == "Thank you! Tuesday works."


def test_an_undated_wrote_line_without_a_quote_below_is_the_writers_text() -> None:
    text = "On Monday, my GP wrote:\nI should rest for a week, so I will skip Tuesday."
    assert extract_reply(text).text == text
