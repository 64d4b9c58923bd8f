"""Probe: the readers' preference refitted with a third round of picks (`readers/`: 600 validation
conversations, each with the policy's top 5 lines now that the lines' prompts are in, made by
`python -m train preferences make --conversations 600`; a second reader's picks of the first 100),
judged against the shipped blend before one panel. `preference.safetensors` here holds the weights
`python -m train preferences fit --rounds eval/preferences/round1 eval/preferences/round2
eval/blind/probes/round3/readers` writes (into a copy of the selector).

`probe`: the probe's blind pairs into `probe/` (the shipped policy with these weights; the blind
round's cached generations). `joint`: the shipped round's 360 pairs (`eval/blind`) and the probe's
360 shuffled into `pairs.jsonl` and `key.json`; judges who see only `pairs.jsonl` write
`judgments.jsonl`; score with `python -m train blind score --out eval/blind/probes/round3`.

    .venv/bin/python eval/blind/probes/round3/make.py probe | joint
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from serve.character import policy
from serve.character.preference import Preference
from train.panels import probe_cli

HERE = Path(__file__).parent


def patch() -> None:
    refitted = Preference.load(HERE)
    policy.Preference = SimpleNamespace(load=lambda folder: refitted)


if __name__ == "__main__":
    probe_cli(HERE, "three rounds", 37, patch)
