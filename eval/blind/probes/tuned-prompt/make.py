"""Probe, not shipped: blend with a second prompt term, the tuned selector's context vector against each
line's prompt read as a one-turn conversation (`Someone: prompt`), weight `WEIGHT`, beside the
shipped score; judged against the shipped blend before one panel.

`probe`: the probe's blind pairs into `probe/` (the shipped policy with `LineIndex.top` scoring the
extra term; the blind round's cached generations). `joint`: the shipped round's 360 pairs
(`eval/blind`) and the probe's 360 shuffled into `pairs.jsonl` and `key.json` (`system` names the
blend); judges who see only `pairs.jsonl` write `judgments.jsonl`; score with
`python -m train blind score --out eval/blind/probes/tuned-prompt`.

    .venv/bin/python eval/blind/probes/tuned-prompt/make.py probe | joint
"""
from __future__ import annotations

import json
from pathlib import Path

from serve.character import lines
from train.panels import probe_cli

HERE = Path(__file__).parent
WEIGHT = 0.5


def top_with_tuned_prompts(index: lines.LineIndex, vectors, k: int, conversations) -> list[list[lines.Line]]:
    if not hasattr(index, "tuned_prompts"):
        rows = [json.loads(row) for row in (index.folder / lines.LINES).read_text(encoding="utf-8").splitlines() if row.strip()]
        index.tuned_prompts = index.selector.encode([f"Someone: {row['prompt']}" for row in rows])
    return index.best(index.selector.score(vectors, index.vectors) + WEIGHT * (vectors.tuned @ index.tuned_prompts.T),
                      k, conversations)


def patch() -> None:
    lines.LineIndex.top = top_with_tuned_prompts


if __name__ == "__main__":
    probe_cli(HERE, "tuned prompt term", 23, patch)
