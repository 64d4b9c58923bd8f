"""Do readers pick a line for the line itself, or for how it fits the conversation?

`make`: 200 labelled items of round 2, each with the same five lines in a new random order and
without the conversation, to `items.jsonl` (`id`, `lines`); `key.json` keeps each item's round 2
id and, in the order shown, the positions of its lines among round 2's options. A reader who sees
only `items.jsonl` picks the best Chandler line of each item on its own and writes `labels.jsonl`
(`{"id", "choice"}`). `score`: how often that pick is round 2's reader's pick (chance 1 in 5).
Labels are read as `python -m train preferences` reads them (`read_picks`).

    .venv/bin/python eval/preferences/context-free/pilot.py make | score
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from train.examples import TrainDataError
from train.preferences import read_picks

HERE = Path(__file__).parent
ROUND = HERE.parent / "round2"
ITEMS, SEED = 200, 7


def read_key(folder: Path) -> dict:
    return json.loads((folder / "key.json").read_text(encoding="utf-8"))


def make() -> None:
    round_key = read_key(ROUND)
    labelled = [item_id for item_id in round_key if item_id in read_picks(ROUND / "labels.jsonl", round_key)]
    rng = random.Random(SEED)
    rng.shuffle(labelled)
    key, rows = {}, []
    for number, round_id in enumerate(labelled[:ITEMS]):
        shown = list(enumerate(round_key[round_id]["options"]))
        rng.shuffle(shown)
        item_id = f"p{number:03d}"
        key[item_id] = {"item": round_id, "options": [position for position, _ in shown]}
        rows.append({"id": item_id, "lines": {str(k + 1): text for k, (_, text) in enumerate(shown)}})
    (HERE / "items.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    (HERE / "key.json").write_text(json.dumps(key, indent=1) + "\n")


def score() -> None:
    key, round_picks = read_key(HERE), read_picks(ROUND / "labels.jsonl", read_key(ROUND))
    picks = read_picks(HERE / "labels.jsonl", key)
    same = sum(key[item_id]["options"][pick] == round_picks[key[item_id]["item"]] for item_id, pick in picks.items())
    print(f"the context-free pick is the round's reader's pick in {same} of {len(picks)} items "
          f"({same / len(picks):.3f}; chance 0.200)")


if __name__ == "__main__":
    commands = {"make": make, "score": score}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        print("usage: pilot.py make | score", file=sys.stderr)
        sys.exit(2)
    try:
        commands[sys.argv[1]]()
    except TrainDataError as error:
        print(error, file=sys.stderr)
        sys.exit(2)
