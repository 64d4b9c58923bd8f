"""The readers' order of a conversation's top lines, fitted to their picks (`python -m train preferences`).

Among the selector's top lines, the selector and the LM barely predict which one a reader picks
(README: about 1 pick in 4 among 5 lines, while two readers agree on 2 in 3). Readers labelled
their pick among the top lines of validation conversations, and a conditional logit (softmax over
each conversation's lines) was fitted to their picks on a few features of each line; the policy
sends the line it scores highest. The threshold still applies to the line's fit score (selector +
LM), which the preference does not change.

Features of a line, in `FEATURES` order, then the untuned encoder's embedding of the line itself
(what kind of line readers like, whatever the conversation).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.dialogue import Turn
from serve.character.selector import SelectorError, last_message
from serve.character.style import embed

WEIGHTS = "preference.safetensors"
FEATURES = ("selector score", "PMI", "untuned message–line cosine", "log words", "ends with ?")


def per_group(values: np.ndarray, groups: Sequence[Sequence], axis: int = 0) -> list[np.ndarray]:
    """`values` of all groups' items, laid end to end along `axis`, cut back into one block per group."""
    return np.split(values, np.cumsum([len(group) for group in groups])[:-1], axis=axis)


def features(conversations: Sequence[Sequence[Turn]], lines: Sequence[Sequence[str]],
             selector_scores: Sequence[Sequence[float]], pmi: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """For each conversation, (lines × features) of its candidate lines: `FEATURES`, then the line
    embedding; one encoder call for the whole batch."""
    texts = [text for group in lines for text in group]
    vectors = embed(texts + [last_message(turns) for turns in conversations])
    rows = []
    for group, own, message, scores, values in zip(lines, per_group(vectors[: len(texts)], lines),
                                                   vectors[len(texts):], selector_scores, pmi):
        named = [[score, value, line @ message, np.log(max(len(text.split()), 1)), text.rstrip().endswith("?")]
                 for text, score, value, line in zip(group, scores, values, own)]
        rows.append(np.hstack([np.array(named, dtype=np.float64).reshape(len(group), len(FEATURES)), own]))
    return rows


class Preference:
    """A linear score over `features`; the higher, the likelier a reader picks the line."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)

    @classmethod
    def load(cls, folder: Path | str) -> Preference | None:
        """The selector folder's fitted preference, or None where it has none."""
        path = Path(folder) / WEIGHTS
        if not path.is_file():
            return None
        from safetensors.numpy import load_file

        try:
            return cls(load_file(str(path))["weights"])
        except (OSError, ValueError, KeyError) as error:
            raise SelectorError(f"{path}: the preference weights cannot be read ({error})") from None

    def save(self, folder: Path | str) -> None:
        from safetensors.numpy import save_file

        save_file({"weights": self.weights.astype(np.float32)}, str(Path(folder) / WEIGHTS))

    def scores(self, conversations: Sequence[Sequence[Turn]], lines: Sequence[Sequence[str]],
               selector_scores: Sequence[Sequence[float]], pmi: Sequence[Sequence[float]]) -> list[np.ndarray]:
        """For each conversation, its lines' scores (one encoder call for the batch)."""
        return [matrix @ self.weights for matrix in features(conversations, lines, selector_scores, pmi)]
