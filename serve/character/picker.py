"""An LLM that picks his line among the top lines: optional, any OpenAI-compatible chat endpoint.

A reader's pick among blend's top lines wins far more blind judgments than the readers'
preference that runs on 2 CPU cores (README, "What a perfect picker would reach" and "An LLM
picker"): the lines are there, the pick falls short, and no small model here reads them like the
readers. An operator with a larger model (Ollama or vLLM beside the cluster, or a hosted API) can
have it pick instead, among the top 20 lines by default: read by a reader, 20 lines won more
judgments than the 5 the policy itself looks at. It is asked the readers' own question about the
conversation and the numbered lines, and answers with a number: the reply is still his real line,
never the model's text. Only the turns the selector reads are sent. Any failure (timeout, HTTP
error, an answer that is no option's number) leaves the order as it was, with a warning in the log
that names neither the key nor the conversation. A model too small for the task answers by
position and makes the pick worse: `python -m train preferences picker` checks one against the
readers' picks before it serves.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from data.dialogue import Turn
from serve.character.lines import Line
from serve.character.selector import CONTEXT_TURNS

log = logging.getLogger(__name__)

INSTRUCTION = ("Chandler Bing of the TV show Friends is in this conversation; the last turn is what he answers. "
               "Pick the one option that is the best reply for Chandler here: the most in character for him and "
               "the best fit for the conversation. Answer with the option's number only.")
ANSWER = re.compile(r"\d+")


class LlmPicker:
    """Asks `model` at `url` (the API's base, e.g. `http://localhost:11434/v1`) which of a
    conversation's top `lines` lines to send."""

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout_s: float = 5.0, lines: int = 20) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model, self.lines = model, lines
        self.client = httpx.Client(base_url=url.rstrip("/") + "/", headers=headers, timeout=timeout_s)

    @staticmethod
    def messages(turns: Sequence[Turn], options: Sequence[str]) -> list[dict[str, str]]:
        conversation = "\n".join(f"{turn['speaker']}: {turn['text']}" for turn in turns[-CONTEXT_TURNS:])
        numbered = "\n".join(f"{number}. {text}" for number, text in enumerate(options, 1))
        return [{"role": "system", "content": INSTRUCTION},
                {"role": "user", "content": f"Conversation:\n{conversation}\n\nOptions:\n{numbered}"}]

    def answer(self, messages: list[dict[str, str]]) -> str:
        """The model's raw answer to `messages`; raises on HTTP errors and malformed responses."""
        body = {"model": self.model, "messages": messages, "max_tokens": 4, "temperature": 0}
        response = self.client.post("chat/completions", json=body)
        response.raise_for_status()
        return response.json()["choices"][0]["message"]["content"] or ""

    def pick(self, turns: Sequence[Turn], options: Sequence[str]) -> int | None:
        """The index of the option the model picks, or None where it gives no usable answer."""
        try:
            answer = self.answer(self.messages(turns, options))
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as error:
            log.warning("the line picker gave no answer (%s); the policy's own line stands", type(error).__name__)
            return None
        found = ANSWER.search(answer)
        if found is None or not 1 <= int(found.group()) <= len(options):
            log.warning("the line picker's answer names no option (%d characters); the policy's own line stands", len(answer))
            return None
        return int(found.group()) - 1

    def order(self, conversations: Sequence[Sequence[Turn]], lines: Sequence[Sequence[Line]]) -> list[list[Line]]:
        """Each conversation's lines with the picked one first (the rest as they were); the
        conversations of a batch are asked at once."""
        asked = [i for i, group in enumerate(lines) if len(group) > 1]
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(asked)))) as pool:
            picks = dict(zip(asked, pool.map(lambda i: self.pick(conversations[i], [line.text for line in lines[i]]), asked)))
        ordered = []
        for i, group in enumerate(lines):
            chosen = picks.get(i)
            ordered.append(list(group) if chosen is None else [group[chosen], *group[:chosen], *group[chosen + 1:]])
        return ordered


def configured_picker(settings) -> LlmPicker | None:
    """The picker that `serve.settings.Settings` names (CHANDLER_PICKER_URL, ...), or None."""
    if not settings.picker_url:
        return None
    return LlmPicker(settings.picker_url, settings.picker_model, settings.picker_api_key, settings.picker_timeout_s,
                     settings.picker_lines)
