"""The CTranslate2 engine: the merged model (base + adapter) converted once and cached, int8 on CPU
by default (float32 as an option), batched `generate_batch` and streaming `generate_tokens`.

Two differences from the torch engine, both from CTranslate2 itself:
- the repetition penalty counts the reply's own tokens only, not the prompt's (CTranslate2
  forwards the prompt in one pass); under greedy decoding without a penalty it gives the torch
  engine's tokens;
- CTranslate2 seeds a worker thread's random generator once, when the thread first samples, so a
  request with a seed runs on a fresh generator made for it (one model load, about a second).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from data.dialogue import CONTEXT_TOKEN_BUDGET, PERSONA, Turn
from serve.engine.base import EngineBase
from serve.engine.cleanup import MAX_REPLY_CHARS, turn_end
from serve.engine.ct2_convert import converted_folder
from serve.engine.interface import Reply, Sampling
from serve.engine.loading import EMBEDDED, ModelLoadError, resolve, stop_token_ids

COMPUTE_TYPES = ("int8", "float32")
_UNSEEDED = 2**32 - 1  # CTranslate2's "no seed": workers draw theirs from std::random_device


class Ct2Engine(EngineBase):
    """CTranslate2 `Generator` on the merged model; `threads` OpenMP threads per generation
    (0: CTranslate2's default), `inter_threads` generations at once sharing the weights."""

    def __init__(
        self,
        base_model: str = EMBEDDED,
        adapter: str | Path | None | Literal["default"] = "default",
        compute_type: str = "int8",
        device: str = "cpu",
        persona: str = PERSONA,
        context_budget: int = CONTEXT_TOKEN_BUDGET,
        max_chars: int = MAX_REPLY_CHARS,
        style_model: str | Path | None = None,
        threads: int = 0,
        inter_threads: int = 1,
    ) -> None:
        import ctranslate2

        if compute_type not in COMPUTE_TYPES:
            raise ModelLoadError(f"unknown CTranslate2 compute type {compute_type!r} (choose from {', '.join(COMPUTE_TYPES)})")
        super().__init__(base_model, adapter, persona, context_budget, max_chars, style_model)
        self.device, self.compute_type = device, compute_type
        self.folder = converted_folder(base_model, self.adapter, compute_type)
        kind, _, index = device.partition(":")  # cuda:1 -> cuda, device_index 1
        self._options = {"device": kind, "device_index": int(index or 0), "compute_type": compute_type, "intra_threads": threads}
        self.inter_threads = inter_threads
        try:
            self.generator = ctranslate2.Generator(str(self.folder), inter_threads=inter_threads, **self._options)
        except (RuntimeError, ValueError) as error:
            raise ModelLoadError(f"CTranslate2 cannot load {self.folder} on {device}: {str(error).strip().splitlines()[0]}") from None
        self.stop_ids = stop_token_ids(self.tokenizer, _configured_eos(base_model))
        self._seed_lock = threading.Lock()

    def _decoding(self, sampling: Sampling) -> dict:
        greedy = sampling.temperature <= 0
        return {
            "max_length": sampling.max_new_tokens,
            "sampling_topk": 1 if greedy else 0,  # 0: the whole vocabulary, cut by top_p
            "sampling_topp": 1.0 if greedy else sampling.top_p,
            "sampling_temperature": 1.0 if greedy else sampling.temperature,
            "repetition_penalty": sampling.repetition_penalty,
            "end_token": self.stop_ids,
        }

    @contextmanager
    def _generator(self, sampling: Sampling):
        """The shared generator; for a seeded sampling request, a fresh one seeded before its worker starts."""
        if sampling.seed is None or sampling.temperature <= 0:
            yield self.generator
            return
        import ctranslate2

        with self._seed_lock:
            ctranslate2.set_random_seed(sampling.seed)
            try:
                seeded = ctranslate2.Generator(str(self.folder), inter_threads=1, **self._options)
                yield seeded
            finally:
                ctranslate2.set_random_seed(_UNSEEDED)

    def _generate(self, conversations: Sequence[Sequence[Turn]], sampling: Sampling) -> list[Reply]:
        """One batch per generator worker (`inter_threads`), run at once, each row stopped at its turn's end."""
        if not conversations:
            return []
        prompts = [self.prompt_ids(turns) for turns in conversations]
        size = -(-len(prompts) // self.inter_threads)
        with self._generator(sampling) as generator:
            pending = [self._submit(generator, prompts[i : i + size], sampling) for i in range(0, len(prompts), size)]
            results = [result.result() for chunk in pending for result in chunk]
        return [self._reply(len(ids), result.sequences_ids[0], sampling.max_new_tokens) for ids, result in zip(prompts, results)]

    def reply_log_probs(self, conversations: Sequence[Sequence[Turn]], replies: Sequence[str], batch_size: int = 32) -> list[list[float]]:
        """The log-probability of each token of each reply (its end of turn included) after its
        conversation's prompt (`scored_ids`); scored in batches."""
        scored = [self.scored_ids(turns, reply) for turns, reply in zip(conversations, replies)]
        results = self.generator.score_batch([self.tokenizer.convert_ids_to_tokens(ids) for ids, _ in scored],
                                             max_batch_size=batch_size)
        return [result.log_probs[-length:] for result, (_, length) in zip(results, scored)]

    def _submit(self, generator, prompts: list[list[int]], sampling: Sampling) -> list:
        rows: list[list[int]] = [[] for _ in prompts]
        decode = self.tokenizer.decode  # not `self`: a worker thread that drops the last reference
        # to the engine would destroy the generator, and with it itself (std::system_error)

        def turn_ended(step) -> bool:  # stop a row once its text leaves the character's turn
            rows[step.batch_id].append(step.token_id)
            return turn_end(decode(rows[step.batch_id])) is not None

        return generator.generate_batch(
            [self.tokenizer.convert_ids_to_tokens(ids) for ids in prompts], asynchronous=True,
            include_prompt_in_result=False, return_end_token=True, callback=turn_ended, **self._decoding(sampling),
        )

    def _raw_stream(self, prompt: list[int], sampling: Sampling) -> Iterator[str]:
        """Raw text as tokens arrive, held back while a character is still incomplete; closing
        this closes `generate_tokens`, which stops the generation."""
        ids: list[int] = []
        sent = ""
        with self._generator(sampling) as generator:
            steps = generator.generate_tokens(self.tokenizer.convert_ids_to_tokens(prompt), **self._decoding(sampling))
            try:
                for step in steps:
                    if step.token_id in self.stop_ids:
                        break
                    ids.append(step.token_id)
                    text = self.tokenizer.decode(ids)
                    if not text.endswith("\ufffd"):
                        yield text[len(sent) :]
                        sent = text
            finally:
                steps.close()


def _configured_eos(base_model: str) -> int | list[int] | None:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(resolve(base_model)).eos_token_id
    except OSError:  # a model without generation_config.json
        return None
