"""Chandler's real lines, indexed by the selector: what the reply policy can quote.

A folder written by `python -m train lines`: `lines.jsonl` (each line: reply, context, season,
episode, prompt), `vectors.safetensors` (fp16: `selector`, the selector's embedding of each reply,
`message`, the untuned encoder's, for the selector's message term, and `prompt`, the untuned
encoder's of the line's prompt) and `index.json` (the id of the selector that built it: an index
built by another selector is refused, its vectors would mean nothing to this one).

A line's prompt is a message it would answer, written by a reader shown only the line
(`data/line_prompts.jsonl`, `{"line", "prompt"}`): matched against the conversation's message, it
says what situation a line fits better than the line's own words do. A line without a written
prompt stands for its own.

A line that names someone (`Does Ross know?`, or `Hey Mon!` by a friend's short name) is quoted
only in a conversation where that person appears, as a speaker or in a turn: otherwise it answers a
story the user is not in. Nor is a line that speaks of the person being answered in the third
person sent to them (`Does Ross know?` to Ross).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.dialogue import CHARACTER, Turn
from serve.character.selector import Selector, SelectorError, Vectors
from serve.character.style import embed

DEFAULT_LINES = Path(__file__).resolve().parents[2] / "models" / "chandler-lines"
DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "data" / "line_prompts.jsonl"
MIN_QUOTE_WORDS = 3  # shorter lines ("Yeah.", "What?") fit everything and say nothing
LINES, VECTORS, META = "lines.jsonl", "vectors.safetensors", "index.json"
NAME_MIN_TURNS = 3  # a speaker with fewer turns in the index's conversations is not a known person
NAME_CAPITALISED = 5  # `Ross` is written capitalised far more often than `ross`; `Will` is not
NICKNAMES = {"Mon": "Monica", "Rach": "Rachel", "Pheebs": "Phoebe", "Phoebs": "Phoebe", "Joe": "Joey"}  # in his lines
_WORD = re.compile(r"[A-Za-z]+")
_SPOKEN_OF = re.compile(r"\b([A-Za-z]+)\b(?!\s*(?:[,.!?]|$))")  # a word not followed by punctuation or the end


@dataclass(frozen=True)
class Line:
    text: str
    season: int
    episode: int
    score: float = 0.0


def normalized(text: str) -> str:
    return " ".join(text.lower().split())


def words(text: str) -> str:
    """The text's words, lower case, without punctuation."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def overlaps(padded: str, others: list[str]) -> bool:
    """Whether a space-padded `words` text is one of `others` (padded alike), a part of one, or has one as its part."""
    return any(padded in other or other in padded for other in others)


def said_in(turns: Sequence[Turn], avoid: Collection[str] = ()) -> set[str]:
    """What a conversation has already said, and the replies to `avoid` (a regenerated reply), as
    `normalized` texts: never sent in it."""
    return {normalized(turn["text"]) for turn in turns} | {normalized(text) for text in avoid}


def person_names(records: Sequence[dict]) -> frozenset[str]:
    """The people Chandler's lines may mention: the speakers of the indexed conversations whose
    name is mostly written capitalised (`Ross`, not `The Interviewer` or `Will`), Chandler left out."""
    speakers = Counter(turn["speaker"] for record in records for turn in record["context"])
    words = Counter(word for record in records for text in (record["reply"], *(turn["text"] for turn in record["context"]))
                    for word in _WORD.findall(text))
    return frozenset(name for name, turns in speakers.items()
                     if turns >= NAME_MIN_TURNS and name.isalpha() and name[0].isupper() and name != CHARACTER
                     and words[name] > NAME_CAPITALISED * words[name.lower()])


def person(name: str) -> str:
    """The person a name stands for: a friend's short name read as the name (`Mon` as `Monica`)."""
    return NICKNAMES.get(name, name)


def person_words(text: str) -> set[str]:
    """The words of `text`, each read by `person`."""
    return {person(word) for word in _WORD.findall(text)}


def third_person(text: str, names: frozenset[str]) -> frozenset[str]:
    """The `names` `text` speaks of rather than to: not followed by punctuation or the end (`Ross, wait!` speaks to Ross)."""
    return frozenset(who for who in map(person, _SPOKEN_OF.findall(text)) if who in names)


def people_in(turns: Sequence[Turn]) -> set[str]:
    """Everyone a conversation has in it: its speakers and the people its turns name."""
    return {person(turn["speaker"]) for turn in turns} | {who for turn in turns for who in person_words(turn["text"])}


def read_prompts(path: Path = DEFAULT_PROMPTS) -> dict[str, str]:
    """Line text -> its written prompt (`SelectorError` with one line when the file is unreadable)."""
    try:
        rows = [json.loads(row) for row in path.read_text(encoding="utf-8").splitlines() if row.strip()]
        return {row["line"]: row["prompt"] for row in rows}
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise SelectorError(f"{path}: cannot read the line prompts ({error!r}); "
                            'one {"line": ..., "prompt": ...} per line') from None


def prompt_texts(replies: Sequence[str], prompts: dict[str, str]) -> list[str]:
    """Each reply's prompt; a reply without one stands for its own."""
    return [prompts.get(reply, reply) for reply in replies]


def scored_prompts(selector: Selector, replies: Sequence[str]) -> list[str] | None:
    """The prompts the index gives `replies` (`DEFAULT_PROMPTS`), where the selector scores prompts."""
    return prompt_texts(replies, read_prompts()) if selector.prompt_weight else None


def write_index(records: Sequence[dict], selector: Selector, out: Path, prompts: dict[str, str], note: str = "") -> dict:
    """Embed the replies of `records` (pairs as `python -m data build` writes them) and their
    `prompts` (a reply without one stands for its own) and save the index."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    replies = [record["reply"] for record in records]
    own_prompts = prompt_texts(replies, prompts)
    with open(out / LINES, "w", encoding="utf-8") as file:
        for record, prompt in zip(records, own_prompts):
            line = {key: record[key] for key in ("reply", "context", "season", "episode")}
            file.write(json.dumps({**line, "prompt": prompt}, ensure_ascii=False) + "\n")
    save_file({"selector": selector.encode(replies).astype(np.float16), "message": embed(replies).astype(np.float16),
               "prompt": embed(own_prompts).astype(np.float16)}, str(out / VECTORS))
    meta = {"selector_id": selector.id, "selector": str(selector.folder.name), "lines": len(records),
            "written_prompts": sum(reply in prompts for reply in replies), "note": note}
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
        if selector.prompt_weight and "prompt" not in vectors:
            raise SelectorError(f"{self.folder}: the index has no line prompts, which this selector scores; "
                                "rebuild it with `python -m train lines`")
        self.vectors = Vectors(*(vectors[name].astype(np.float32) if name in vectors else None
                                 for name in ("selector", "message", "prompt")))
        self.quotable = np.array([len(line.text.split()) >= MIN_QUOTE_WORDS for line in self.lines])
        self.keys = [normalized(line.text) for line in self.lines]
        names = person_names(records)
        self.mentions = [frozenset(person_words(line.text)) & names for line in self.lines]
        self.spoken_of = [third_person(line.text, mentions) for line, mentions in zip(self.lines, self.mentions)]

    def top(self, vectors: Vectors, k: int, conversations: Sequence[Sequence[Turn]], avoid: Collection[str] = ()) -> list[list[Line]]:
        """For each conversation (`vectors` are its selector vectors), its k best quotable lines:
        none already said in it or in `avoid`, none naming someone who is not in it, none speaking
        of the person it answers in the third person."""
        return self.best(self.selector.score(vectors, self.vectors), k, conversations, avoid)

    def best(self, scores: np.ndarray, k: int, conversations: Sequence[Sequence[Turn]], avoid: Collection[str] = ()) -> list[list[Line]]:
        """For each conversation, its k best quotable lines by its row of (conversations × lines) `scores`;
        none in `avoid`, nor a part of one or one with one of them as its part."""
        avoided = [f" {words(text)} " for text in avoid]  # `overlaps` also catches the avoided texts themselves
        return [self._best(row, k, said_in(turns), people_in(turns), person(turns[-1]["speaker"]) if turns else "", avoided)
                for row, turns in zip(scores, conversations)]

    def _best(self, scores: np.ndarray, k: int, said: set[str], people: set[str], answered: str, avoided: list[str]) -> list[Line]:
        best: list[Line] = []
        for i in np.argsort(-scores):
            if (self.quotable[i] and self.keys[i] not in said and self.mentions[i] <= people and answered not in self.spoken_of[i]
                    and not (avoided and overlaps(f" {words(self.lines[i].text)} ", avoided))):
                said.add(self.keys[i])  # the same line from two episodes counts once
                line = self.lines[i]
                best.append(Line(line.text, line.season, line.episode, float(scores[i])))
                if len(best) == k:
                    break
        return best
