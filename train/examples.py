"""Pairs → token ids with labels on the reply only; shared by fine-tuning and evaluation."""
from __future__ import annotations

import json
from pathlib import Path

from data.dialogue import CONTEXT_TOKEN_BUDGET, PERSONA, prompt_text

SPLITS = ("train", "validation", "test")
MAX_REPLY_TOKENS = 64
IGNORE_INDEX = -100


class TrainDataError(ValueError):
    """A data folder that cannot be used; the message is one line for the user."""


def read_split(data: Path, split: str, limit: int | None = None) -> list[dict]:
    path = Path(data) / f"{split}.jsonl"
    if not path.is_file():
        raise TrainDataError(f"{data}: no {split}.jsonl (build it with `python -m data build`)")
    with open(path, encoding="utf-8") as file:
        records = [json.loads(line) for line in file if line.strip()]
    if not records:
        raise TrainDataError(f"{path}: no pairs")
    return records[:limit] if limit else records


def encode(record: dict, tokenizer, context_budget: int = CONTEXT_TOKEN_BUDGET, persona: str = PERSONA) -> dict:
    """input_ids = prompt (as served) + reply + end of turn; labels mask everything but the reply."""
    prompt = prompt_text(tokenizer, record["context"], persona, context_budget)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(record["reply"], add_special_tokens=False)["input_ids"][:MAX_REPLY_TOKENS]
    reply_ids = reply_ids + [tokenizer.eos_token_id]
    return {
        "input_ids": prompt_ids + reply_ids,
        "attention_mask": [1] * (len(prompt_ids) + len(reply_ids)),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + reply_ids,
    }


def encoded_split(data: Path, split: str, tokenizer, limit: int | None = None, context_budget: int = CONTEXT_TOKEN_BUDGET):
    """A `datasets.Dataset` of encoded pairs."""
    from datasets import Dataset

    records = read_split(data, split, limit)
    return Dataset.from_list(records).map(
        lambda record: encode(record, tokenizer, context_budget),
        remove_columns=list(records[0].keys()),
        desc=f"tokenizing {split}",
    )
