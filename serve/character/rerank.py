"""The LM rerank: the selector's top lines for a conversation, rescored with the engine's own LM.

A line's reranked score is its selector score plus `lm_weight` × its PMI under the serving
engine (base + adapter): the line's summed log-probability after the conversation's prompt minus
after a neutral one, so a line the LM finds likely anywhere ("Okay.") gains nothing from it. The
selector and the LM miss different replies; `python -m train rerank` fits the weight, and the
quoting threshold on the reranked score, on validation episodes (`selector.json`). Where the
selector has a readers' preference (`serve/character/preference.py`), the lines are ordered by it
instead; their scores stay selector + LM, for the threshold.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from data.dialogue import Turn
from serve.character.lines import Line
from serve.character.preference import Preference, per_group

NEUTRAL_TURNS: list[Turn] = [{"speaker": "Someone", "text": "..."}]  # "no conversation": the PMI's prior


class LmRerank:
    """PMI of replies under one engine (`bind` another and the cached priors are dropped)."""

    def __init__(self, weight: float, preference: Preference | None = None) -> None:
        self.weight, self.preference = weight, preference
        self.engine = None
        self._priors: dict[str, float] = {}  # reply -> summed log-prob after NEUTRAL_TURNS

    def bind(self, engine) -> None:
        if engine is None:
            raise ValueError("the selector's lines are reranked with the engine's LM: pass the engine")
        if engine is not self.engine:
            self.engine, self._priors = engine, {}

    def priors(self, replies: Sequence[str]) -> np.ndarray:
        """Each reply's summed log-prob after NEUTRAL_TURNS (computed once per reply and engine)."""
        unseen = sorted(set(replies) - self._priors.keys())
        if unseen:
            priors = self.engine.reply_log_probs([NEUTRAL_TURNS] * len(unseen), unseen)
            self._priors.update(zip(unseen, map(sum, priors)))
        return np.array([self._priors[reply] for reply in replies])

    def pmi(self, conversations: Sequence[Sequence[Turn]], replies: Sequence[str]) -> np.ndarray:
        conditional = self.engine.reply_log_probs(conversations, replies) if replies else []
        return np.array([sum(log_probs) for log_probs in conditional]) - self.priors(replies)

    def rerank(self, conversations: Sequence[Sequence[Turn]], lines: Sequence[Sequence[Line]]) -> list[list[Line]]:
        """Each conversation's lines scored selector + weight × PMI, best first (by the readers'
        preference where there is one, else by that score); one LM batch."""
        pairs = [(turns, line) for turns, group in zip(conversations, lines) for line in group]
        pmi = self.pmi([turns for turns, _ in pairs], [line.text for _, line in pairs])
        values = per_group(pmi, lines)
        rescored = [[replace(line, score=line.score + self.weight * float(value)) for line, value in zip(group, own)]
                    for group, own in zip(lines, values)]
        if self.preference is None:
            ranks = [[line.score for line in group] for group in rescored]
        else:
            ranks = self.preference.scores(conversations, [[line.text for line in group] for group in lines],
                                           [[line.score for line in group] for group in lines], values)
        return [[group[i] for i in np.argsort(-np.asarray(rank), kind="stable")] for group, rank in zip(rescored, ranks)]
