"""The backend's settings: documented defaults, overridden by the Serve config's `args` (typed:
`AppArgs`), then by environment variables (pydantic-settings). Secrets (the API key, the Redis
URL with its password, the feedback salt) come only from the environment and are never logged.

| variable                      | default    | meaning                                                 |
| ----------------------------- | ---------- | ------------------------------------------------------- |
| CHANDLER_BASE_MODEL           | embedded   | base model: `embedded`, a Hugging Face id or a folder   |
| CHANDLER_ADAPTER              | default    | LoRA adapter: `default` (shipped), a folder, or `none`  |
| CHANDLER_ENGINE               | auto       | `auto` (ct2 on CPU when the base converts, torch on CUDA), `torch`, `ct2` |
| CHANDLER_QUANTIZATION         | auto       | `auto` (4-bit on CUDA, int8 under ct2), `none` (fp32), `4bit` (torch) |
| CHANDLER_DEVICE               | auto       | `auto`, `cpu`, `cuda`, ...                              |
| CHANDLER_TORCH_THREADS        | 0          | torch threads in a model replica; 0: Ray's default      |
| CHANDLER_MAX_NEW_TOKENS       | 60         | reply length cap in tokens (also the OpenAI max_tokens cap) |
| CHANDLER_TEMPERATURE          | 0.8        | sampling temperature (0: greedy)                        |
| CHANDLER_TOP_P                | 0.9        | nucleus sampling                                        |
| CHANDLER_BEST_OF              | 1          | >1: sample n replies, send the most Chandler-like (n× the compute; whole replies, not streamed word by word) |
| CHANDLER_REPLY_MODE           | blend      | `generate`, `quote` (his real lines) or `blend` (the selector picks among both; one piece, not streamed word by word) |
| CHANDLER_RERANK               | on         | `off`: the selector alone picks his line, no LM rerank of its top lines (~1 s sooner on 2 CPU cores) |
| CHANDLER_PICKER_URL           | (unset)    | an OpenAI-compatible API (e.g. http://localhost:11434/v1) whose model picks among his top lines (serve/character/picker.py) |
| CHANDLER_PICKER_MODEL         | (unset)    | the model that picks there; needed with the URL          |
| CHANDLER_PICKER_TIMEOUT       | 5          | seconds to wait for its pick; after that the policy's own line is sent |
| CHANDLER_PICKER_LINES         | 20         | his top lines it picks among (2-20; the LM reranks each of them: 20 cost ~1 s more a reply on 2 CPU cores than 5) |
| CHANDLER_PICKER_API_KEY       | (unset)    | secret: sent to the picker's API as `Authorization: Bearer <key>` |
| CHANDLER_CONTEXT_TURNS        | 20         | turns kept per channel                                  |
| CHANDLER_CONTEXT_TTL          | 86400      | seconds a channel's context (and a reply kept for its Idempotency-Key) lives after its last turn |
| CHANDLER_MAX_MESSAGE_CHARS    | 2000       | longest accepted message (413 above; prompts are also capped in tokens, data/dialogue.py) |
| CHANDLER_REQUEST_TIMEOUT      | 60         | seconds before a request gives up with 503 (history read, generation and commit) |
| CHANDLER_FEEDBACK             | on         | `off`: POST /v1/feedback stores nothing (answers 404)   |
| CHANDLER_FEEDBACK_MAX         | 100000     | ratings kept in Redis (a capped stream; the oldest go first) |
| CHANDLER_FEEDBACK_SALT        | (unset)    | secret for hashing user ids in feedback; unset: no user id is stored |
| REDIS_URL                     | (unset)    | e.g. redis://localhost:6379/0; unset: in-process store  |
| CHANDLER_API_KEY              | (unset)    | when set, /v1/* needs `Authorization: Bearer <key>`     |
"""
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    """A malformed setting; the message is one line for the operator."""


class AppArgs(BaseModel):
    """The Serve config's `args` (serve/config.yaml): every setting but the secrets."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=False)

    base_model: str = "embedded"
    adapter: str = "default"
    engine: Literal["auto", "torch", "ct2"] = "auto"  # serve/engine/__init__.py load_engine
    quantization: str = "auto"
    device: str = "auto"
    torch_threads: NonNegativeInt = 0
    max_new_tokens: PositiveInt = 60
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    best_of: PositiveInt = 1
    reply_mode: Literal["generate", "quote", "blend"] = "blend"  # serve/character/policy.py
    rerank: bool = True  # the LM rerank of the selector's top lines, where the selector has one fitted
    picker_url: str | None = Field(None, pattern=r"^https?://\S+$")  # serve/character/picker.py
    picker_model: str | None = None
    picker_timeout_s: PositiveFloat = Field(5.0, validation_alias="CHANDLER_PICKER_TIMEOUT")
    picker_lines: int = Field(20, ge=2, le=20)
    context_turns: PositiveInt = 20
    context_ttl_s: PositiveInt = Field(86400, validation_alias="CHANDLER_CONTEXT_TTL")
    max_message_chars: PositiveInt = 2000
    request_timeout_s: PositiveFloat = Field(60.0, validation_alias="CHANDLER_REQUEST_TIMEOUT")
    feedback: bool = True
    feedback_max: PositiveInt = 100_000
    model_name: str = "chandler"  # the `model` reported by the OpenAI-compatible endpoint


class Settings(AppArgs, BaseSettings):
    """`AppArgs` with the environment on top (CHANDLER_<NAME> unless the table says otherwise)."""

    model_config = SettingsConfigDict(env_prefix="CHANDLER_", extra="forbid", frozen=True, validate_by_alias=True)

    redis_url: str | None = Field(None, validation_alias="REDIS_URL", repr=False)
    api_key: str | None = Field(None, repr=False)
    feedback_salt: str | None = Field(None, repr=False)
    picker_api_key: str | None = Field(None, repr=False)

    @model_validator(mode="after")
    def picker_named(self) -> "Settings":
        if self.picker_url and not self.picker_model:
            raise ValueError("picker_url (CHANDLER_PICKER_URL) needs picker_model (CHANDLER_PICKER_MODEL): the model that picks")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return env_settings, init_settings  # the environment overrides the Serve config's args

    def args(self) -> AppArgs:
        """The settings without the secrets: what a model replica is given."""
        return AppArgs(**self.model_dump(include=set(AppArgs.model_fields)))


def env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"CHANDLER_{field.upper()}"


def load(args: AppArgs | Mapping[str, Any] | None = None) -> Settings:
    """Defaults ← the Serve config's `args` ← environment variables; one clear line when malformed."""
    try:
        given = args if isinstance(args, AppArgs) else AppArgs.model_validate(dict(args or {}))
        return Settings(**given.model_dump(exclude_unset=True))
    except ValidationError as error:
        problem = error.errors()[0]
        if not problem["loc"]:  # a rule across settings (`picker_named`): its input is all of them, secrets too
            raise SettingsError(problem["ctx"]["error"].args[0]) from None
        field = str(problem["loc"][0])
        if problem["type"] == "extra_forbidden":
            raise SettingsError(f"{field}: not a setting the Serve config may give (secrets come from the environment)") from None
        name = field
        if field in Settings.model_fields and os.environ.get(env_name(field)):
            name = env_name(field)
        raise SettingsError(f"{name}: {problem['msg']}, not {problem.get('input')!r}") from None
