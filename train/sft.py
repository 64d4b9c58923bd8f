"""`python -m train sft`: QLoRA fine-tuning with the Hugging Face Trainer and PEFT."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

from serve.engine.loading import EMBEDDED, hub_name, load_model, load_tokenizer
from train.card import update_metrics, write_card
from train.examples import CONTEXT_TOKEN_BUDGET, encoded_split
from train.plots import plot_loss

log = logging.getLogger(__name__)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class OutputInUse(ValueError):
    """The output folder already holds a different adapter."""


@dataclass
class SFTConfig:
    """The original project's recipe as defaults."""

    data: str
    out: str
    base_model: str = EMBEDDED
    use_4bit: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 1
    gradient_accumulation: int = 2
    learning_rate: float = 2e-4
    warmup_steps: int = 10
    eval_steps: int = 50
    eval_limit: int | None = None
    save_steps: int = 100
    logging_steps: int = 10
    limit: int | None = None
    context_token_budget: int = CONTEXT_TOKEN_BUDGET
    seed: int = 0


class TrainingLog(TrainerCallback):
    """Writes training_log.json at every log, so a long run can be watched and plotted."""

    def __init__(self, out: Path) -> None:
        self.path = out / "training_log.json"

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if state.is_world_process_zero:
            self.path.write_text(json.dumps(state.log_history, indent=1) + "\n")


class IntervalsFromArguments(TrainerCallback):
    """A resumed run would keep the logging, evaluation and saving intervals stored in its
    checkpoint; the ones given now count instead (e.g. fewer evaluations to finish sooner)."""

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        state.compute_steps(args, state.max_steps)


def check_output(out: Path, resume: bool, overwrite: bool) -> None:
    holds_adapter = (out / "adapter_config.json").exists()
    if holds_adapter and not (resume or overwrite):
        raise OutputInUse(f"{out}: already holds an adapter (pass --overwrite to replace it, or --resume)")


def peft_model(config: SFTConfig):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = load_model(config.base_model, quantization="4bit" if config.use_4bit else "none")
    if config.use_4bit:
        # Gradient checkpointing saves GPU memory but costs a third more time; CPU memory is ample.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=torch.cuda.is_available())
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def training_arguments(config: SFTConfig, checkpoints: Path) -> TrainingArguments:
    on_gpu = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=8,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        optim="paged_adamw_32bit" if on_gpu else "adamw_torch",
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=config.logging_steps,
        report_to=[],
        seed=config.seed,
        use_cpu=not on_gpu,
        dataloader_num_workers=0,
    )


def train(config: SFTConfig, resume: bool = False, overwrite: bool = False) -> dict:
    out = Path(config.out)
    check_output(out, resume, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    tokenizer = load_tokenizer(config.base_model)
    budget = config.context_token_budget
    train_set = encoded_split(Path(config.data), "train", tokenizer, config.limit, budget)
    eval_set = encoded_split(Path(config.data), "validation", tokenizer, config.eval_limit or config.limit, budget)
    model = peft_model(config)
    trainer = Trainer(
        model=model,
        args=training_arguments(config, checkpoints),
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=[TrainingLog(out), IntervalsFromArguments()],
    )
    resume_from = resume and any(checkpoints.glob("checkpoint-*"))
    result = trainer.train(resume_from_checkpoint=True if resume_from else None)
    final_eval = trainer.evaluate()
    trainer.save_state()
    save_adapter(model, out, config.base_model)
    metrics = {
        "train_loss": result.training_loss,
        "validation_loss": final_eval["eval_loss"],
        "validation_perplexity": math.exp(final_eval["eval_loss"]),
        "steps": trainer.state.global_step,
        "train_pairs": len(train_set),
        "train_tokens_per_pair": mean_tokens(train_set),
    }
    (out / "training_log.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
    update_metrics(out, {"training": metrics, "config": asdict(config)})
    plot_loss(trainer.state.log_history, out / "loss.png")
    write_card(out)
    return metrics


def save_adapter(model, out: Path, base_model: str) -> None:
    """PEFT format, bf16 weights (half the size), naming the base model as users know it."""
    model.peft_config["default"].base_model_name_or_path = hub_name(base_model)
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.to(torch.bfloat16)
    model.save_pretrained(str(out))


def mean_tokens(dataset) -> float:
    return sum(len(ids) for ids in dataset["input_ids"]) / len(dataset)
