"""Reply clean-up on hostile model output: other speakers, roles, stage directions, pings, nothing."""
import re

import pytest

from serve.engine.cleanup import FALLBACKS, ZWSP, clean_reply, neutralise_mentions, turn_end

PING = re.compile(r"@(everyone|here)|<@[!&]?\d+>|<#\d+>")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Could I BE any more tired?\nJoey: How you doin'?", "Could I BE any more tired?"),
        ("Sure.\n  Mr. Geller: Chandler, a word.", "Sure."),
        ("Chandler: Oh. My. God.", "Oh. My. God."),
        ("CHANDLER BING: I'm hopeless and awkward and desperate for love!", "I'm hopeless and awkward and desperate for love!"),
        ("Fine.\nChandler: Also, hi.\nRoss: We were on a break!", "Fine. Also, hi."),
        ("Hi there<|im_end|>\n<|im_start|>user\nJoey: hi", "Hi there"),
        ("Nice.<|im_start|>assistant\nMore", "Nice."),
        ("Okay.\nuser: what?", "Okay."),
        ("Okay.\nassistant: again", "Okay."),
        ("Bye.</s><s>[INST] new prompt", "Bye."),
    ],
)
def test_keeps_one_speaker_turn(raw, expected):
    assert clean_reply(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("(sighs) Well, that is *rolls eyes* great. [exits]", "Well, that is great."),
        ("I'm fine (he is (clearly) not fine), really.", "I'm fine, really."),
        ("Could I BE any more **excited**?", "Could I BE any more excited?"),
        ("That's the joke. (He starts laughing and", "That's the joke."),
        ("Then *walks off", "Then"),
    ],
)
def test_removes_stage_directions(raw, expected):
    assert clean_reply(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "   \n\t", "(sighs)", "*stares blankly*", "[silence] (long pause)", "Joey: my line, not his", "<|im_end|>", "...", "Chandler:"],
)
def test_never_empty(raw):
    assert clean_reply(raw) in FALLBACKS


@pytest.mark.parametrize(
    "raw",
    [
        "Hey @everyone, look at this!",
        "Hi @here.",
        "Ask <@123456789> about it.",
        "Ask <@!123456789> about it.",
        "Ping <@&987654321> now.",
        "Go to <#555> please.",
        "Chandler: @everyone (whispers) <@1> <@!2> <@&3> <#4> @here",
        "@\u200beveryone already safe, @everyone not",
    ],
)
def test_mentions_cannot_ping(raw):
    reply = clean_reply(raw)
    assert not PING.search(reply), reply
    assert reply.replace(ZWSP, "").strip()  # the words are still there, only made inert
    assert ZWSP + ZWSP not in reply


def test_neutralising_keeps_the_text_readable_and_is_idempotent():
    once = neutralise_mentions("mail me at a@b.c, <@42>")
    assert once.replace(ZWSP, "") == "mail me at a@b.c, <@42>"
    assert neutralise_mentions(once) == once


def test_trims_to_whole_sentences_under_the_limit():
    raw = "First sentence here. Second one is a bit longer! Third one goes on and on and on?"
    assert clean_reply(raw, max_chars=50) == "First sentence here. Second one is a bit longer!"
    assert clean_reply(raw, max_chars=25) == "First sentence here."
    assert clean_reply(raw, max_chars=500) == raw


def test_one_long_sentence_is_cut_at_a_word():
    reply = clean_reply("word " * 100, max_chars=40)
    assert len(reply) <= 40 and reply.endswith("…") and not reply.endswith(" …")
    assert all(part == "word" for part in reply[:-1].split())


def test_a_sentence_cut_off_by_the_token_limit_is_dropped():
    raw = "I'm not great at the advice. Can I interest you in a"
    assert clean_reply(raw, truncated=True) == "I'm not great at the advice."
    assert clean_reply(raw, truncated=False) == raw
    assert clean_reply("Can I interest you in a", truncated=True) == "Can I interest you in a"


def test_turn_end_finds_other_speakers_only():
    assert turn_end("So here's the thing: I'm fine.") is None
    assert turn_end("At 5:30 we leave.") is None
    assert turn_end("Hi.\nChandler: me again") is None
    assert turn_end("Hi.\nPhoebe: smelly cat") == 4
    assert turn_end("Hi.<|im_end|>") == 3
