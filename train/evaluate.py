"""`python -m train evaluate`: base vs base + adapter on held-out episodes, written as report.md."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.functional import cross_entropy
from tqdm import tqdm

from serve.character.style import DEFAULT_STYLE_MODEL, StyleScorer
from serve.engine.loading import attach_adapter, load_model, load_tokenizer
from train.examples import IGNORE_INDEX, encode, read_split

EVERYDAY_MESSAGES = [
    "How was your day at work?",
    "I think I'm going to ask her out. Any advice?",
    "My flight got cancelled again.",
    "Do you want to come to my birthday party on Saturday?",
    "I just got promoted!",
    "What do you actually do for a living?",
    "Can you help me move this weekend?",
    "I burned the turkey. Again.",
    "My parents are visiting next week.",
    "Is it weird that I'm nervous about a job interview?",
    "We're out of coffee.",
    "I signed up for a marathon.",
]
SAMPLE_SEED = 0


@dataclass
class LossResult:
    loss: float  # mean negative log-likelihood per reply token
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


@torch.no_grad()
def reply_loss(model, examples: list[dict], pad_id: int, batch_size: int = 8, label: str = "") -> LossResult:
    """Loss summed over every reply token of every example, divided by their count."""
    model.eval()
    total, count = 0.0, 0
    for start in tqdm(range(0, len(examples), batch_size), desc=f"loss {label}".strip(), leave=False):
        batch = examples[start : start + batch_size]
        width = max(len(example["input_ids"]) for example in batch)
        pad = lambda key, value: torch.tensor([e[key] + [value] * (width - len(e[key])) for e in batch])  # noqa: E731
        logits = model(input_ids=pad("input_ids", pad_id), attention_mask=pad("attention_mask", 0)).logits
        labels = pad("labels", IGNORE_INDEX)
        total += cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        ).item()
        count += int((labels[:, 1:] != IGNORE_INDEX).sum())
    return LossResult(total / count, count)


def test_losses(test: list[dict], adapter: Path, base_model: str) -> dict[str, LossResult]:
    """The same test prompts through the base model and through base + adapter."""
    tokenizer = load_tokenizer(base_model)
    examples = [encode(record, tokenizer) for record in test]
    model = attach_adapter(load_model(base_model, quantization="none"), adapter, base_model)
    with model.disable_adapter():
        base = reply_loss(model, examples, tokenizer.pad_token_id, label="base")
    return {"base": base, "adapter": reply_loss(model, examples, tokenizer.pad_token_id, label="adapter")}


def sample_replies(test: list[dict], adapter: Path, base_model: str, samples: int, max_new_tokens: int) -> dict:
    """Replies of both models to held-out contexts (spread over the test split) and to everyday
    messages, sampled with one seed."""
    from serve.engine import Engine, Sampling

    held_out = test[:: max(1, len(test) // samples)][:samples]
    conversations = [record["context"] for record in held_out]
    everyday = [[{"speaker": "Friend", "text": message}] for message in EVERYDAY_MESSAGES]
    sampling = Sampling(max_new_tokens=max_new_tokens, seed=SAMPLE_SEED)
    replies = {}
    for name, adapter_path in (("base", None), ("adapter", adapter)):
        engine = Engine(base_model=base_model, adapter=adapter_path, quantization="none")
        texts = [reply.text for reply in engine.generate(conversations + everyday, sampling)]
        replies[name] = {"held_out": texts[: len(conversations)], "everyday": texts[len(conversations) :]}
    return {"held_out": held_out, "replies": replies}


def style_figures(scorer: StyleScorer, samples: dict) -> dict[str, float]:
    """Mean P(Chandler) of Chandler's real lines and of both models' replies, each scored as the
    answer to its message (the last turn of the context, or the everyday message)."""
    held_out_messages = [record["context"][-1]["text"] for record in samples["held_out"]]
    mean = lambda replies, messages: float(np.mean(scorer.score(replies, messages)))  # noqa: E731
    figures = {"style_p_chandler_real_held_out": mean([r["reply"] for r in samples["held_out"]], held_out_messages)}
    for name, replies in samples["replies"].items():
        figures[f"style_p_chandler_{name}_held_out"] = mean(replies["held_out"], held_out_messages)
        figures[f"style_p_chandler_{name}_everyday"] = mean(replies["everyday"], EVERYDAY_MESSAGES)
    return figures


def plot_losses(losses: dict[str, LossResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    names = list(losses)
    bars = axes.bar(names, [losses[name].loss for name in names], color=["#999999", "#4c72b0"])
    axes.bar_label(bars, fmt="%.3f")
    axes.set(ylabel="test loss per reply token", title="Held-out episodes")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(out: Path, adapter: Path, base_model: str, losses: dict[str, LossResult], samples: dict,
                 style: dict[str, float], style_model: Path) -> None:
    base, tuned = losses["base"], losses["adapter"]
    p = lambda key: f"{style[f'style_p_chandler_{key}']:.3f}"  # noqa: E731
    change = (tuned.loss - base.loss) / base.loss
    rows = []
    for record, before, after in zip(samples["held_out"], samples["replies"]["base"]["held_out"], samples["replies"]["adapter"]["held_out"]):
        context = "<br>".join(f"**{turn['speaker']}:** {turn['text']}" for turn in record["context"])
        rows.append(f"| {context} | {record['reply']} | {before} | {after} |")
    everyday = [
        f"| {message} | {before} | {after} |"
        for message, before, after in zip(EVERYDAY_MESSAGES, samples["replies"]["base"]["everyday"], samples["replies"]["adapter"]["everyday"])
    ]
    escape = lambda line: line.replace("\n", " ")  # noqa: E731
    (out / "report.md").write_text(f"""# Evaluation: `{adapter}` on `{base_model}`

Test split (held-out episodes), {base.tokens} reply tokens, the same prompts for both models.

| model | loss per reply token | perplexity |
| --- | --- | --- |
| base | {base.loss:.3f} | {base.perplexity:.1f} |
| base + adapter | {tuned.loss:.3f} | {tuned.perplexity:.1f} |

Change in loss: {change:+.1%}.

![losses](losses.png)

## Style: mean P(Chandler)

By the style classifier `{os.path.relpath(style_model)}`, each reply scored as the answer to its message:
{len(samples["held_out"])} held-out contexts, {len(EVERYDAY_MESSAGES)} everyday messages (the replies below).

| lines | held-out contexts | everyday messages |
| --- | --- | --- |
| Chandler's real lines | {p("real_held_out")} | – |
| base | {p("base_held_out")} | {p("base_everyday")} |
| base + adapter | {p("adapter_held_out")} | {p("adapter_everyday")} |

## Held-out contexts (sampled, seed {SAMPLE_SEED})

| context | Chandler's real line | base | base + adapter |
| --- | --- | --- | --- |
{chr(10).join(map(escape, rows))}

## Everyday messages (not from the show)

| message | base | base + adapter |
| --- | --- | --- |
{chr(10).join(map(escape, everyday))}
""")


def evaluate(data: Path, adapter: Path, base_model: str, out: Path, limit: int | None = None,
             samples: int = 8, max_new_tokens: int = 40, style_model: Path = DEFAULT_STYLE_MODEL) -> dict:
    from serve.engine.loading import ModelLoadError

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelLoadError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    scorer = StyleScorer(style_model)
    out.mkdir(parents=True, exist_ok=True)
    test = read_split(data, "test")
    loss_pairs = test[: limit or None]
    losses = test_losses(loss_pairs, adapter, base_model)
    replies = sample_replies(test, adapter, base_model, samples, max_new_tokens)
    style = style_figures(scorer, replies)
    plot_losses(losses, out / "losses.png")
    write_report(out, adapter, base_model, losses, replies, style, style_model)
    metrics = {
        "test_pairs_used": len(loss_pairs),
        "test_reply_tokens": losses["base"].tokens,
        "base_loss": losses["base"].loss,
        "adapter_loss": losses["adapter"].loss,
        "base_perplexity": losses["base"].perplexity,
        "adapter_perplexity": losses["adapter"].perplexity,
        "relative_change": (losses["adapter"].loss - losses["base"].loss) / losses["base"].loss,
        **style,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
