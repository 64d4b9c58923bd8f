"""Do readers pick a line for the line itself, or for how it fits the conversation?

`make`: 200 items of round 2 (those with a pick among their top lines), each with the same five
lines in a new random order and without the conversation, to `items.jsonl` (`id`, `lines`); the
map back to round 2's options in `key.json`. A reader who sees only `items.jsonl` picks the best
Chandler line of each item on its own and writes `labels.jsonl` (`{"id", "choice"}`).
`score`: how often that pick is round 2's reader's pick (chance 1 in 5).

    python eval/preferences/context-free/pilot.py make | score
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).parent
ROUND = HERE.parent / "round2"
ITEMS, SEED = 200, 7


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def round_picks() -> dict[str, str]:
    return {label["id"]: label["choice"] for label in read_jsonl(ROUND / "labels.jsonl")}


def make() -> None:
    picks = round_picks()
    items = [item for item in read_jsonl(ROUND / "items.jsonl") if picks.get(item["id"]) in item["options"]]
    rng = random.Random(SEED)
    rng.shuffle(items)
    key, rows = {}, []
    for number, item in enumerate(items[:ITEMS]):
        options = list(item["options"].items())
        rng.shuffle(options)
        item_id = f"p{number:03d}"
        key[item_id] = {"item": item["id"], "map": {str(k + 1): option for k, (option, _) in enumerate(options)}}
        rows.append({"id": item_id, "lines": {str(k + 1): text for k, (_, text) in enumerate(options)}})
    (HERE / "items.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    (HERE / "key.json").write_text(json.dumps(key, indent=1) + "\n")


def score() -> None:
    key, picks = json.loads((HERE / "key.json").read_text()), round_picks()
    labels = read_jsonl(HERE / "labels.jsonl")
    same = sum(key[label["id"]]["map"][label["choice"]] == picks[key[label["id"]]["item"]] for label in labels)
    print(f"the context-free pick is the round's reader's pick in {same} of {len(labels)} items "
          f"({same / len(labels):.3f}; chance 0.200)")


if __name__ == "__main__":
    commands = {"make": make, "score": score}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        print("usage: pilot.py make | score", file=sys.stderr)
        sys.exit(2)
    commands[sys.argv[1]]()
