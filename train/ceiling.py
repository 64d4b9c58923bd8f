"""`python -m train ceiling`: how far a perfect picker among his retrieved lines would get in the
blind comparison, with readers standing in for the picker.

`items`: the blind comparison's conversations (`train.blind`; a later `draw` for a fresh round),
each with the selector's top `depth` lines from the index without test episodes (the pool blend
picks from when `depth` is the policy's `TOP_K`), in the readers' format of `python -m train
preferences`: `items.jsonl` and `key.json`.

`pairs`: the line a reader picked (`labels.jsonl` of each items folder) against the rivals of a
blind round (its `examples.json`: generate, naive quote, real line), shuffled together with that
round's own pairs (blend against the same rivals) so that one panel judges both: `pairs.jsonl` and
`key.json` (the system under test: "reader's pick of the top N", or blend). Judges write
`judgments.jsonl`; `python -m train blind score --out DIR` scores them.
"""
from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from serve.character.policy import ReplyPolicy
from train.blind import EVERYDAY, blind_conversations, blind_pair, check_held_out, context_lines, round_pairs, write_pairs
from train.examples import TrainDataError
from train.preferences import read_picks, write_items

RIVALS = ("generate", "naive quote", "real line")


def make_items(data: Path, selector: Path, lines: Path, out: Path, depth: int, seed: int = 0, draw: int = 0,
               everyday: Sequence[str] = EVERYDAY) -> dict:
    conversations = blind_conversations(data, seed, draw, everyday)
    policy = ReplyPolicy("quote", selector, lines)
    check_held_out(policy.index, conversations)
    summary = write_items(out, policy, [conversation["turns"] for conversation in conversations], depth, seed)
    return {**summary, "depth": depth}


def read_readers(folder: Path) -> tuple[list[dict], int]:
    """Each conversation's context lines and the line the reader picked (in the blind comparison's
    order), and the depth the items were made with."""
    try:
        key = json.loads((folder / "key.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TrainDataError(f"{folder}: no readable key.json ({error}); make one with `python -m train ceiling items`") from None
    picks = read_picks(folder / "labels.jsonl", key)
    missing = sorted(set(key) - set(picks))
    if missing:
        raise TrainDataError(f"{folder / 'labels.jsonl'}: no pick for {len(missing)} items ({', '.join(missing[:3])}...)")
    picked = [{"context": context_lines(key[i]["turns"]), "pick": key[i]["options"][picks[i]]} for i in sorted(key)]
    return picked, max(len(item["options"]) for item in key.values())


def blind_round(blind: Path) -> tuple[list[dict], list[dict]]:
    """A blind round's examples (its rivals) and its own pairs, each with its key."""
    try:
        examples = json.loads((blind / "examples.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TrainDataError(f"{blind}: no readable blind round ({error}); run `python -m train blind make`") from None
    return examples, [pair for _, pair in round_pairs(blind)]


def make_pairs(readers: list[Path], blind: Path, out: Path, seed: int = 0) -> dict:
    """Pairs of each readers' folder's picks against the blind round's rivals, shuffled together with
    the round's own pairs (blend against the same rivals), so that one panel judges them all."""
    examples, pairs = blind_round(blind)
    rng = random.Random(seed)
    for folder in readers:
        picked, depth = read_readers(folder)
        if [item["context"] for item in picked] != [example["context"] for example in examples]:
            raise TrainDataError(f"{folder}: its conversations are not those of {blind / 'examples.json'}")
        system = f"reader's pick of the top {depth}"
        for number, (item, example) in enumerate(zip(picked, examples)):
            for rival in (r for r in RIVALS if r in example):
                pairs.append(blind_pair(example["context"], item["pick"], example[rival], rng, {
                    "conversation": number, "kind": example["kind"], "rival": rival, "system": system}))
    write_pairs(out, pairs, rng, "c")
    return {"pairs": len(pairs), "systems": len(readers) + 1, "out": str(out)}
