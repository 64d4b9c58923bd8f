"""The model library, no Ray and no HTTP: the engine interface, loading, the torch and ct2 engines, clean-up.

    from serve.engine import Sampling, load_engine
    engine = load_engine()                              # auto: ct2 int8 on CPU, torch (4-bit) on CUDA
    engine.generate([[{"speaker": "Joey", "text": "How you doin'?"}]])[0].text

`Engine` is the torch engine (training and `train evaluate` need its logits).
"""
from __future__ import annotations

import logging
from pathlib import Path

from serve.engine.interface import Reply, Sampling
from serve.engine.loading import EMBEDDED, ModelLoadError, pick_device, resolve_adapter
from serve.engine.torch_engine import TorchEngine as Engine

__all__ = ["ENGINES", "Engine", "ModelLoadError", "Reply", "Sampling", "load_engine", "resolve_adapter"]

log = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "ct2")
CT2_COMPUTE_TYPES = {"auto": "int8", "none": "float32"}  # the `quantization` setting, read by the ct2 engine


def load_engine(engine: str = "auto", base_model: str = EMBEDDED, adapter: str | Path | None = "default",
                quantization: str = "auto", device: str = "auto", threads: int = 0):
    """The engine to serve with. `auto`: ct2 on CPU when the base model converts (int8, or
    float32 with quantization `none`), else torch; torch on CUDA and for bitsandbytes `4bit`.
    `ct2` fails with one line where `auto` falls back to torch."""
    if engine not in ENGINES:
        raise ModelLoadError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    device = pick_device(device)
    if engine == "torch" or (engine == "auto" and (device.startswith("cuda") or quantization == "4bit")):
        return Engine(base_model, adapter, quantization, device)
    if quantization not in CT2_COMPUTE_TYPES:
        raise ModelLoadError(f"quantization {quantization!r} is the torch engine's; the ct2 engine takes auto (int8) or none (float32)")
    try:
        from serve.engine.ct2_convert import ConversionError
        from serve.engine.ct2_engine import Ct2Engine
    except ImportError:
        if engine == "ct2":
            raise ModelLoadError("the ct2 engine needs CTranslate2: pip install ctranslate2") from None
        log.warning("CTranslate2 is not installed; using the torch engine")
        return Engine(base_model, adapter, quantization, device)
    try:
        return Ct2Engine(base_model, adapter, CT2_COMPUTE_TYPES[quantization], device, threads=threads)
    except ConversionError as error:
        if engine == "ct2":
            raise
        log.warning("%s; using the torch engine", error)
        return Engine(base_model, adapter, quantization, device)
