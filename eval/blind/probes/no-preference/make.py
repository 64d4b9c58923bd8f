"""Probe: blend without the readers' preference (the selector's top 5 lines ordered by their
reranked score alone, selector + LM), judged against the shipped blend before one panel. The
preference was fitted on the readers' picks among the top lines before the line prompts changed
them; this asks whether it still helps.

`probe`: the probe's blind pairs into `probe/` (the shipped policy without its preference; the blind
round's cached generations). `joint`: the shipped round's 360 pairs (`eval/blind`) and the probe's
360 shuffled into `pairs.jsonl` and `key.json`; judges who see only `pairs.jsonl` write
`judgments.jsonl`; score with `python -m train blind score --out eval/blind/probes/no-preference`.

    .venv/bin/python eval/blind/probes/no-preference/make.py probe | joint
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from serve.character import policy
from train.panels import probe_cli

HERE = Path(__file__).parent


def patch() -> None:
    policy.Preference = SimpleNamespace(load=lambda folder: None)


if __name__ == "__main__":
    probe_cli(HERE, "no preference", 31, patch)
