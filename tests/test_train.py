"""Fine-tuning and evaluation on a tiny random-weight Llama and the fixture transcripts."""
import json
from pathlib import Path

import pytest

from data.build import build
from serve.engine.loading import attach_adapter, load_model
from train.__main__ import main
from train.sft import SFTConfig, train


@pytest.fixture(scope="module")
def dataset(fixtures, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pairs")
    build(fixtures / "friends_mini.tsv", folder, "Chandler Bing", 4, seed=0)
    return folder


def config(dataset: Path, base: Path, out: Path, **overrides) -> SFTConfig:
    settings = dict(data=str(dataset), out=str(out), base_model=str(base), use_4bit=False, max_steps=12,
                    learning_rate=2e-3, logging_steps=1, eval_steps=6, save_steps=6, lora_r=4, lora_alpha=8)
    return SFTConfig(**{**settings, **overrides})


def test_training_lowers_the_loss_and_writes_a_loadable_adapter(dataset, tiny_llama, tmp_path):
    out = tmp_path / "adapter"
    metrics = train(config(dataset, tiny_llama, out, max_steps=24, learning_rate=1e-2))
    losses = [entry["loss"] for entry in json.loads((out / "training_log.json").read_text()) if "loss" in entry]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3
    for name in ("adapter_config.json", "adapter_model.safetensors", "loss.png", "metrics.json", "README.md"):
        assert (out / name).is_file(), name
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_llama)
    assert metrics["steps"] == 24 and metrics["validation_loss"] > 0
    model = attach_adapter(load_model(str(tiny_llama), quantization="none"), out, str(tiny_llama))
    assert any("lora_A" in name for name, _ in model.named_parameters())
    card = (out / "README.md").read_text()
    assert "| lora_r | 4 |" in card and "| learning_rate | 0.01 |" in card


def test_labels_cover_only_the_reply(dataset, tiny_llama):
    from serve.engine.loading import load_tokenizer
    from train.examples import IGNORE_INDEX, encode, read_split

    tokenizer = load_tokenizer(str(tiny_llama))
    record = read_split(dataset, "train")[0]
    example = encode(record, tokenizer)
    reply_ids = [token for token in example["labels"] if token != IGNORE_INDEX]
    assert tokenizer.decode(reply_ids) == record["reply"] + tokenizer.eos_token
    assert example["labels"][: -len(reply_ids)] == [IGNORE_INDEX] * (len(example["labels"]) - len(reply_ids))


def test_4bit_training_runs(dataset, tiny_llama, tmp_path):
    metrics = train(config(dataset, tiny_llama, tmp_path / "qlora", use_4bit=True, max_steps=2, eval_steps=2))
    assert metrics["steps"] == 2
    assert (tmp_path / "qlora" / "adapter_model.safetensors").is_file()


def test_resume_continues_from_the_last_checkpoint(dataset, tiny_llama, tmp_path):
    out = tmp_path / "resumed"
    train(config(dataset, tiny_llama, out, max_steps=6))
    assert (out / "checkpoints" / "checkpoint-6").is_dir()
    metrics = train(config(dataset, tiny_llama, out, max_steps=10, eval_steps=2), resume=True)
    assert metrics["steps"] == 10
    log = json.loads((out / "training_log.json").read_text())
    steps = [entry["step"] for entry in log if "loss" in entry]
    assert steps[:6] == [1, 2, 3, 4, 5, 6] and steps[-1] == 10 and len(steps) == len(set(steps))
    # The evaluation interval given at resume counts, not the checkpoint's (6).
    assert [entry["step"] for entry in log if "eval_loss" in entry][:4] == [6, 8, 10, 10]


def test_evaluate_writes_report_and_metrics(dataset, tiny_llama, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    train(config(dataset, tiny_llama, adapter, max_steps=4))
    code = main(["evaluate", "--data", str(dataset), "--adapter", str(adapter), "--base-model", str(tiny_llama),
                 "--out", str(tmp_path / "eval"), "--samples", "2", "--max-new-tokens", "4", "--limit", "2"])
    assert code == 0, capsys.readouterr().err
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| base |" in report and "| base + adapter |" in report and "How was your day at work?" in report
    metrics = json.loads((adapter / "metrics.json").read_text())["test"]
    assert metrics["base_loss"] > 0 and metrics["adapter_loss"] > 0 and metrics["base_loss"] != metrics["adapter_loss"]
    assert metrics["test_pairs_used"] == 2
    assert (tmp_path / "eval" / "losses.png").stat().st_size > 1000
    style = {key: value for key, value in metrics.items() if key.startswith("style_p_chandler_")}
    assert set(style) == {f"style_p_chandler_{key}" for key in
                          ("real_held_out", "base_held_out", "adapter_held_out", "base_everyday", "adapter_everyday")}
    assert all(0.0 < value < 1.0 for value in style.values())
    assert f"| Chandler's real lines | {style['style_p_chandler_real_held_out']:.3f} | – |" in report


@pytest.mark.parametrize("case", ["no splits", "unknown model", "adapter in output", "evaluate missing adapter",
                                  "evaluate missing style model"])
def test_bad_input_is_one_line_and_exit_2(case, dataset, tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["sft", "--data", str(dataset), "--base-model", str(tiny_llama), "--out", str(out), "--max-steps", "1", "--no-4bit"]
    if case == "no splits":
        args[2] = str(tmp_path)
        expected = "no train.jsonl"
    elif case == "unknown model":
        args[4] = "nobody/no-such-model-offline"
        expected = "cannot load base model"
    elif case == "adapter in output":
        out.mkdir()
        (out / "adapter_config.json").write_text("{}")
        expected = "already holds an adapter"
    elif case == "evaluate missing adapter":
        args = ["evaluate", "--data", str(dataset), "--adapter", str(tmp_path / "none"), "--out", str(out)]
        expected = "not a LoRA adapter folder"
    else:
        adapter = tmp_path / "adapter"  # the style model is checked before the adapter is loaded
        adapter.mkdir()
        (adapter / "adapter_config.json").write_text("{}")
        args = ["evaluate", "--data", str(dataset), "--adapter", str(adapter), "--base-model", str(tiny_llama),
                "--out", str(out), "--style-model", str(tmp_path / "no-style")]
        expected = "no style model here"
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert expected in error and len(error.splitlines()) == 1
