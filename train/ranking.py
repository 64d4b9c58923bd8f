"""How well a selector picks Chandler's real reply, beside the baselines; its threshold; its card.

Recall@1 among K: for each held-out conversation, its true reply and K-1 other Chandler replies of
the same split (never one with the same text), drawn once with a fixed seed and shared by every
method; a hit when the true reply scores strictly highest.

Methods, all on the same draws:
- random;
- untuned encoder, message–reply cosine (the last turn's text against the reply);
- untuned encoder, the selector's context text against the reply;
- retrieval by similar context: the replies that followed the 5 training conversations most like
  this one (untuned cosine of context texts), averaged; candidates scored by cosine to that mean;
- the adapter LM (the shipped engine, ct2): the reply's mean log-prob per token after the
  conversation's prompt, and its PMI (summed log-prob after the conversation minus after a neutral
  one), on the first `LM_PAIRS` pairs: 109 candidates each, the LM is the slow part;
- the tuned selector (context text against the reply), and the tuned selector plus
  `message_weight` × the untuned message–reply cosine, the weight fitted on validation episodes.

The threshold for quoting a real line is the `THRESHOLD_PERCENTILE`th percentile of the scores
that Chandler's true replies get on validation episodes: a retrieved line is sent when it fits the
conversation at least as well as three quarters of his real replies fit theirs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from serve.character.rerank import LmRerank
from serve.character.selector import Selector, SelectorError, context_text, last_message, read_settings, write_settings
from serve.character.style import embed
from train.examples import read_split
from train.plots import plot_loss

SIZES = (10, 100)
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
THRESHOLD_PERCENTILE = 25
NEIGHBOURS = 5
LM_PAIRS = 50


def distractor_draws(replies: list[str], sizes: tuple[int, ...] = SIZES, seed: int = 0) -> dict[int, np.ndarray]:
    """For each K, an (n, K-1) array of other replies' indices, none with the true reply's text."""
    rng = np.random.default_rng(seed)
    texts = np.array([reply.strip().lower() for reply in replies])
    draws = {}
    for size in sizes:
        rows = []
        for i in range(len(replies)):
            pool = np.flatnonzero(texts != texts[i])
            rows.append(rng.choice(pool, size - 1, replace=False))
        draws[size] = np.stack(rows)
    return draws


def recall_at_1(scores: np.ndarray, draws: dict[int, np.ndarray]) -> dict[str, float]:
    """scores[i, j]: how well reply j answers conversation i."""
    true = np.diag(scores)
    return {f"R{size}@1": round(float(np.mean(true > np.take_along_axis(scores, rows, axis=1).max(axis=1))), 3)
            for size, rows in draws.items()}


def similar_context_scores(contexts: np.ndarray, replies: np.ndarray, train_contexts: np.ndarray,
                           train_replies: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    similarity = contexts @ train_contexts.T
    nearest = np.argsort(-similarity, axis=1)[:, :neighbours]
    expected = np.stack([np.average(train_replies[row], axis=0, weights=np.maximum(similarity[i, row], 1e-6))
                         for i, row in enumerate(nearest)])
    return expected @ replies.T


def adapter_lm_scores(records: list[dict], draws: dict[int, np.ndarray], limit: int) -> dict[str, np.ndarray]:
    """The adapter LM's scores of the candidates of the first `limit` pairs: (limit × n) matrices
    of mean log-prob per reply token and of PMI, -inf where a reply is not a candidate."""
    from serve.engine.ct2_engine import Ct2Engine

    lm = LmRerank(1.0)
    lm.bind(Ct2Engine())
    texts = [record["reply"] for record in records]
    candidates = {i: {i, *(int(j) for rows in draws.values() for j in rows[i])} for i in range(limit)}
    needed = sorted((i, j) for i, replies_of_i in candidates.items() for j in replies_of_i)
    conditional = lm.engine.reply_log_probs([records[i]["context"] for i, _ in needed], [texts[j] for _, j in needed])
    priors = lm.priors([texts[j] for _, j in needed])
    mean = np.full((limit, len(records)), -np.inf)
    pmi = mean.copy()
    for (i, j), log_probs, prior in zip(needed, conditional, priors):
        mean[i, j] = np.mean(log_probs)
        pmi[i, j] = np.sum(log_probs) - prior
    return {"mean log-prob per reply token": mean, "PMI": pmi}


def lm_baselines(test: list[dict], test_scores: SplitScores, draws: dict[int, np.ndarray], lm_pairs: int) -> dict:
    """The adapter LM's rows, and the selector's on the same first pairs; none when `lm_pairs` is 0."""
    if not lm_pairs:
        return {}
    first_draws = {size: rows[:lm_pairs] for size, rows in draws.items()}
    return {**{f"adapter LM, {name} (first {lm_pairs} pairs)": recall_at_1(scores, first_draws)
               for name, scores in adapter_lm_scores(test, draws, lm_pairs).items()},
            f"selector (tuned), the same first {lm_pairs} pairs": recall_at_1(test_scores.tuned[:lm_pairs], first_draws)}


class SplitScores:
    """Score matrices of one split for the untuned encoder and the selector."""

    def __init__(self, records: list[dict], selector: Selector) -> None:
        self.replies = [record["reply"] for record in records]
        contexts = [context_text(record["context"]) for record in records]
        self.untuned_reply = embed(self.replies)
        self.untuned_context = embed(contexts)
        self.message_reply = embed([last_message(record["context"]) for record in records]) @ self.untuned_reply.T
        self.tuned = selector.encode(contexts) @ selector.encode(self.replies).T

    def combined(self, weight: float) -> np.ndarray:
        return self.tuned + weight * self.message_reply


def fit_message_weight(validation: SplitScores, draws: dict[int, np.ndarray]) -> tuple[float, dict]:
    by_weight = {weight: recall_at_1(validation.combined(weight), draws) for weight in WEIGHTS}
    best = max(WEIGHTS, key=lambda weight: (by_weight[weight]["R10@1"] + by_weight[weight]["R100@1"], -weight))
    return best, {str(weight): recall for weight, recall in by_weight.items()}


def report_selector(data: Path, folder: Path, seed: int = 0, lm_pairs: int = LM_PAIRS) -> dict:
    """Test-episode recall of the selector and the baselines; writes metrics.json, the threshold
    and message weight into the selector's settings, the learning curve and the card."""
    selector = Selector(folder)
    train, validation, test = (read_split(data, split) for split in ("train", "validation", "test"))
    val_scores, test_scores = SplitScores(validation, selector), SplitScores(test, selector)
    val_draws, test_draws = distractor_draws(val_scores.replies, seed=seed), distractor_draws(test_scores.replies, seed=seed)
    weight, by_weight = fit_message_weight(val_scores, val_draws)
    threshold = float(np.percentile(np.diag(val_scores.combined(weight)), THRESHOLD_PERCENTILE))
    settings = read_settings(folder)
    settings.update(message_weight=weight, threshold=round(threshold, 4), threshold_percentile=THRESHOLD_PERCENTILE)
    write_settings(folder, settings)  # the selector is usable from here on
    train_contexts = embed([context_text(record["context"]) for record in train])
    train_replies = embed([record["reply"] for record in train])
    rng = np.random.default_rng(seed)
    n = len(test_scores.replies)
    methods = {
        "random": recall_at_1(rng.random((n, n)), test_draws),
        "untuned encoder, message–reply cosine": recall_at_1(test_scores.message_reply, test_draws),
        "untuned encoder, context text–reply cosine": recall_at_1(
            test_scores.untuned_context @ test_scores.untuned_reply.T, test_draws),
        f"retrieval by similar context ({NEIGHBOURS} nearest training conversations)": recall_at_1(
            similar_context_scores(test_scores.untuned_context, test_scores.untuned_reply, train_contexts, train_replies),
            test_draws),
        **lm_baselines(test, test_scores, test_draws, lm_pairs),
        "selector (tuned), context text–reply cosine": recall_at_1(test_scores.tuned, test_draws),
        f"selector + {weight} × untuned message–reply cosine (shipped)": recall_at_1(test_scores.combined(weight), test_draws),
    }
    metrics = {"test_pairs": n, "validation_pairs": len(val_scores.replies), "test": methods,
               "validation_by_message_weight": by_weight, "message_weight": weight, "threshold": settings["threshold"],
               "goal": {"R10@1": 0.55, "R100@1": 0.30}}
    write_metrics(folder, metrics)
    history = json.loads((folder / "log_history.json").read_text())
    plot_loss(history, folder / "learning_curve.png", title="Chandler response selector (MultipleNegativesRankingLoss)",
              ylabel="in-batch ranking loss")
    write_card(folder, settings, metrics)
    return metrics


def prompt_text(settings: dict) -> str:
    if not settings.get("prompt_weight"):
        return ""
    return (f" For the index's lines it adds {settings['prompt_weight']} × the untuned cosine of the message and the line's"
            " prompt, a message the line would answer written by a reader shown only the line (`data/line_prompts.jsonl`;"
            " weight fitted on validation episodes by `python -m train prompts`). The readers may know the show: some prompts"
            " echo the conversation a line really answered, so test recall with the prompts is flattered (README).")


def rerank_text(settings: dict) -> str:
    if not settings.get("rerank"):
        return ""
    rerank = settings["rerank"]
    return (f"\nThe reply policy then reranks the selector's top {rerank['depth']} lines by that score + {rerank['lm_weight']} ×"
            " the adapter LM's PMI (`serve/character/rerank.py`; weight and threshold fitted by `python -m train rerank`"
            f" on the first {rerank['validation_pairs']} validation conversations; `rerank` off skips it).")


def preference_text(settings: dict) -> str:
    if not settings.get("preference"):
        return ""
    fit = settings["preference"]
    return (f" Blend sends the reranked line that readers would pick first (`preference.safetensors`, fitted by"
            f" `python -m train preferences fit` to {fit['labelled']} readers' picks among the top lines of conversations it"
            f" was not trained on: 5-fold accuracy {fit['cross_validated_accuracy']}, against {fit['policy_order_accuracy']} for"
            f" the reranked order and {fit['chance']} by chance).")


def threshold_text(settings: dict) -> str:
    text = f"A retrieved real line is quoted when its score reaches {settings['threshold']}"
    if settings.get("rerank"):
        text += f" (with the LM rerank on, when its reranked score reaches {settings['rerank']['threshold']})"
    return (text + f": the {settings['threshold_percentile']}th percentile of the scores Chandler's true replies get"
            " on validation episodes.")


def stage_text(stage: dict) -> str:
    """One training run of the selector: its pairs and schedule."""
    config = stage["config"]
    pairs = f"the {config['data']} train split's (conversation, Chandler reply) pairs"
    if config.get("others"):
        pairs += (f" and the other five friends' answers in the same train episodes ({config['others']}, "
                  "`python -m data negatives`)")
    if config.get("hard_negatives"):
        pairs += (f", each with {config['hard_negatives']} near miss(es) mined by the starting model "
                  f"(its ranks 2–{config['mine_range']})")
    schedule = f"{config['epochs']} epochs" + (f" planned, stopped {stage['stopped']}" if stage.get("stopped") else "")
    schedule += f" ({stage['trained']})" if stage.get("trained") else ""
    if stage.get("train_runtime_s"):
        schedule += f" in {stage['train_runtime_s'] / 60:.0f} min"
    return (f"on {pairs}: {schedule}, batch {config['batch_size']}, learning rate {config['learning_rate']}, "
            f"max {config['max_seq_length']} tokens, seed {config['seed']}")


def policy_text(settings: dict) -> str:
    """What the reply policy adds to the selector's score: prompts, the LM rerank, the readers' preference."""
    return prompt_text(settings) + rerank_text(settings) + preference_text(settings)


def read_metrics(folder: Path) -> dict:
    """The selector's `metrics.json`, which the fits on top of it extend (`SelectorError` with one
    line where it has none: checked before their slow work)."""
    try:
        return json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        raise SelectorError(f"{folder}: no metrics.json; report the selector first with `python -m train selector`") from None


def write_metrics(folder: Path, metrics: dict) -> None:
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")


def write_card(folder: Path, settings: dict, metrics: dict) -> None:
    stages = settings.get("stages", [])
    training = "".join(f"Stage {n}: trained {stage_text(stage)}. " for n, stage in enumerate(stages, 1))
    training += (f"Stage {len(stages) + 1}, continuing from it: trained " if stages else "Trained ") + stage_text(settings) + "."
    rows = "\n".join(
        f"| {name} | {value['R10@1']:.3f} | {value['R100@1']:.3f} |" if isinstance(value, dict) else f"| {name} | {value} | |"
        for name, value in metrics["test"].items()
    )
    (folder / "README.md").write_text(f"""# Chandler response selector

A dual encoder that scores how well a reply answers a conversation, for the bot's reply policy
(`serve/character/`). Base: {settings['base']}. Fine-tuned by `python -m train selector` with
sentence-transformers' `MultipleNegativesRankingLoss` (in-batch negatives, batches without duplicate
replies). {training}

The conversation side is its last 4 turns, newest first, `Name: text` joined by ` | `
(`serve.character.selector.context_text`). The shipped score is the tuned cosine plus
{metrics['message_weight']} × the untuned encoder's message–reply cosine (weight fitted on validation episodes).{policy_text(settings)}
Weights are fp16 safetensors; `selector.json` holds the id that the line index records.

## Recall@1 on test episodes ({metrics['test_pairs']} held-out pairs; goal R10@1 ≥ 0.55, R100@1 ≥ 0.30)

The true reply against 9 or 99 other Chandler replies of the test split, the same draws for every method.

| method | R10@1 | R100@1 |
| --- | --- | --- |
{rows}

## Threshold

{threshold_text(settings)}

![learning curve](learning_curve.png)
""")
