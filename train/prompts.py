"""`python -m train prompts`: fit the weight of the lines' prompts in the selector's score, and report it.

Each indexed line has a prompt, a message it would answer, written by a reader shown only the line
(`data/line_prompts.jsonl`; `serve/character/lines.py`). The selector's score gains `prompt_weight` ×
the untuned message–prompt cosine. Here, on the same draws as the selector's recall
(`train/ranking.py`), the weight with the best R10@1 + R100@1 on validation episodes is chosen; the
quoting thresholds are recalibrated on the new score (the selector's own, and the LM rerank's on its
validation conversations, whose LM weight is kept); test recall goes to `metrics.json` and the card.

The readers who wrote the prompts may know the show: a prompt can echo the conversation a line
really answered, which flatters recall on test episodes (README). The blind comparison, whose
conversations come from episodes the index leaves out, is not open to that.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from serve.character.lines import prompt_texts, read_prompts
from serve.character.selector import Selector, last_message, read_settings, write_settings
from serve.character.style import embed
from train.examples import read_split
from train.ranking import THRESHOLD_PERCENTILE, distractor_draws, read_metrics, recall_at_1, write_card, write_metrics
from train.rerank import selector_scores

PROMPT_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5)


def prompt_cosines(records: list[dict], prompts: dict[str, str]) -> np.ndarray:
    """(conversations × replies) untuned cosine of each conversation's message and each reply's prompt."""
    messages = embed([last_message(record["context"]) for record in records])
    return messages @ embed(prompt_texts([record["reply"] for record in records], prompts)).T


def rerank_threshold(selector: Selector, records: list[dict], scores: np.ndarray, limit: int) -> float:
    """The LM rerank's threshold on `scores` of the true replies of its first `limit` validation conversations."""
    from serve.character.rerank import LmRerank
    from serve.engine import load_engine

    lm = LmRerank(1.0)
    lm.bind(load_engine())
    pmi = lm.pmi([record["context"] for record in records[:limit]], [record["reply"] for record in records[:limit]])
    return float(np.percentile(np.diag(scores)[:limit] + selector.lm_weight * pmi, THRESHOLD_PERCENTILE))


def fit_prompts(data: Path, folder: Path, prompts_path: Path, seed: int = 0) -> dict:
    """Writes `prompt_weight` and the recalibrated thresholds into `selector.json`, test recall into
    `metrics.json` and the card."""
    prompts = read_prompts(prompts_path)
    settings = read_settings(folder)
    metrics = read_metrics(folder)
    selector = Selector(folder)
    selector.prompt_weight = 0.0  # scores without the prompts: they are added here, weight by weight
    splits = {}
    for split in ("validation", "test"):
        records = read_split(data, split)
        splits[split] = (records, selector_scores(selector, records), prompt_cosines(records, prompts),
                         distractor_draws([record["reply"] for record in records], seed=seed))
    records, base, cosines, draws = splits["validation"]
    by_weight = {weight: recall_at_1(base + weight * cosines, draws) for weight in PROMPT_WEIGHTS}
    weight = max(PROMPT_WEIGHTS, key=lambda w: (by_weight[w]["R10@1"] + by_weight[w]["R100@1"], -w))
    scores = base + weight * cosines
    settings.update(prompt_weight=weight, threshold=round(float(np.percentile(np.diag(scores), THRESHOLD_PERCENTILE)), 4))
    if settings.get("rerank"):
        limit = settings["rerank"]["validation_pairs"]
        settings["rerank"]["threshold"] = round(rerank_threshold(selector, records, scores, limit), 4)
    write_settings(folder, settings)

    _, test_base, test_cosines, test_draws = splits["test"]
    row = f"selector + {weight} × untuned message–prompt cosine (readers' prompts of the lines)"
    metrics["test"][row] = recall_at_1(test_base + weight * test_cosines, test_draws)
    metrics.update(prompt_weight=weight, validation_by_prompt_weight={str(w): r for w, r in by_weight.items()})
    write_metrics(folder, metrics)
    write_card(folder, settings, metrics)
    return {"prompt_weight": weight, "validation": by_weight[weight], "test": metrics["test"][row],
            "threshold": settings["threshold"], "rerank": settings.get("rerank")}
