"""The merged model (base + LoRA adapter, PEFT `merge_and_unload`) converted for CTranslate2, cached.

The conversion is stored in its weight type (int8 or float32) under the cache folder, keyed by the
base model, the adapter's content and that type. The first start converts (tens of seconds);
later starts only load.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from serve.engine.loading import EMBEDDED, ModelLoadError, attach_adapter, cache_dir, load_model, load_tokenizer, resolve

log = logging.getLogger(__name__)

MODEL_FILE = "model.bin"


class ConversionError(ModelLoadError):
    """A base model that CTranslate2 cannot convert (an architecture it does not support)."""


def check_convertible(base_model: str) -> None:
    """Fail fast, before loading any weights, for an architecture the converter does not know."""
    from ctranslate2.converters.transformers import _MODEL_LOADERS
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve(base_model))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load base model {base_model!r}: {str(error).strip().splitlines()[0]}") from None
    if type(config).__name__ not in _MODEL_LOADERS:
        raise ConversionError(f"CTranslate2 cannot convert base model {base_model!r}: architecture {config.model_type!r} is not supported")


def _files_digest(digest, folder: Path, patterns: tuple[str, ...], content: bool) -> None:
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)):
            digest.update(path.name.encode())
            if content:
                digest.update(path.read_bytes())
            else:  # large weight files: size and modification time stand for the content
                stat = path.stat()
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())


def cache_key(base_model: str, adapter: Path | None, quantization: str) -> str:
    """Changes whenever the base model's files, the adapter's content, the weight type or CTranslate2's version do."""
    import ctranslate2

    digest = hashlib.sha256(f"ct2 {ctranslate2.__version__}\nbase {base_model}\n{quantization}\n".encode())
    base = Path(resolve(base_model))
    if base.is_dir():
        _files_digest(digest, base, ("config.json",), content=True)
        _files_digest(digest, base, ("*.safetensors", "*.bin"), content=False)
    if adapter is not None:
        _files_digest(digest, Path(adapter), ("adapter_config.json", "adapter_model.*"), content=True)
    return digest.hexdigest()[:16]


def converted_folder(base_model: str = EMBEDDED, adapter: Path | None = None, quantization: str = "int8") -> Path:
    """The CTranslate2 model folder for base + adapter with `quantization` weights, converting it on first use."""
    name = "smollm2-135m-instruct" if base_model == EMBEDDED else Path(base_model).name or "model"
    folder = cache_dir() / "ct2" / f"{name}-{quantization}-{cache_key(base_model, adapter, quantization)}"
    if (folder / MODEL_FILE).exists():
        return folder
    check_convertible(base_model)  # only now: importing the converter takes a second
    log.info("converting %s%s for CTranslate2 into %s (first start only)", base_model, f" + {adapter}" if adapter else "", folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".merged-") as merged:
        _save_merged(base_model, adapter, Path(merged))
        staging = folder.with_name(folder.name + f".tmp{os.getpid()}")
        _convert(Path(merged), staging, base_model, quantization)
    if folder.exists():  # a half-written copy from an interrupted first start
        shutil.rmtree(folder)
    staging.replace(folder)
    return folder


def _save_merged(base_model: str, adapter: Path | None, out: Path) -> None:
    model = load_model(base_model, quantization="none", device="cpu")
    if adapter is not None:
        model = attach_adapter(model, adapter, base_model).merge_and_unload()
    model.save_pretrained(out)
    load_tokenizer(base_model).save_pretrained(out)


def _convert(merged: Path, out: Path, base_model: str, quantization: str) -> None:
    from ctranslate2.converters import TransformersConverter

    try:
        TransformersConverter(str(merged)).convert(str(out), quantization=quantization, force=True)
    except (ValueError, NotImplementedError, KeyError) as error:
        shutil.rmtree(out, ignore_errors=True)
        raise ConversionError(f"CTranslate2 cannot convert base model {base_model!r}: {str(error).strip().splitlines()[0]}") from None
