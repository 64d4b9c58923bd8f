"""`python -m train lines`: index every Chandler reply of a built dataset with the selector.

The index (`serve/character/lines.py`) is shipped in `models/chandler-lines`, so a deployed image
needs no transcripts. Each line's prompt comes from `--prompts` (`data/line_prompts.jsonl`).
`--splits` leaves episodes out: the blind comparison's index is built from the train and
validation splits only, so a held-out conversation's true line cannot be retrieved.
"""
from __future__ import annotations

from pathlib import Path

from serve.character.lines import DEFAULT_PROMPTS, read_prompts, write_index
from serve.character.selector import Selector
from train.examples import SPLITS, read_split


def build_lines(data: Path, selector_folder: Path, out: Path, splits: tuple[str, ...] = SPLITS,
                prompts: Path = DEFAULT_PROMPTS) -> dict:
    written = read_prompts(prompts)  # a bad file fails before any model loads
    selector = Selector(selector_folder)
    records = [record for split in splits for record in read_split(data, split)]
    return write_index(records, selector, out, written, note=f"splits: {', '.join(splits)} of {data}")
