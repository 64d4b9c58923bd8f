"""Transcripts → (context, reply) pairs for one character, cleaned and split by episode."""
from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import pandas as pd

STAGE_DIRECTION_SPEAKERS = {"scene directions", "scene direction", "stage directions"}
MAX_TURN_CHARS = 400
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}

_BRACKETED = re.compile(r"\([^)]*\)|\[[^\]]*\]")
_QUOTES = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "´": "'", "`": "'", "–": "-", "—": " - "})
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.!?;:])")


@dataclass
class Pair:
    season: int
    episode: int
    scene: int
    context: list[dict[str, str]]
    reply: str


@dataclass
class Skipped:
    """Rows and pairs left out, and why (written to stats.json)."""

    counts: Counter = field(default_factory=Counter)

    def add(self, reason: str, count: int = 1) -> None:
        if count:
            self.counts[reason] += count


def clean_text(text: str, max_chars: int = MAX_TURN_CHARS) -> str:
    """Drop inline stage directions, normalise quotes and whitespace, cap the length at a word."""
    text = _BRACKETED.sub(" ", text.translate(_QUOTES)).replace("…", "...")
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(text.split()))
    if len(text) > max_chars:
        text = text[:max_chars].rsplit(" ", 1)[0] + "..."
    return text


def first_name(speaker: str) -> str:
    if speaker.strip("#").lower() == "all":
        return "Everyone"
    return speaker.split()[0] if speaker.split() else ""


def is_character(speaker: str, character: str) -> bool:
    """`Chandler Bing` matches `Chandler Bing` and `Chandler`."""
    speaker, character = speaker.lower(), character.lower()
    return speaker == character or speaker == character.split()[0]


def spoken_lines(utterances: pd.DataFrame, skipped: Skipped) -> pd.DataFrame:
    """Rows said by one named speaker, cleaned, in order, with a `stretch` number.

    A stage direction, a line said by several people or one left empty by cleaning ends a
    stretch: a reply's context never reaches across it (the action or the speaker changed).
    """
    ids = ["season", "episode", "scene", "utterance"]
    malformed = utterances[ids].isna().any(axis=1)
    skipped.add("malformed row (non-numeric ids)", int(malformed.sum()))
    lines = utterances[~malformed].astype({column: int for column in ids}).sort_values(ids, kind="stable")
    lines["text"] = lines["text"].map(clean_text)
    directions = lines["speaker"].str.lower().isin(STAGE_DIRECTION_SPEAKERS)
    unnamed = ~directions & (lines["speaker"] == "")
    empty = ~directions & ~unnamed & (lines["text"] == "")
    skipped.add("stage direction row", int(directions.sum()))
    skipped.add("no single speaker", int(unnamed.sum()))
    skipped.add("empty after removing stage directions", int(empty.sum()))
    breaks = directions | unnamed | empty
    lines["stretch"] = breaks.astype(int).groupby([lines[c] for c in ids[:3]]).cumsum()
    return lines[~breaks]


def make_pairs(lines: pd.DataFrame, character: str, context_turns: int) -> Iterable[Pair]:
    """Each line of `character` whose preceding line (same stretch of a scene) is someone else's."""
    for (season, episode, scene, _), scene_lines in lines.groupby(
        ["season", "episode", "scene", "stretch"], sort=False
    ):
        turns = [{"speaker": first_name(s), "text": t} for s, t in zip(scene_lines["speaker"], scene_lines["text"])]
        said_by_character = [is_character(s, character) for s in scene_lines["speaker"]]
        for index in range(1, len(turns)):
            if said_by_character[index] and not said_by_character[index - 1]:
                context = turns[max(0, index - context_turns) : index]
                yield Pair(int(season), int(episode), int(scene), context, turns[index]["text"])


def pairs_from_csv(rows: pd.DataFrame, character: str, skipped: Skipped) -> list[Pair]:
    """The original project's `character,q,a` rows: one pair each; each row is its own 'episode'."""
    pairs = []
    for number, (speaker, question, answer) in enumerate(rows.itertuples(index=False), start=1):
        if not is_character(speaker.strip(), character):
            continue
        question, answer = clean_text(question), clean_text(answer)
        if not question or not answer:
            skipped.add("empty after removing stage directions")
            continue
        pairs.append(Pair(0, number, 0, [{"speaker": "Someone", "text": question}], answer))
    return pairs


def split_episodes(episodes: Iterable[tuple[int, int]], seed: int) -> dict[tuple[int, int], str]:
    """Seeded 80/10/10 assignment of whole episodes to train/validation/test."""
    ordered = sorted(set(episodes))
    random.Random(seed).shuffle(ordered)
    n_validation = max(1, round(len(ordered) * SPLIT_FRACTIONS["validation"])) if len(ordered) >= 3 else 0
    n_test = max(1, round(len(ordered) * SPLIT_FRACTIONS["test"])) if len(ordered) >= 3 else 0
    assignment = {}
    for position, key in enumerate(ordered):
        if position < n_test:
            assignment[key] = "test"
        elif position < n_test + n_validation:
            assignment[key] = "validation"
        else:
            assignment[key] = "train"
    return assignment


def split_pairs(pairs: list[Pair], seed: int) -> dict[str, list[Pair]]:
    assignment = split_episodes(((p.season, p.episode) for p in pairs), seed)
    splits: dict[str, list[Pair]] = {name: [] for name in SPLIT_FRACTIONS}
    for pair in pairs:
        splits[assignment[(pair.season, pair.episode)]].append(pair)
    return splits


def as_record(pair: Pair) -> dict:
    return asdict(pair)
