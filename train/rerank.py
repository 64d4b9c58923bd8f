"""`python -m train rerank`: fit the LM rerank of the selector's top lines, and report it.

The policy retrieves the selector's top `TOP_K` lines and reranks them by selector score +
`lm_weight` × PMI under the serving engine (`serve/character/rerank.py`). Here, on the same
draws as the selector's recall (`train/ranking.py`), for each conversation and each draw of 10
and of 100, the selector's top `TOP_K` candidates are scored by the LM; a hit when the true reply
is among them and scores strictly highest after the rerank (weight 0: the selector alone).

- validation episodes (the first `validation_pairs` conversations): the weight with the best
  R10@1 + R100@1, and the quoting threshold: the `THRESHOLD_PERCENTILE`th percentile of the
  reranked scores of Chandler's true replies;
- test episodes (all): recall of the selector alone and reranked, into `metrics.json` and the card.

The LM is the slow part: about 4 replies a second on 2 CPU cores, some 50 minutes in all.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from serve.character.lines import scored_prompts
from serve.character.policy import TOP_K
from serve.character.rerank import LmRerank
from serve.character.selector import Selector, read_settings, write_settings
from train.examples import read_split
from train.ranking import THRESHOLD_PERCENTILE, distractor_draws, read_metrics, write_card, write_metrics

log = logging.getLogger(__name__)

LM_WEIGHTS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)
CHUNK = 512  # replies scored between progress lines


def selector_scores(selector: Selector, records: list[dict]) -> np.ndarray:
    """(conversations × replies) scores of a split, as the policy scores lines (with their prompts)."""
    replies = [record["reply"] for record in records]
    return selector.score(selector.conversations([record["context"] for record in records]),
                          selector.replies(replies, scored_prompts(selector, replies)))


def candidate_pools(draws: dict[int, np.ndarray], limit: int) -> dict[int, np.ndarray]:
    """For each K, the (limit, K) candidates of each conversation: its true reply first, then its draw."""
    return {size: np.concatenate([np.arange(limit)[:, None], rows[:limit]], axis=1) for size, rows in draws.items()}


def kept(scores: np.ndarray, pool: np.ndarray, depth: int) -> np.ndarray:
    """Positions in each row of `pool` of the selector's top `depth` candidates."""
    return np.argsort(-np.take_along_axis(scores[: len(pool)], pool, axis=1), axis=1, kind="stable")[:, :depth]


def lm_pairs(scores: np.ndarray, pools: dict[int, np.ndarray], depth: int) -> list[tuple[int, int]]:
    """The (conversation, reply) pairs the LM scores: every true reply, and each pool's top `depth`."""
    pairs = {(i, i) for i in range(len(next(iter(pools.values()))))}
    for pool in pools.values():
        top = np.take_along_axis(pool, kept(scores, pool, depth), axis=1)
        pairs.update((i, int(j)) for i, row in enumerate(top) for j in row)
    return sorted(pairs)


def pmi_matrix(engine, records: list[dict], pairs: list[tuple[int, int]], limit: int) -> np.ndarray:
    """(limit × replies) PMI under the engine's LM, NaN where a pair was not scored."""
    rerank = LmRerank(1.0)
    rerank.bind(engine)
    matrix = np.full((limit, len(records)), np.nan)
    for start in range(0, len(pairs), CHUNK):
        chunk = pairs[start : start + CHUNK]
        values = rerank.pmi([records[i]["context"] for i, _ in chunk], [records[j]["reply"] for _, j in chunk])
        matrix[tuple(np.array(chunk).T)] = values
        log.info("LM scored %d of %d replies", start + len(chunk), len(pairs))
    return matrix


def reranked_recall(scores: np.ndarray, pmi: np.ndarray, pools: dict[int, np.ndarray], weight: float,
                    depth: int = TOP_K) -> dict[str, float]:
    """Recall@1 after the rerank of each pool's selector top `depth` (the others cannot win)."""
    recall = {}
    for size, pool in pools.items():
        top = kept(scores, pool, depth)
        candidates = np.take_along_axis(pool, top, axis=1)
        rows = np.arange(len(pool))[:, None]
        reranked = np.full(pool.shape, -np.inf)
        np.put_along_axis(reranked, top, scores[rows, candidates] + weight * pmi[rows, candidates], axis=1)
        recall[f"R{size}@1"] = round(float(np.mean(reranked[:, 0] > reranked[:, 1:].max(axis=1))), 3)
    return recall


def split_scores(engine, selector: Selector, records: list[dict], limit: int, seed: int):
    scores = selector_scores(selector, records)
    pools = candidate_pools(distractor_draws([record["reply"] for record in records], seed=seed), limit)
    return scores, pools, pmi_matrix(engine, records, lm_pairs(scores, pools, TOP_K), limit)


def fit_rerank(data: Path, folder: Path, validation_pairs: int, seed: int = 0) -> dict:
    """Fit the weight and threshold on validation, report test recall; writes `selector.json`
    (`rerank`: its weight and threshold, beside the selector's own), `metrics.json` and the card."""
    from serve.engine import load_engine

    metrics = read_metrics(folder)
    selector, engine = Selector(folder), load_engine()
    validation, test = (read_split(data, split) for split in ("validation", "test"))
    limit = min(validation_pairs, len(validation))
    val_scores, val_pools, val_pmi = split_scores(engine, selector, validation, limit, seed)
    by_weight = {weight: reranked_recall(val_scores, val_pmi, val_pools, weight) for weight in LM_WEIGHTS}
    weight = max(LM_WEIGHTS, key=lambda w: (by_weight[w]["R10@1"] + by_weight[w]["R100@1"], -w))
    log.info("validation recall by LM weight: %s; chosen %s", by_weight, weight)
    true = np.arange(limit)
    threshold = float(np.percentile(val_scores[true, true] + weight * val_pmi[true, true], THRESHOLD_PERCENTILE))
    test_scores, test_pools, test_pmi = split_scores(engine, selector, test, len(test), seed)

    settings = read_settings(folder)
    settings["rerank"] = {"lm_weight": weight, "threshold": round(threshold, 4), "validation_pairs": limit, "depth": TOP_K}
    write_settings(folder, settings)
    scored = f"selector + {selector.prompt_weight} × untuned message–prompt cosine" if selector.prompt_weight else "selector"
    shipped = f"{scored}, its top {TOP_K} reranked by + {weight} × the adapter LM's PMI (shipped)"
    metrics["test"] = {**{name.removesuffix(" (shipped)"): value for name, value in metrics["test"].items()},
                       shipped: reranked_recall(test_scores, test_pmi, test_pools, weight)}
    metrics.update(validation_by_lm_weight={str(w): recall for w, recall in by_weight.items()}, rerank=settings["rerank"])
    write_metrics(folder, metrics)
    write_card(folder, settings, metrics)
    return {"rerank": settings["rerank"], "test": metrics["test"][shipped], "validation": by_weight[weight]}
