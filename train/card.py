"""The adapter's model card (README.md), written from its metrics.json."""
from __future__ import annotations

import json
from pathlib import Path


def update_metrics(out: Path, new: dict) -> dict:
    """Merge `new` into OUT/metrics.json (training and evaluation each write their part)."""
    path = out / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics.update(new)
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _row(name: str, value) -> str:
    # Four significant digits: 3.004 for a loss, 0.0002 for a learning rate.
    return f"| {name} | {value:.4g} |" if isinstance(value, float) else f"| {name} | {value} |"


def write_card(out: Path) -> None:
    metrics = json.loads((out / "metrics.json").read_text())
    config = metrics.get("config", {})
    adapter = json.loads((out / "adapter_config.json").read_text())
    base = adapter["base_model_name_or_path"]
    hyper = "\n".join(
        _row(key, config[key])
        for key in ("use_4bit", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "epochs", "max_steps",
                    "batch_size", "gradient_accumulation", "learning_rate", "warmup_steps",
                    "context_token_budget", "seed")
        if key in config
    )
    results = "\n".join(_row(key, value) for key, value in {**metrics.get("training", {}), **metrics.get("test", {})}.items())
    (out / "README.md").write_text(f"""---
base_model: {base}
library_name: peft
tags: [lora, qlora, friends, chandler-bing]
---
# {out.name}

A LoRA adapter that makes `{base}` talk like Chandler Bing from *Friends*.

- **Data**: (context, Chandler reply) pairs built by `python -m data build` from the Emory NLP
  Friends transcripts; up to 4 preceding turns of the same scene, cut to the most recent
  {config.get("context_token_budget", "?")} tokens; episodes split 80/10/10 (seed {config.get("seed", 0)}),
  so no scene of a test episode is seen in training.
- **Prompt**: the persona system prompt and turns of `data/dialogue.py`, the same the server uses.
  The loss counts only the reply tokens.

## Hyperparameters

| setting | value |
| --- | --- |
{hyper}

## Results

| metric | value |
| --- | --- |
{results}

Loss is per reply token. `test` figures come from `python -m train evaluate` (see `eval/report.md`).

![loss](loss.png)

## Use

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "models/{out.name}")
```

or in this project: `python -m serve chat --adapter models/{out.name}`.
""")
