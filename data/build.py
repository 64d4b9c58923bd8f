"""`python -m data build`: transcripts → DIR/{train,validation,test}.jsonl, DIR/hf, stats, histogram."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data.pairs import Pair, Skipped, as_record, make_pairs, pairs_from_csv, split_pairs, spoken_lines
from data.transcripts import DataError, detect_format, read_emory, read_paired_csv, read_tsv


def load_pairs(transcripts: Path, character: str, context_turns: int, skipped: Skipped) -> list[Pair]:
    form = detect_format(transcripts)
    if form == "csv":
        return pairs_from_csv(read_paired_csv(transcripts), character, skipped)
    utterances = read_tsv(transcripts) if form == "tsv" else read_emory(transcripts)
    return list(make_pairs(spoken_lines(utterances, skipped), character, context_turns))


def build(transcripts: Path, out: Path, character: str, context_turns: int, seed: int) -> dict:
    skipped = Skipped()
    pairs = load_pairs(transcripts, character, context_turns, skipped)
    if not pairs:
        raise DataError(f"{transcripts}: no pairs for character {character!r}")
    splits = split_pairs(pairs, seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as file:
            file.writelines(json.dumps(as_record(pair), ensure_ascii=False) + "\n" for pair in split)
    save_hf(splits, out / "hf")
    stats = split_stats(splits, skipped, character, context_turns, seed)
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    plot_reply_lengths(pairs, out / "reply_lengths.png", character)
    return stats


def save_hf(splits: dict[str, list[Pair]], folder: Path) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict(
        {name: Dataset.from_list([as_record(pair) for pair in split]) for name, split in splits.items()}
    ).save_to_disk(str(folder))


def split_stats(splits: dict[str, list[Pair]], skipped: Skipped, character: str, context_turns: int, seed: int) -> dict:
    lengths = np.array([len(pair.reply.split()) for split in splits.values() for pair in split])
    return {
        "character": character,
        "context_turns": context_turns,
        "seed": seed,
        "pairs": {name: len(split) for name, split in splits.items()},
        "episodes": {name: len({(p.season, p.episode) for p in split}) for name, split in splits.items()},
        "reply_words_percentiles": {
            f"p{q}": float(np.percentile(lengths, q)) for q in (5, 25, 50, 75, 95, 99)
        },
        "skipped": dict(skipped.counts),
    }


def plot_reply_lengths(pairs: list[Pair], path: Path, character: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [len(pair.reply.split()) for pair in pairs]
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.hist(lengths, bins=range(0, min(max(lengths), 80) + 2), color="#4c72b0")
    axes.set(xlabel="reply length (words)", ylabel="pairs", title=f"{character}: reply lengths ({len(pairs)} pairs)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
