"""Does the 1.5B model's reading of each line alone (`pointwise.py`'s Yes/No log-odds) add anything
to the shipped preference? On the third readers' round: the preference alone, the log-odds alone,
and a conditional logit over both (5-fold, three fold draws; and its weights fitted on all items),
each as how often the top line is the readers' pick. Runs in the project's environment (the
preference's features need the serving LM):

    .venv/bin/python eval/blind-picker/pointwise_with_preference.py
"""
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from serve.character.preference import Preference  # noqa: E402
from serve.character.rerank import LmRerank  # noqa: E402
from serve.character.selector import Selector  # noqa: E402
from serve.engine import load_engine  # noqa: E402
from train.preferences import cross_validated, fit_logit, item_features, read_picks  # noqa: E402

READERS = ROOT / "eval" / "blind" / "probes" / "round3" / "readers"
SCORES = ROOT / "eval" / "blind-picker" / "pointwise-qwen-coder-1.5b.jsonl"
SELECTOR = ROOT / "models" / "chandler-selector"


def top_is_pick(rows: list[np.ndarray], picks: list[int]) -> float:
    return round(float(np.mean([np.argmax(row) == pick for row, pick in zip(rows, picks)])), 3)


def main() -> None:
    key = json.loads((READERS / "key.json").read_text(encoding="utf-8"))
    picks = read_picks(READERS / "labels.jsonl", key)
    log_odds = {row["id"]: row["log_odds"] for row in map(json.loads, SCORES.read_text(encoding="utf-8").splitlines())}
    items = []
    for item_id, pick in picks.items():  # log-odds in the order the options were shown; `top`: the policy's lines among them
        item = key[item_id]
        if pick in item["top"]:
            items.append({"turns": item["turns"], "lines": [item["options"][k] for k in item["top"]],
                          "pick": item["top"].index(pick), "log_odds": np.array([log_odds[item_id][k] for k in item["top"]])})
    lm = LmRerank(1.0)
    lm.bind(load_engine())
    preference = Preference.load(SELECTOR)
    scores = [matrix @ preference.weights for matrix, _, _ in item_features(items, Selector(SELECTOR), lm)]
    chosen = [item["pick"] for item in items]
    both = [np.stack([score, item["log_odds"]], axis=1) for score, item in zip(scores, items)]
    print({"items": len(items), "preference": top_is_pick(scores, chosen),
           "log_odds": top_is_pick([item["log_odds"] for item in items], chosen),
           "both, 5-fold": [cross_validated(both, chosen, seed) for seed in range(3)],
           "both, weights fitted on all": fit_logit(both, chosen).round(3).tolist()})


if __name__ == "__main__":
    main()
