"""Probe: the readers' setup rating of each line (`data/line_setup.jsonl`) as one more feature of
the readers' preference, judged against the shipped blend before one panel.

`fit`: the preference refitted on the labelled rounds with the rating as a column after the named
features (the serving engine's PMI: ~12 min on 2 cores); weights to `preference.safetensors` here.
`probe`: the probe's blind pairs into `probe/` (the shipped policy, its preference replaced by the
refitted one; the blind round's cached generations). `joint`: the shipped round's 360 pairs
(`eval/blind`) and the probe's 360 shuffled into `pairs.jsonl` and `key.json`; judges who see only
`pairs.jsonl` write `judgments.jsonl`; score with `python -m train blind score --out eval/blind/probes/setup`.

    .venv/bin/python eval/blind/probes/setup/make.py fit | probe | joint
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import train.preferences as preferences
from serve.character import preference
from train.panels import probe_cli

HERE = Path(__file__).parent
SELECTOR = Path("models/chandler-selector")
NAMED = len(preference.FEATURES)
SETUP = {row["line"]: row["setup"] for row in map(json.loads, Path("data/line_setup.jsonl").read_text().splitlines())}


def with_setup(matrix: np.ndarray, lines: list[str]) -> np.ndarray:
    column = np.array([[SETUP.get(text, 2)] for text in lines], dtype=np.float64)
    return np.hstack([matrix[:, :NAMED], column, matrix[:, NAMED:]])


def fit() -> None:
    from serve.character.rerank import LmRerank
    from serve.character.selector import Selector
    from serve.engine import load_engine

    items, _ = preferences.labelled_items(sorted(Path("eval/preferences").glob("round*")))
    lm = LmRerank(1.0)
    lm.bind(load_engine())
    rows = [with_setup(matrix, item["lines"])
            for (matrix, _, _), item in zip(preferences.item_features(items, Selector(SELECTOR), lm), items)]
    picks = [item["pick"] for item in items]
    preferences.FEATURES = (*preference.FEATURES, "setup")  # the rating is a named feature: barely held back
    accuracy = [preferences.cross_validated(rows, picks, seed) for seed in range(5)]
    weights = preferences.fit_logit(rows, picks)
    preference.Preference(weights).save(HERE)
    print({"cross_validated_accuracy": accuracy, "named_weights": np.round(weights[: NAMED + 1], 4).tolist()})


def patch() -> None:
    from serve.character import policy

    original = preference.features
    preference.features = lambda conversations, lines, *scores: [
        with_setup(matrix, group) for matrix, group in zip(original(conversations, lines, *scores), lines)]
    refitted = preference.Preference.load(HERE)
    policy.Preference = SimpleNamespace(load=lambda folder: refitted)


if __name__ == "__main__":
    probe_cli(HERE, "setup rating", 29, patch, fit=fit)
