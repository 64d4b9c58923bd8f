"""What every engine offers: `Sampling` in, `Reply` out, batched `generate` and word-by-word `stream`."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from data.dialogue import Turn


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; temperature 0 means greedy decoding."""

    temperature: float = 0.8
    top_p: float = 0.9
    repetition_penalty: float = 1.15
    max_new_tokens: int = 60
    seed: int | None = None
    best_of: int = 1  # >1: sample this many replies per request in one batch, return the most Chandler-like

    @property
    def candidates(self) -> int:
        """Replies generated per request: `best_of`, except under greedy decoding, where they would be identical."""
        return self.best_of if self.temperature > 0 else 1


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int


class Engine(Protocol):
    """The one interface the Serve deployment, the terminal chat, evaluation and the benchmarks use."""

    def count_tokens(self, text: str) -> int: ...

    def prompt(self, turns: Sequence[Turn]) -> str: ...

    def prompt_ids(self, turns: Sequence[Turn]) -> list[int]: ...  # data.dialogue.prompt_ids with this engine's tokenizer

    def generate(self, conversations: Sequence[Sequence[Turn]], sampling: Sampling = Sampling()) -> list[Reply]: ...

    def stream(self, turns: Sequence[Turn], sampling: Sampling = Sampling()) -> Iterator[str]: ...

    def reply_log_probs(self, conversations: Sequence[Sequence[Turn]], replies: Sequence[str]) -> list[list[float]]: ...
