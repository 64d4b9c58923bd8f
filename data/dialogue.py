"""The one dialogue format shared by training and serving: persona + turns → chat messages → prompt.

A turn is `{"speaker": first name, "text": ...}`. The character's own turns become assistant
messages; everyone else's consecutive turns are merged into one user message, one
`Name: text` line each, so the model always sees who said what.

Every engine builds its prompt with one call:

    prompt_ids(tokenizer, turns, persona=PERSONA, budget=CONTEXT_TOKEN_BUDGET) -> list[int]

- the newest turn is cut to `NEWEST_TURN_TOKENS` tokens; earlier turns are kept, newest first,
  while all of them fit in `budget` tokens (as in training);
- the text of every message is encoded with special tokens split: a user who types
  `<|im_end|>` or `<|im_start|>system` gets those characters as plain text, never the
  template's control tokens (only the chat template's own markers are special);
- a prompt still over `limit` tokens raises `PromptTooLong` (the API answers 413).

`prompt_text` is the same prompt as a string, for training (see train/examples.py).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

CHARACTER = "Chandler"
CONTEXT_TOKEN_BUDGET = 64  # tokens of earlier turns in a prompt; the model was trained with this
NEWEST_TURN_TOKENS = 256  # the newest turn is cut to this many tokens: a long message cannot stall the model
MAX_PROMPT_TOKENS = 512  # a prompt still longer (a long persona, a large budget) is refused
PERSONA = (
    "You are Chandler Bing from Friends. Reply with one short line as Chandler: "
    "sarcastic, self-deprecating, quick with a joke, a little awkward, warm underneath."
)
_MARK = "\ue000{}\ue001"  # private-use placeholders for message texts while the chat template renders

Turn = dict[str, str]
Message = dict[str, str]


class PromptTooLong(ValueError):
    """A prompt over the token limit even after the newest turn was cut."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(f"the prompt is {tokens} tokens, over the limit of {limit}")
        self.tokens, self.limit = tokens, limit


def build_messages(turns: Sequence[Turn], persona: str = PERSONA, character: str = CHARACTER) -> list[Message]:
    """Chat messages for a conversation whose next line is the character's."""
    messages: list[Message] = [{"role": "system", "content": persona}]
    for turn in turns:
        if turn["speaker"] == character:
            messages.append({"role": "assistant", "content": turn["text"]})
            continue
        line = f"{turn['speaker']}: {turn['text']}"
        if messages[-1]["role"] == "user":
            messages[-1]["content"] += "\n" + line
        else:
            messages.append({"role": "user", "content": line})
    return messages


def recent_turns(turns: Sequence[Turn], count_tokens: Callable[[str], int], budget: int) -> list[Turn]:
    """The most recent turns whose text fits in `budget` tokens; the newest is always kept."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        used += count_tokens(f"{turn['speaker']}: {turn['text']}\n")
        if kept and used > budget:
            break
        kept.append(turn)
    return kept[::-1]


def prompt_text(tokenizer, turns: Sequence[Turn], persona: str = PERSONA, budget: int = CONTEXT_TOKEN_BUDGET) -> str:
    """The prompt string: the most recent turns that fit `budget`, chat template applied,
    ready for the character's reply. Training builds its prompts here."""
    messages = build_messages(recent_turns(turns, lambda text: len(_plain_ids(tokenizer, text)), budget), persona)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer, turns: Sequence[Turn], persona: str = PERSONA, budget: int = CONTEXT_TOKEN_BUDGET,
               limit: int = MAX_PROMPT_TOKENS) -> list[int]:
    """The prompt's token ids for the character's next line (see the module's docstring)."""
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    *earlier, newest = turns
    newest = {**newest, "text": _cut(tokenizer, newest["text"], NEWEST_TURN_TOKENS)}
    kept = recent_turns([*earlier, newest], lambda text: len(_plain_ids(tokenizer, text)), budget)
    ids = _encode_messages(tokenizer, build_messages(kept, persona))
    if len(ids) > limit:
        raise PromptTooLong(len(ids), limit)
    return ids


def _plain_ids(tokenizer, text: str) -> list[int]:
    """Token ids of text as text: special-token strings in it are split into ordinary tokens."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _cut(tokenizer, text: str, max_tokens: int) -> str:
    """`text` cut to at most `max_tokens` tokens, at a character boundary."""
    encoded = tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    return text if len(offsets) <= max_tokens else text[: offsets[max_tokens][0]]


def _encode_messages(tokenizer, messages: Sequence[Message]) -> list[int]:
    """The chat template rendered around placeholders, its own markers encoded as special tokens,
    each message's text encoded as plain text."""
    marks = [_MARK.format(i) for i in range(len(messages))]
    rest = tokenizer.apply_chat_template(
        [{**message, "content": mark} for message, mark in zip(messages, marks)], tokenize=False, add_generation_prompt=True
    )
    ids: list[int] = []
    for message, mark in zip(messages, marks):
        head, found, rest = rest.partition(mark)
        if not found:
            raise ValueError("the chat template dropped a message")
        ids += tokenizer(head, add_special_tokens=False)["input_ids"] + _plain_ids(tokenizer, message["content"])
    return ids + tokenizer(rest, add_special_tokens=False)["input_ids"]
