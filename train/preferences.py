"""`python -m train preferences`: readers' picks among the policy's top lines, and the order fitted to them.

`make`: validation conversations (someone else speaks last), each with the policy's top `TOP_K`
lines from an index without the validation episodes (`python -m train lines --splits train`), so
his true line cannot be among them. Readers get `items.jsonl` (`id`, `context`, numbered `options`
in random order) and write `labels.jsonl` (`{"id", "choice": "3"}`); `key.json` keeps each item's
turns, its options in the order shown, and which of them are the policy's top lines (`top`).

`fit`: reads one or more such rounds, scores each item's top lines as the policy would (selector,
the serving engine's PMI, `serve.character.preference.features`) and fits a conditional logit
(softmax over each item's lines; L2 on the weights, lighter on the named features) to the readers'
picks. It reports 5-fold accuracy beside the order the policy had (selector + LM) and chance, and
the agreement of two readers where a round has `second-reader.jsonl`; the weights go to the
selector's folder (`preference.safetensors`), the report to its `selector.json` and `fit.json`.

`picker`: how often an LLM picker (`serve.character.picker`, as CHANDLER_PICKER_URL / _MODEL
configure it) names the readers' line when asked about the same items, the options in the order
the readers saw them: a check of a model before it picks his lines in serving.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

from data.dialogue import CHARACTER
from serve.character.lines import scored_prompts
from serve.character.picker import LlmPicker
from serve.character.policy import TOP_K, ReplyPolicy
from serve.character.preference import FEATURES, Preference, features, per_group
from serve.character.rerank import LmRerank
from serve.character.selector import Selector, read_settings, write_settings
from train.blind import check_held_out, context_lines
from train.examples import TrainDataError, read_split
from train.ranking import read_metrics, write_card

L2 = 1e-3
NAMED_L2 = 1e-6  # the named features are few and on their own scales: barely held back
FOLDS = 5


def make_items(data: Path, selector: Path, lines: Path, out: Path, conversations: int, seed: int = 0) -> dict:
    validation = [r for r in read_split(data, "validation") if r["context"][-1]["speaker"] != CHARACTER]
    chosen = random.Random(seed).sample(validation, min(conversations, len(validation)))
    policy = ReplyPolicy("quote", selector, lines)
    check_held_out(policy.index, [{"kind": "held-out", **record} for record in chosen], splits="train")
    return write_items(out, policy, [record["context"] for record in chosen], TOP_K, seed)


def write_items(out: Path, policy: ReplyPolicy, conversations: list[list[dict]], depth: int, seed: int = 0) -> dict:
    """`items.jsonl` for readers (each conversation with the index's top `depth` lines, numbered in
    random order) and `key.json`."""
    tops = policy.index.top(policy.selector.conversations(conversations), depth, conversations)
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    key = {}
    with open(out / "items.jsonl", "w", encoding="utf-8") as file:
        for number, (conversation, top) in enumerate(zip(conversations, tops)):
            shown = [line.text for line in top]
            rng.shuffle(shown)
            item_id = f"r{number:03d}"
            key[item_id] = {"turns": conversation, "options": shown, "top": list(range(len(shown)))}
            file.write(json.dumps({"id": item_id, "context": context_lines(conversation),
                                   "options": {str(k + 1): text for k, text in enumerate(shown)}}, ensure_ascii=False) + "\n")
    (out / "key.json").write_text(json.dumps(key, indent=1, ensure_ascii=False) + "\n")
    return {"items": len(key), "out": str(out)}


def read_picks(path: Path, key: dict) -> dict[str, int]:
    """Item id -> the index of the option picked, from a labels file (one line per item)."""
    picks = {}
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as error:
        raise TrainDataError(f"{path}: cannot read the labels ({error})") from None
    for row in rows:
        item = key.get(row.get("id")) if isinstance(row, dict) else None
        choice = str(row.get("choice")) if item else ""
        if not choice.isdigit() or not 1 <= int(choice) <= len(item["options"]):
            raise TrainDataError(f"{path}: bad label {row}")
        picks[row["id"]] = int(choice) - 1
    return picks


def labelled_items(rounds: list[Path]) -> tuple[list[dict], list[float]]:
    """Items whose pick is one of the policy's top lines: its id in its round, turns, top lines, the
    pick's position; and, per round with a second reader, how often the two readers agree."""
    items, agreement = [], []
    for folder in rounds:
        try:
            key = json.loads((folder / "key.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise TrainDataError(f"{folder}: no readable key.json ({error}); make one with `python -m train preferences make`") from None
        picks = read_picks(folder / "labels.jsonl", key)
        if (folder / "second-reader.jsonl").is_file():
            second = read_picks(folder / "second-reader.jsonl", key)
            agreement.append(float(np.mean([picks[i] == choice for i, choice in second.items() if i in picks])))
        for item_id, pick in picks.items():
            item = key[item_id]
            top = [item["options"][k] for k in item["top"]]
            if pick in item["top"]:
                items.append({"id": item_id, "turns": item["turns"], "lines": top, "pick": top.index(item["options"][pick])})
    if not items:
        raise TrainDataError(f"{', '.join(map(str, rounds))}: no labelled item picks one of the policy's top lines")
    return items, agreement


def picker_agreement(rounds: list[Path], picker: LlmPicker) -> dict:
    """How often `picker` names the readers' line among each labelled item's lines; an item it
    gives no usable answer for counts as a miss."""
    items, agreement = labelled_items(rounds)
    picks = [picker.pick(item["turns"], item["lines"]) for item in items]
    return {"items": len(items), "model": picker.model,
            "readers_line": round(float(np.mean([pick == item["pick"] for pick, item in zip(picks, items)])), 3),
            "chance": round(float(np.mean([1 / len(item["lines"]) for item in items])), 3),
            "second_reader_agreement": [round(share, 3) for share in agreement],
            "no_answer": sum(pick is None for pick in picks),
            "positions": dict(sorted(Counter(pick + 1 for pick in picks if pick is not None).items()))}


def item_features(items: list[dict], selector: Selector, lm: LmRerank) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per item: its lines' features, selector scores and PMI (one encoder and one LM batch for all)."""
    flat = [line for item in items for line in item["lines"]]
    pmi = lm.pmi([item["turns"] for item in items for _ in item["lines"]], flat)
    conversations = [item["turns"] for item in items]
    scores = selector.score(selector.conversations(conversations), selector.replies(flat, scored_prompts(selector, flat)))
    groups = [item["lines"] for item in items]
    own_scores = [block[n] for n, block in enumerate(per_group(scores, groups, axis=1))]
    own_pmi = per_group(pmi, groups)
    matrices = features(conversations, groups, own_scores, own_pmi)
    return list(zip(matrices, own_scores, own_pmi))


def negative_log_likelihood(weights: np.ndarray, rows: list[np.ndarray], picks: list[int], penalty: np.ndarray):
    loss, gradient = 0.0, np.zeros_like(weights)
    for matrix, pick in zip(rows, picks):
        logits = matrix @ weights
        loss -= log_softmax(logits)[pick]
        gradient += matrix.T @ softmax(logits) - matrix[pick]
    return loss / len(rows) + (penalty * weights**2).sum(), gradient / len(rows) + 2 * penalty * weights


def fit_logit(rows: list[np.ndarray], picks: list[int]) -> np.ndarray:
    penalty = np.full(rows[0].shape[1], L2)
    penalty[: len(FEATURES)] = NAMED_L2
    return minimize(negative_log_likelihood, np.zeros(rows[0].shape[1]), args=(rows, picks, penalty), jac=True,
                    method="L-BFGS-B").x


def accuracy(scores: list[np.ndarray], picks: list[int]) -> float:
    return round(float(np.mean([np.argmax(row) == pick for row, pick in zip(scores, picks)])), 3)


def cross_validated(rows: list[np.ndarray], picks: list[int], seed: int = 0) -> float:
    order = np.random.default_rng(seed).permutation(len(rows))
    hits = []
    for held in np.array_split(order, FOLDS):
        kept = sorted(set(order) - set(held))
        weights = fit_logit([rows[i] for i in kept], [picks[i] for i in kept])
        hits += [np.argmax(rows[i] @ weights) == picks[i] for i in held]
    return round(float(np.mean(hits)), 3)


def fit_preference(rounds: list[Path], folder: Path, engine=None) -> dict:
    """Fit on `rounds` with `engine`'s LM (default: the serving engine)."""
    from serve.engine import load_engine

    items, agreement = labelled_items(rounds)
    selector, lm = Selector(folder), LmRerank(1.0)
    lm.bind(engine or load_engine())
    scored = item_features(items, selector, lm)
    rows, picks = [matrix for matrix, _, _ in scored], [item["pick"] for item in items]
    weights = fit_logit(rows, picks)
    report = {
        "labelled": len(items), "rounds": [str(folder) for folder in rounds],
        "chance": round(float(np.mean([1 / len(item["lines"]) for item in items])), 3),
        "policy_order_accuracy": accuracy([s + selector.lm_weight * p for _, s, p in scored], picks),
        "cross_validated_accuracy": cross_validated(rows, picks),
        "second_reader_agreement": [round(value, 3) for value in agreement],
        "weights": dict(zip(FEATURES, np.round(weights[: len(FEATURES)], 4).tolist())),
    }
    Preference(weights).save(folder)
    settings = read_settings(folder)
    settings["preference"] = {name: value for name, value in report.items() if name != "weights"}
    write_settings(folder, settings)
    if (folder / "metrics.json").is_file():  # a selector reported by `python -m train selector`: its card says so
        write_card(folder, settings, read_metrics(folder))
    (rounds[-1].parent / "fit.json").write_text(json.dumps(report, indent=1) + "\n")
    return report
