"""The reply policy: `generate | quote | blend` (default blend).

- generate: the engine's reply, as before (`best_of` included).
- quote: the best real line among the index's top-k for the conversation (a generation only where
  every one of them was already said).
- blend: the best of the top-k real lines is sent when its score reaches the selector's threshold
  (calibrated on validation episodes, `models/chandler-selector`); otherwise `generations` sampled
  replies, and the one the selector scores best against the conversation. The engine generates
  only for the conversations that need it (`respond`), so a quoted reply costs no generation.

Where the selector has a fitted LM rerank (`lm_weight`) and `rerank` is on, the top-k lines are first
reranked with the engine's LM (`serve/character/rerank.py`), and the threshold is the one fitted on
that reranked score; where the selector also has a readers' preference (`preference.py`), the
best line is the one it ranks first. With `rerank` off, the selector's own score and threshold
decide (faster). Where an LLM picker is configured (`picker.py`), it picks among the ordered lines
instead (its own number of them, which are all reranked), and the threshold applies to its line.

A line already said in the channel's recent context (by anyone) is never sent again. The source of
each reply is `{"kind": "generated"}` or `{"kind": "quote", "season": S, "episode": E}`.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from data.dialogue import Turn
from serve.character.lines import DEFAULT_LINES, Line, LineIndex, index_selector, normalized, said_in
from serve.character.picker import LlmPicker
from serve.character.preference import Preference
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
                 lines: Path | str = DEFAULT_LINES, top_k: int = TOP_K, rerank: bool = True,
                 picker: LlmPicker | None = None) -> None:
        check_files(mode, selector, lines)
        self.mode, self.top_k, self.picker = mode, top_k, picker
        self.selector = self.index = self.rerank = self.threshold = None
        if mode != "generate":
            self.selector = Selector(selector)
            self.index = LineIndex(lines, self.selector)
            reranked = rerank and self.selector.lm_weight > 0
            self.rerank = LmRerank(self.selector.lm_weight, Preference.load(selector)) if reranked else None
            self.threshold = self.selector.rerank_threshold if reranked else self.selector.threshold

    def generations(self, sampling) -> int:
        """Sampled replies the engine makes for a conversation that no real line answers (quote: one,
        where every retrieved line was already said)."""
        if self.mode == "quote":
            return 1
        return max(sampling.best_of, BLEND_GENERATIONS) if sampling.temperature > 0 else 1

    def lines(self, conversations: Sequence[Sequence[Turn]], engine=None, avoid: Collection[str] = ()) -> list[Line | None]:
        """Each conversation's best real line not yet said in it nor in `avoid` (None if none is
        left); the encoders run once per batch, and so does the `engine`'s LM when the lines are
        reranked (it must be given then); a configured picker is asked for the conversations of the
        batch at once."""
        depth = self.top_k if self.picker is None else max(self.top_k, self.picker.lines)
        lines = self.index.top(self.selector.conversations(conversations), depth, conversations, avoid)
        if self.rerank is not None:
            self.rerank.bind(engine)
            lines = self.rerank.rerank(conversations, lines)
        if self.picker is not None:
            lines = self.picker.order(conversations, lines)
        return [group[0] if group else None for group in lines]

    def sendable(self, line: Line | None) -> bool:
        """Whether the line answers without generations: under quote any line, under blend one
        whose score reaches the threshold."""
        return line is not None and (self.mode == "quote" or line.score >= self.threshold)

    def choose(self, conversations: Sequence[Sequence[Turn]], generated: Sequence[Sequence[str]], engine=None,
               lines: Sequence[Line | None] | None = None, avoid: Collection[str] = ()) -> list[Choice]:
        """The reply for each conversation (its turns including the new message) among its
        `generated` candidates and its best real line (`lines`, looked up here when not given);
        nothing already said in it, nor in `avoid`."""
        said = [said_in(turns, avoid) for turns in conversations]
        fresh = [[text for text in group if text.strip() and normalized(text) not in seen]
                 for group, seen in zip(generated, said)]
        if self.mode == "generate":
            return [Choice(group[0] if group else (raw[0] if raw else "")) for group, raw in zip(fresh, generated)]
        lines = self.lines(conversations, engine, avoid) if lines is None else lines
        best = self.best_generated(conversations, fresh)
        choices = []
        for line, generation, raw in zip(lines, best, generated):
            if self.sendable(line) or (line is not None and generation is None):
                choices.append(quote(line))
            else:
                choices.append(generation or Choice(raw[0] if raw else ""))
        return choices

    def best_generated(self, conversations: Sequence[Sequence[Turn]], fresh: Sequence[Sequence[str]]) -> list[Choice | None]:
        """For each conversation, the candidate the selector scores best against it (None if none)."""
        scored = [i for i, group in enumerate(fresh) if group]
        best: list[Choice | None] = [None] * len(fresh)
        if not scored:
            return best
        flat = [text for i in scored for text in fresh[i]]
        scores = self.selector.score(self.selector.conversations([conversations[i] for i in scored]), self.selector.replies(flat))
        start = 0
        for row, i in enumerate(scored):
            own = scores[row, start : start + len(fresh[i])]
            start += len(fresh[i])
            top = int(np.argmax(own))
            best[i] = Choice(fresh[i][top], dict(GENERATED), float(own[top]))
        return best


def respond(engine, policy: ReplyPolicy, conversations: Sequence[Sequence[Turn]], sampling,
            avoid: Collection[str] = ()) -> list[tuple]:
    """(Reply, source) for each conversation. Under `generate` the engine alone answers (its own
    best_of included). Otherwise the real lines are looked up first, and the engine generates
    candidates (one batch) only for the conversations that no line answers, and `choose` applies
    its usual rule: a quoted reply waits for no generation it would discard. Nothing in `avoid` is
    sent under quote and blend (a regenerate's replaced reply: "another one" must be another)."""
    from serve.engine import Reply

    if policy.mode == "generate":
        return [(reply, dict(GENERATED)) for reply in engine.generate(conversations, sampling)]
    lines = policy.lines(conversations, engine, avoid)
    unanswered = [i for i, line in enumerate(lines) if not policy.sendable(line)]
    n = policy.generations(sampling)
    flat = engine.generate([conversations[i] for i in unanswered for _ in range(n)], replace(sampling, best_of=1)) if unanswered else []
    groups = {i: flat[k * n : (k + 1) * n] for k, i in enumerate(unanswered)}
    choices = policy.choose(conversations, [[reply.text for reply in groups.get(i, [])] for i in range(len(conversations))],
                            engine, lines, avoid)
    answers = []
    for i, (turns, choice) in enumerate(zip(conversations, choices)):
        group = groups.get(i)
        prompt_tokens = group[0].prompt_tokens if group else len(engine.prompt_ids(turns))
        answers.append((Reply(choice.text, prompt_tokens, engine.count_tokens(choice.text)), choice.source))
    return answers
