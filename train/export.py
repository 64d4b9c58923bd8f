"""`python -m train export --gguf OUT.gguf`: the base with the adapter merged, as one GGUF file that
llama.cpp and Ollama load.

The embedded base came as a GGUF file: its metadata (architecture, hyper-parameters, tokenizer,
chat template) is copied as it is, and its tensors are replaced by the merged model's, named by
gguf's own Hugging Face → GGUF map, query and key rows permuted the way llama.cpp's converter
does (transformers undoes that when it loads a GGUF file). Other bases: merge and use llama.cpp's
`convert_hf_to_gguf.py`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from serve.engine.loading import EMBEDDED, ModelLoadError, adapter_config, attach_adapter, embedded_gguf, load_model, resolve_adapter

log = logging.getLogger(__name__)

TYPES = ("f16", "q8_0")
_FILE_TYPE = {"f16": 1, "q8_0": 7}  # llama.cpp's LLAMA_FTYPE_MOSTLY_F16 / _Q8_0


def export_gguf(out: Path, adapter: str | Path | None = "default", weight_type: str = "f16", base_model: str = EMBEDDED) -> Path:
    """Write base + adapter (merged) to `out`; returns `out`."""
    import gguf

    if weight_type not in TYPES:
        raise ModelLoadError(f"unknown GGUF type {weight_type!r} (choose from {', '.join(TYPES)})")
    if base_model != EMBEDDED:
        raise ModelLoadError("export writes the embedded base's GGUF layout; for another base, merge it and use llama.cpp's convert_hf_to_gguf.py")
    adapter_path = resolve_adapter(adapter, base_model)
    if adapter_path is not None:
        adapter_config(adapter_path)  # fail fast, before the base model loads
    model = load_model(base_model, quantization="none", device="cpu")
    if adapter_path is not None:
        model = attach_adapter(model, adapter_path, base_model).merge_and_unload()
    template = gguf.GGUFReader(embedded_gguf())
    arch = template.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(out), arch)
    _copy_metadata(template, writer, weight_type)
    config = model.config
    model_arch = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch)
    names = gguf.get_tensor_name_map(model_arch, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd.weight
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelLoadError(f"no GGUF name for tensor {name!r}")
        data = tensor.float().numpy()
        if name.endswith("q_proj.weight"):
            data = _permute(data, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, config.num_key_value_heads)
        _add_tensor(writer, gguf, gguf_name, data, weight_type)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    log.info("wrote %s (%s, adapter %s)", out, weight_type, adapter_path or "none")
    return out


def _copy_metadata(template, writer, weight_type: str) -> None:
    import gguf

    for field in template.fields.values():
        if field.name.startswith("GGUF.") or field.name in (gguf.Keys.General.ARCHITECTURE, gguf.Keys.General.FILE_TYPE):
            continue  # written by GGUFWriter itself, or changed below
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    writer.add_file_type(_FILE_TYPE[weight_type])


def _add_tensor(writer, gguf, name: str, data: np.ndarray, weight_type: str) -> None:
    """Norms (1-D) stay float32; matrices become f16 or q8_0."""
    if data.ndim == 1:
        writer.add_tensor(name, data.astype(np.float32))
    elif weight_type == "f16":
        writer.add_tensor(name, data.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rotary layout (halves) → llama.cpp's (interleaved pairs), per head."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)
