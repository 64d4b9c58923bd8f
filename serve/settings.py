"""The backend's settings: documented defaults, overridden by the Serve config's `args`, then by
environment variables. Secrets (the API key, the Redis URL with its password) come only from the
environment and are never logged.

| variable                      | default    | meaning                                                 |
| ----------------------------- | ---------- | ------------------------------------------------------- |
| CHANDLER_BASE_MODEL           | embedded   | base model: `embedded`, a Hugging Face id or a folder   |
| CHANDLER_ADAPTER              | default    | LoRA adapter: `default` (shipped), a folder, or `none`  |
| CHANDLER_QUANTIZATION         | auto       | `auto` (4-bit on CUDA), `none`, `4bit`                  |
| CHANDLER_DEVICE               | auto       | `auto`, `cpu`, `cuda`, ...                              |
| CHANDLER_TORCH_THREADS        | 0          | torch threads in a model replica; 0: Ray's default      |
| CHANDLER_MAX_NEW_TOKENS       | 60         | reply length cap in tokens (also the OpenAI max_tokens cap) |
| CHANDLER_TEMPERATURE          | 0.8        | sampling temperature (0: greedy)                        |
| CHANDLER_TOP_P                | 0.9        | nucleus sampling                                        |
| CHANDLER_BEST_OF              | 1          | >1: sample n replies, send the most Chandler-like (n× the compute; whole replies, not streamed word by word) |
| CHANDLER_CONTEXT_TURNS        | 20         | turns kept per channel                                  |
| CHANDLER_CONTEXT_TTL          | 86400      | seconds a channel's context lives after its last turn   |
| CHANDLER_MAX_MESSAGE_CHARS    | 2000       | longest accepted message (413 above)                    |
| CHANDLER_REQUEST_TIMEOUT      | 60         | seconds before a request gives up with 503              |
| REDIS_URL                     | (unset)    | e.g. redis://localhost:6379/0; unset: in-process store  |
| CHANDLER_API_KEY              | (unset)    | when set, /v1/* needs `Authorization: Bearer <key>`     |
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any


class SettingsError(ValueError):
    """A malformed setting; the message is one line for the operator."""


@dataclass(frozen=True)
class Settings:
    base_model: str = "embedded"
    adapter: str = "default"
    quantization: str = "auto"
    device: str = "auto"
    torch_threads: int = 0
    max_new_tokens: int = 60
    temperature: float = 0.8
    top_p: float = 0.9
    best_of: int = 1
    context_turns: int = 20
    context_ttl_s: int = 86400
    max_message_chars: int = 2000
    request_timeout_s: float = 60.0
    model_name: str = "chandler"  # the `model` reported by the OpenAI-compatible endpoint
    redis_url: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)


ENV = {
    "base_model": "CHANDLER_BASE_MODEL",
    "adapter": "CHANDLER_ADAPTER",
    "quantization": "CHANDLER_QUANTIZATION",
    "device": "CHANDLER_DEVICE",
    "torch_threads": "CHANDLER_TORCH_THREADS",
    "max_new_tokens": "CHANDLER_MAX_NEW_TOKENS",
    "temperature": "CHANDLER_TEMPERATURE",
    "top_p": "CHANDLER_TOP_P",
    "best_of": "CHANDLER_BEST_OF",
    "context_turns": "CHANDLER_CONTEXT_TURNS",
    "context_ttl_s": "CHANDLER_CONTEXT_TTL",
    "max_message_chars": "CHANDLER_MAX_MESSAGE_CHARS",
    "request_timeout_s": "CHANDLER_REQUEST_TIMEOUT",
    "redis_url": "REDIS_URL",
    "api_key": "CHANDLER_API_KEY",
}
SECRETS = {"redis_url", "api_key"}  # environment only


def _convert(field_name: str, shown: str, kind: Any, value: Any) -> Any:
    if value is None or kind in ("str", "str | None"):
        return None if value in (None, "") else str(value)
    try:
        number = int(value) if kind == "int" else float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{shown} must be a number, not {value!r}") from None
    if number < 0 or (number == 0 and field_name not in {"torch_threads", "temperature"}):
        raise SettingsError(f"{shown} must be positive, not {value!r}")
    return number


def load(args: Mapping[str, Any] | None = None, env: Mapping[str, str] = os.environ) -> Settings:
    """Defaults ← the Serve config's `args` ← environment variables."""
    args = dict(args or {})
    unknown = set(args) - {f.name for f in fields(Settings)} | (set(args) & SECRETS)
    if unknown:
        raise SettingsError(f"unknown or secret settings in the Serve config args: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for f in fields(Settings):
        from_env = f.name in ENV and env.get(ENV[f.name]) not in (None, "")
        raw = env[ENV[f.name]] if from_env else args.get(f.name)
        if raw is not None:
            values[f.name] = _convert(f.name, ENV[f.name] if from_env else f.name, f.type, raw)
    return replace(Settings(), **values)
