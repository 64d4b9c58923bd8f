"""One panel for two blind rounds: blend with the lines' prompts (`eval/blind`) and blend before them
(`eval/blind/earlier/preference`), so a difference between them is not a difference between panels.

`make`: both rounds' 360 pairs, shuffled together without sources into `pairs.jsonl` (ids `j000`…;
each pair keeps its round's sides), and `key.json`: each pair's entry in its round's key, plus
`system` (which blend it judges) and `pair` (its id in that round). Judges who see only
`pairs.jsonl` write `judgments.jsonl`; `python -m train blind score --out eval/blind/joint` scores
each system against each rival.

    .venv/bin/python eval/blind/joint/joint.py make
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

from train.blind import write_pairs
from train.panels import joint_pairs

HERE = Path(__file__).parent
ROUNDS = {"blend with prompts": HERE.parent, "blend before prompts": HERE.parent / "earlier" / "preference"}
SEED = 11


def make() -> None:
    write_pairs(HERE, joint_pairs(ROUNDS), random.Random(SEED), "j")


if __name__ == "__main__":
    if sys.argv[1:] != ["make"]:
        print("usage: joint.py make   (judges then write judgments.jsonl; score: python -m train blind score --out eval/blind/joint)",
              file=sys.stderr)
        sys.exit(2)
    make()
