"""The response selector: how well a reply fits a conversation.

A dual encoder (all-MiniLM-L6-v2 fine-tuned by `python -m train selector` with in-batch
negatives): the conversation's recent turns go through it as one text, newest turn first (so
truncation drops the oldest turn, never the message being answered), each candidate reply as
another; the score is their cosine. The untuned encoder's message–reply cosine is added with a
weight fitted on validation episodes (`metrics.json` → `message_weight`). A line of the index also
has a prompt: a message it answers, written by a reader who saw only the line (`data/line_prompts.jsonl`);
the untuned message–prompt cosine is added with `prompt_weight` (`python -m train prompts`).
"""
from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from data.dialogue import Turn
from serve.character.style import embed

DEFAULT_SELECTOR = Path(__file__).resolve().parents[2] / "models" / "chandler-selector"
CONTEXT_TURNS = 4  # as many as a training pair holds (`python -m data build`, context_turns)
SETTINGS = "selector.json"


class SelectorError(RuntimeError):
    """The selector or the line index cannot be used; the message is one line for the user."""


def context_text(turns: Sequence[Turn]) -> str:
    """The conversation as the selector reads it: the last CONTEXT_TURNS turns, newest first."""
    recent = list(turns)[-CONTEXT_TURNS:]
    return " | ".join(f"{turn['speaker']}: {turn['text']}" for turn in reversed(recent))


def last_message(turns: Sequence[Turn]) -> str:
    return turns[-1]["text"] if turns else ""


@functools.lru_cache(maxsize=2)
def load_selector_encoder(folder: str):
    from sentence_transformers import SentenceTransformer

    # Shipped in fp16 to stay small; computed in fp32, which CPUs run much faster.
    return SentenceTransformer(folder, local_files_only=True, device="cpu", model_kwargs={"dtype": "float32"})


def selector_id(folder: Path) -> str:
    """What identifies a trained selector: its weights' digest, written at training time."""
    return read_settings(folder)["id"]


def read_settings(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / SETTINGS).read_text())
    except (OSError, ValueError) as error:
        raise SelectorError(f"{folder}: no selector here ({error}); train one with `python -m train selector`") from None


def write_settings(folder: Path, settings: dict) -> None:
    (Path(folder) / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")


class Vectors(NamedTuple):
    """Unit vectors of texts: the tuned selector's, the untuned encoder's (None when unused), and
    for the index's lines the untuned encoder's of their prompts (None for other replies)."""

    tuned: np.ndarray
    message: np.ndarray | None
    prompt: np.ndarray | None = None


class Selector:
    """Scores candidate replies against conversations."""

    def __init__(self, folder: Path | str = DEFAULT_SELECTOR) -> None:
        self.folder = Path(folder)
        settings = read_settings(self.folder)
        self.id = settings["id"]
        self.message_weight = float(settings.get("message_weight", 0.0))
        self.prompt_weight = float(settings.get("prompt_weight", 0.0))
        self.threshold = float(settings.get("threshold", 1.0))  # on the selector's own score
        rerank = settings.get("rerank", {})  # the LM rerank's fit (serve/character/rerank.py), if any
        self.lm_weight = float(rerank.get("lm_weight", 0.0))
        self.rerank_threshold = float(rerank.get("threshold", self.threshold))  # on the reranked score
        try:
            self.encoder = load_selector_encoder(str(self.folder))
        except (OSError, ValueError) as error:
            raise SelectorError(f"{self.folder}: the selector's weights cannot be loaded ({error})") from None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.encoder.get_sentence_embedding_dimension()), dtype=np.float32)
        return self.encoder.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)

    def conversations(self, conversations: Sequence[Sequence[Turn]]) -> Vectors:
        """Both sides' vectors of conversations, in one batch per encoder."""
        needs_message = self.message_weight or self.prompt_weight
        return Vectors(self.encode([context_text(turns) for turns in conversations]),
                       embed([last_message(turns) for turns in conversations]) if needs_message else None)

    def replies(self, replies: Sequence[str], prompts: Sequence[str] | None = None) -> Vectors:
        """Replies' vectors; with `prompts` (one per reply: the index's lines), theirs too."""
        return Vectors(self.encode(replies), embed(list(replies)) if self.message_weight else None,
                       embed(list(prompts)) if prompts is not None and self.prompt_weight else None)

    def score(self, conversations: Vectors, replies: Vectors) -> np.ndarray:
        """(conversations × replies) scores: tuned cosine + message_weight × untuned message–reply
        cosine + prompt_weight × untuned message–prompt cosine (for replies with prompts)."""
        total = conversations.tuned @ replies.tuned.T
        if self.message_weight:
            total = total + self.message_weight * (conversations.message @ replies.message.T)
        if self.prompt_weight and replies.prompt is not None:
            total = total + self.prompt_weight * (conversations.message @ replies.prompt.T)
        return total
