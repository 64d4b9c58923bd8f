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
from train.preferences import accuracy, cross_validated, fit_logit, item_features, labelled_items  # noqa: E402

READERS = ROOT / "eval" / "blind" / "probes" / "round3" / "readers"
SCORES = ROOT / "eval" / "blind-picker" / "pointwise-qwen-coder-1.5b.jsonl"
SELECTOR = ROOT / "models" / "chandler-selector"


def main() -> None:
    items, _ = labelled_items([READERS])
    top = {item_id: item["top"] for item_id, item in json.loads((READERS / "key.json").read_text(encoding="utf-8")).items()}
    shown = {row["id"]: row["log_odds"] for row in map(json.loads, SCORES.read_text(encoding="utf-8").splitlines())}
    log_odds = [np.array([shown[item["id"]][k] for k in top[item["id"]]]) for item in items]  # in the policy's order, as `lines`
    lm = LmRerank(1.0)
    lm.bind(load_engine())
    preference = Preference.load(SELECTOR)
    scores = [matrix @ preference.weights for matrix, _, _ in item_features(items, Selector(SELECTOR), lm)]
    chosen = [item["pick"] for item in items]
    both = [np.stack([score, odds], axis=1) for score, odds in zip(scores, log_odds)]
    print({"items": len(items), "preference": accuracy(scores, chosen), "log_odds": accuracy(log_odds, chosen),
           "both, 5-fold": [cross_validated(both, chosen, seed) for seed in range(3)],
           "both, weights fitted on all": fit_logit(both, chosen).round(3).tolist()})


if __name__ == "__main__":
    main()
