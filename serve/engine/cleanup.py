"""Turn raw model output into one safe Chandler line.

The model may run on into someone else's line (`Joey: ...`) or a new chat role, write stage
directions, ramble past a sensible length, produce nothing at all, or echo a Discord ping.
`clean_reply` keeps one speaker turn, drops the stage directions, trims to whole sentences under
`max_chars`, neutralises mentions and never returns an empty string.
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator

from data.dialogue import CHARACTER

MAX_REPLY_CHARS = 400
FALLBACKS = (
    "Could I BE any more speechless?",
    "I'm not great at the advice. Can I interest you in a sarcastic comment?",
    "Hi, I'm Chandler. I make jokes when I'm uncomfortable.",
)
ZWSP = "\u200b"

# A speaker's name: one to three capitalised words, e.g. `Joey`, `Mr. Geller`.
_NAME = r"[A-Z][\w.'-]*(?:[ \t]+[A-Z][\w.'-]*){0,2}"
# `Name:` at the start of a line; and a line that may still grow into one while streaming.
_LABEL = re.compile(rf"(?m)^[ \t]*(?P<name>{_NAME})[ \t]*:")
_MAYBE_LABEL = re.compile(rf"[ \t]*(?:{_NAME}[ \t]*)?")
# A new chat role: special tokens such as <|im_start|> or </s>, or a bare `user:` line.
_ROLE = re.compile(r"<\|[^|>\s]*\|?>?|</?s>|(?im:^[ \t]*(?:user|assistant|system|human)[ \t]*:)")
_OWN_LABEL = re.compile(rf"(?im)^[ \t]*{CHARACTER}(?:[ \t]+Bing)?[ \t]*:[ \t]*")
_BOLD = re.compile(r"\*\*(.+?)\*\*", re.S)
_DIRECTIONS = (re.compile(r"\([^()]*\)"), re.compile(r"\[[^\[\]]*\]"), re.compile(r"\*[^*]*\*"))
_OPENERS = "([*"
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)]*(?=\s|$)")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.!?;:…])")


def turn_end(text: str) -> int | None:
    """Where the model stops speaking as the character: another speaker's `Name:` line or a
    new chat role. None while it is still one turn."""
    ends = [m.start() for m in _ROLE.finditer(text)]
    ends += [m.start() for m in _LABEL.finditer(text) if m["name"].split()[0].lower() != CHARACTER.lower()]
    return min(ends, default=None)


def strip_directions(text: str) -> str:
    """Drop stage directions: (...), [...], *...* (nested too), and an unclosed one to the end."""
    text = _BOLD.sub(r"\1", text)
    for pattern in _DIRECTIONS:
        while True:
            text, count = pattern.subn(" ", text)
            if not count:
                break
    opened = [i for i in (text.find(c) for c in _OPENERS) if i >= 0]
    if opened:
        text = text[: min(opened)]
    return text.replace(")", " ").replace("]", " ")


def neutralise_mentions(text: str) -> str:
    """`@everyone`, `@here`, `<@123>`, `<@!123>`, `<@&123>`, `<#123>` can never ping: a zero-width
    space follows every `@` and every `<#`."""
    text = re.sub(f"@(?!{ZWSP})", "@" + ZWSP, text)
    return re.sub(f"<#(?!{ZWSP})", "<#" + ZWSP, text)


def one_turn(text: str) -> str:
    """The character's own turn: cut at another speaker or role, own `Chandler:` labels removed,
    stage directions dropped, whitespace collapsed. Extending `text` only extends the result
    (up to whitespace), so it also serves streaming."""
    end = turn_end(text)
    text = text[:end] if end is not None else text
    text = strip_directions(_OWN_LABEL.sub("", text))
    return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.split())).lstrip(",;:-– ")


def trim(text: str, max_chars: int, truncated: bool = False) -> str:
    """Whole sentences: at most `max_chars` (a single over-long sentence is cut at a word, with
    `…`), and without the unfinished last one when generation was cut off (`truncated`) after at
    least one complete sentence."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if truncated and ends and ends[-1] < len(text):
        text = text[: ends[-1]]
    if len(text) <= max_chars:
        return text
    fitting = [end for end in ends if end <= max_chars]
    if fitting:
        return text[: fitting[-1]]
    cut = text[: max_chars - 1].rsplit(" ", 1)[0] if " " in text[: max_chars - 1] else text[: max_chars - 1]
    return cut.rstrip(",;:- ") + "…"


def fallback(seed_text: str = "") -> str:
    return FALLBACKS[zlib.crc32(seed_text.encode()) % len(FALLBACKS)]


def clean_reply(text: str, max_chars: int = MAX_REPLY_CHARS, truncated: bool = False) -> str:
    """One safe, non-empty line of the character's from raw model output."""
    reply = trim(one_turn(text), max_chars, truncated)
    if not reply.strip(" .,;:!?…'\"-"):
        reply = fallback(text)
    return neutralise_mentions(reply)


def settled(raw: str) -> str:
    """The part of streamed raw text that later tokens cannot change: complete words, and not
    a last line that may still grow into a `Name:` label."""
    cut = max(raw.rfind(" "), raw.rfind("\n"), raw.rfind("\t"))
    text = raw[: cut + 1] if cut >= 0 else ""
    line_start = raw.rfind("\n") + 1
    if _MAYBE_LABEL.fullmatch(raw[line_start:]):
        text = text[:line_start]
    return text


def clean_pieces(raw_pieces: Iterable[str], max_chars: int = MAX_REPLY_CHARS) -> Iterator[str]:
    """Streaming clean-up, for every engine: pieces of raw model text in, pieces of the cleaned
    reply out, about a word at a time. Only settled text is sent (an unfinished word, an open
    stage direction or a possible `Name:` waits); it stops reading at another speaker's line or
    past `max_chars`, and ends with what `clean_reply` adds. The pieces join to `clean_reply`'s
    text, except that a sentence cut off by the token or length limit is not taken back once sent."""
    raw, sent = "", ""
    for piece in raw_pieces:
        raw += piece
        if turn_end(raw) is not None:
            break
        text = neutralise_mentions(one_turn(settled(raw)))
        if len(text) > max_chars:
            break
        if text.startswith(sent) and len(text) > len(sent):
            yield text[len(sent) :]
            sent = text
    final = clean_reply(raw, max_chars)
    if final.startswith(sent) and len(final) > len(sent):
        yield final[len(sent) :]
