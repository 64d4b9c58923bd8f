"""The one dialogue format shared by training and serving: persona + turns → chat messages.

A turn is `{"speaker": first name, "text": ...}`. The character's own turns become assistant
messages; everyone else's consecutive turns are merged into one user message, one
`Name: text` line each, so the model always sees who said what.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

CHARACTER = "Chandler"
CONTEXT_TOKEN_BUDGET = 64  # tokens of earlier turns in a prompt; the model was trained with this
PERSONA = (
    "You are Chandler Bing from Friends. Reply with one short line as Chandler: "
    "sarcastic, self-deprecating, quick with a joke, a little awkward, warm underneath."
)

Turn = dict[str, str]
Message = dict[str, str]


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
    """The exact prompt string: the most recent turns that fit `budget`, chat template applied,
    ready for the character's reply. Training and serving both build prompts here."""
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    messages = build_messages(recent_turns(turns, count, budget), persona)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
