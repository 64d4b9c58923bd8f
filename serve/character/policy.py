"""The reply policy: `generate | quote | blend` (default blend).

- generate: the engine's reply, as before (`best_of` included).
- quote: the best real line among the index's top-k for the conversation.
- blend: candidates are `generations` sampled replies plus the top-k real lines; the selector
  scores all of them against the conversation. The best real line is sent when its score reaches
  the selector's threshold (calibrated on validation episodes, `models/chandler-selector`);
  otherwise the best-scoring generation.

Where the selector has a fitted LM rerank (`lm_weight`) and `rerank` is on, the top-k lines are first
reranked with the engine's LM (`serve/character/rerank.py`), and the threshold is the one fitted on
that reranked score; with `rerank` off, the selector's own score and threshold decide (faster).

A line already said in the channel's recent context (by anyone) is never sent again. The source of
each reply is `{"kind": "generated"}` or `{"kind": "quote", "season": S, "episode": E}`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from data.dialogue import Turn
from serve.character.lines import DEFAULT_LINES, Line, LineIndex, index_selector, normalized, said_in
from serve.character.rerank import LmRerank
from serve.character.selector import DEFAULT_SELECTOR, Selector, SelectorError, selector_id

MODES = ("generate", "quote", "blend")
DEFAULT_MODE = "blend"
TOP_K = 5  # real lines retrieved (and reranked) per conversation
BLEND_GENERATIONS = 4  # sampled replies per conversation in blend (more if best_of asks for more)
GENERATED = {"kind": "generated"}


@dataclass
class Choice:
    text: str
    source: dict = field(default_factory=lambda: dict(GENERATED))
    score: float | None = None


def quote(line: Line) -> Choice:
    return Choice(line.text, {"kind": "quote", "season": line.season, "episode": line.episode}, line.score)


def check_files(mode: str, selector: Path | str = DEFAULT_SELECTOR, lines: Path | str = DEFAULT_LINES) -> None:
    """Before anything starts: the selector and its index are there under quote and blend, and the
    index was built by this selector (`SelectorError` with one line otherwise). Loads no weights."""
    if mode not in MODES:
        raise SelectorError(f"reply mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode != "generate":
        index_selector(Path(lines), selector_id(Path(selector)))


class ReplyPolicy:
    """Chooses each reply among generations and real lines; needs the selector and the index
    except under `generate` (a missing one raises `SelectorError` with one line for the user)."""

    def __init__(self, mode: str = DEFAULT_MODE, selector: Path | str = DEFAULT_SELECTOR,
                 lines: Path | str = DEFAULT_LINES, top_k: int = TOP_K, rerank: bool = True) -> None:
        check_files(mode, selector, lines)
        self.mode, self.top_k = mode, top_k
        self.selector = self.index = self.rerank = self.threshold = None
        if mode != "generate":
            self.selector = Selector(selector)
            self.index = LineIndex(lines, self.selector)
            reranked = rerank and self.selector.lm_weight > 0
            self.rerank = LmRerank(self.selector.lm_weight) if reranked else None
            self.threshold = self.selector.rerank_threshold if reranked else self.selector.threshold

    def generations(self, sampling) -> int:
        """Sampled replies the engine makes per conversation under this mode (quote: none)."""
        if self.mode == "quote":
            return 0
        return max(sampling.best_of, BLEND_GENERATIONS) if sampling.temperature > 0 else 1

    def choose(self, conversations: Sequence[Sequence[Turn]], generated: Sequence[Sequence[str]], engine=None) -> list[Choice]:
        """The reply for each conversation (its turns including the new message) among its
        `generated` candidates and the index's lines; the encoders run once per batch, and so
        does the `engine`'s LM when the selector's lines are reranked (it must be given then)."""
        said = [said_in(turns) for turns in conversations]
        fresh = [[text for text in group if text.strip() and normalized(text) not in seen]
                 for group, seen in zip(generated, said)]
        if self.mode == "generate":
            return [Choice(group[0] if group else (raw[0] if raw else "")) for group, raw in zip(fresh, generated)]
        conversation_vectors = self.selector.conversations(conversations)
        lines = self.index.top(conversation_vectors, self.top_k, conversations)
        if self.rerank is not None:
            self.rerank.bind(engine)
            lines = self.rerank.rerank(conversations, lines)
        flat = [text for group in fresh for text in group]
        scores = self.selector.score(conversation_vectors, self.selector.replies(flat)) if flat else None
        choices, start = [], 0
        for i, (group, raw) in enumerate(zip(fresh, generated)):
            own = scores[i, start : start + len(group)] if group else np.zeros(0)
            start += len(group)
            if lines[i] and (self.mode == "quote" or not group or lines[i][0].score >= self.threshold):
                choices.append(quote(lines[i][0]))
            elif group:
                best = int(np.argmax(own))
                choices.append(Choice(group[best], dict(GENERATED), float(own[best])))
            else:
                choices.append(Choice(raw[0] if raw else ""))
        return choices


def respond(engine, policy: ReplyPolicy, conversations: Sequence[Sequence[Turn]], sampling) -> list[tuple]:
    """(Reply, source) for each conversation: the engine's candidates generated as one batch, then
    the policy's choice. Under `generate` the engine alone answers (its own best_of included)."""
    from serve.engine import Reply

    if policy.mode == "generate":
        return [(reply, dict(GENERATED)) for reply in engine.generate(conversations, sampling)]
    n = policy.generations(sampling)
    flat = engine.generate([turns for turns in conversations for _ in range(n)], replace(sampling, best_of=1)) if n else []
    groups = [flat[i * n : (i + 1) * n] for i in range(len(conversations))]
    choices = policy.choose(conversations, [[reply.text for reply in group] for group in groups], engine)
    answers = []
    for turns, group, choice in zip(conversations, groups, choices):
        prompt_tokens = group[0].prompt_tokens if group else len(engine.prompt_ids(turns))
        answers.append((Reply(choice.text, prompt_tokens, engine.count_tokens(choice.text)), choice.source))
    return answers
