"""Chandler's real lines, indexed by the selector: what the reply policy can quote.

A folder written by `python -m train lines`: `lines.jsonl` (each line: reply, context, season,
episode), `vectors.safetensors` (fp16: `selector`, the selector's embedding of each reply, and
`message`, the untuned encoder's, for the selector's message term) and `index.json` (the id of the
selector that built it: an index built by another selector is refused, its vectors would mean
nothing to this one).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.character.selector import Selector, SelectorError, Vectors
from serve.character.style import embed

DEFAULT_LINES = Path(__file__).resolve().parents[2] / "models" / "chandler-lines"
MIN_QUOTE_WORDS = 3  # shorter lines ("Yeah.", "What?") fit everything and say nothing
LINES, VECTORS, META = "lines.jsonl", "vectors.safetensors", "index.json"


@dataclass(frozen=True)
class Line:
    text: str
    season: int
    episode: int
    score: float = 0.0


def normalized(text: str) -> str:
    return " ".join(text.lower().split())


def write_index(records: Sequence[dict], selector: Selector, out: Path, note: str = "") -> dict:
    """Embed the replies of `records` (pairs as `python -m data build` writes them) and save the index."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    replies = [record["reply"] for record in records]
    with open(out / LINES, "w", encoding="utf-8") as file:
        for record in records:
            line = {key: record[key] for key in ("reply", "context", "season", "episode")}
            file.write(json.dumps(line, ensure_ascii=False) + "\n")
    save_file({"selector": selector.encode(replies).astype(np.float16), "message": embed(replies).astype(np.float16)},
              str(out / VECTORS))
    meta = {"selector_id": selector.id, "selector": str(selector.folder.name), "lines": len(records), "note": note}
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def index_selector(folder: Path, expected: str) -> dict:
    """The index's description; `SelectorError` when it is missing or was built by another selector."""
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as error:
        raise SelectorError(f"{folder}: no line index here ({error}); build it with `python -m train lines`") from None
    if meta.get("selector_id") != expected:
        raise SelectorError(f"{folder}: built with another selector ({meta.get('selector_id')}, not "
                            f"{expected}); rebuild it with `python -m train lines`")
    return meta


class LineIndex:
    """Top-k of Chandler's lines for a conversation, by the selector's score."""

    def __init__(self, folder: Path | str, selector: Selector) -> None:
        from safetensors.numpy import load_file

        self.folder, self.selector = Path(folder), selector
        index_selector(self.folder, selector.id)
        try:
            vectors = load_file(str(self.folder / VECTORS))
            with open(self.folder / LINES, encoding="utf-8") as file:
                records = [json.loads(line) for line in file if line.strip()]
        except (OSError, ValueError) as error:
            raise SelectorError(f"{self.folder}: the line index cannot be read ({error}); rebuild it with "
                                "`python -m train lines`") from None
        self.lines = [Line(r["reply"], int(r["season"]), int(r["episode"])) for r in records]
        self.vectors = Vectors(vectors["selector"].astype(np.float32), vectors["message"].astype(np.float32))
        self.quotable = np.array([len(line.text.split()) >= MIN_QUOTE_WORDS for line in self.lines])
        self.keys = [normalized(line.text) for line in self.lines]

    def top(self, conversations: Vectors, k: int, exclude: Sequence[Iterable[str]]) -> list[list[Line]]:
        """For each conversation, its k best quotable lines, none of them in its `exclude` (texts already said)."""
        scores = self.selector.score(conversations, self.vectors)
        return [self._best(row, k, {normalized(text) for text in said}) for row, said in zip(scores, exclude)]

    def _best(self, scores: np.ndarray, k: int, said: set[str]) -> list[Line]:
        best: list[Line] = []
        for i in np.argsort(-scores):
            if self.quotable[i] and self.keys[i] not in said:
                said.add(self.keys[i])  # the same line from two episodes counts once
                line = self.lines[i]
                best.append(Line(line.text, line.season, line.episode, float(scores[i])))
                if len(best) == k:
                    break
        return best
