"""The torch engine: base model (+ LoRA adapter), batched and streaming generation, clean replies.

No Ray here: the Serve app, the terminal chat, the benchmark and evaluation all use this class.

    engine = Engine()                                   # embedded SmolLM2 + shipped adapter if any
    engine.generate([[{"speaker": "Joey", "text": "How you doin'?"}]])[0].text
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch

from data.dialogue import CONTEXT_TOKEN_BUDGET, PERSONA, Turn
from serve.engine.base import EngineBase
from serve.engine.cleanup import MAX_REPLY_CHARS, turn_end
from serve.engine.interface import Reply, Sampling
from serve.engine.loading import EMBEDDED, attach_adapter, load_model, pick_device, stop_token_ids


class _TurnEnded:
    """Stopping criterion: a row is done once its new text leaves the character's turn."""

    def __init__(self, tokenizer, prompt_length: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :])
        return torch.tensor([turn_end(text) is not None for text in texts], device=input_ids.device)


class _Cancelled:
    """Stopping criterion: stop every row once `event` is set (the stream's reader went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), device=input_ids.device)


class TorchEngine(EngineBase):
    """Transformers `generate` on CPU or CUDA (4-bit there by default), with the adapter unmerged."""

    def __init__(
        self,
        base_model: str = EMBEDDED,
        adapter: str | Path | None | Literal["default"] = "default",
        quantization: str = "auto",
        device: str = "auto",
        persona: str = PERSONA,
        context_budget: int = CONTEXT_TOKEN_BUDGET,
        max_chars: int = MAX_REPLY_CHARS,
        style_model: str | Path | None = None,
    ) -> None:
        super().__init__(base_model, adapter, persona, context_budget, max_chars, style_model)
        self.device = pick_device(device)
        self.tokenizer.padding_side = "left"
        model = load_model(base_model, quantization, self.device)
        if self.adapter is not None:
            model = attach_adapter(model, self.adapter, base_model)
        self.model = model.eval()
        self.quantized = getattr(self.model, "hf_quantizer", None) is not None
        self.stop_ids = stop_token_ids(self.tokenizer, self.model.generation_config.eos_token_id)
        self._lock = threading.Lock()  # one generation at a time: the model and the RNG are shared

    def _encode(self, conversations: Sequence[Sequence[Turn]]) -> dict:
        ids = [self.prompt_ids(turns) for turns in conversations]
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        return {name: tensor.to(self.model.device) for name, tensor in batch.items()}

    def _generation_config(self, sampling: Sampling):
        from transformers import GenerationConfig

        greedy = sampling.temperature <= 0
        return GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None,
            repetition_penalty=sampling.repetition_penalty,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )

    @contextmanager
    def _seeded(self, seed: int | None):
        """Generation alone on the model; with a seed, on its own RNG state (restored after)."""
        with self._lock:
            if seed is None:
                yield
                return
            devices = [self.model.device] if self.model.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                yield

    @torch.inference_mode()
    def _generate(self, conversations: Sequence[Sequence[Turn]], sampling: Sampling) -> list[Reply]:
        if not conversations:
            return []
        from transformers import StoppingCriteriaList

        inputs = self._encode(conversations)
        width = inputs["input_ids"].shape[1]
        with self._seeded(sampling.seed):
            output = self.model.generate(
                **inputs,
                generation_config=self._generation_config(sampling),
                stopping_criteria=StoppingCriteriaList([_TurnEnded(self.tokenizer, width)]),
            )
        rows = zip(inputs["attention_mask"], output[:, width:].tolist())
        return [self._reply(int(mask.sum()), row, sampling.max_new_tokens) for mask, row in rows]

    @torch.inference_mode()
    def reply_log_probs(self, conversations: Sequence[Sequence[Turn]], replies: Sequence[str], batch_size: int = 8) -> list[list[float]]:
        """The log-probability of each token of each reply (its end of turn included) after its
        conversation's prompt (`scored_ids`); scored in right-padded batches."""
        scored = [self.scored_ids(turns, reply) for turns, reply in zip(conversations, replies)]
        log_probs: list[list[float]] = []
        for start in range(0, len(scored), batch_size):
            batch = scored[start : start + batch_size]
            padded = self.tokenizer.pad({"input_ids": [sequence for sequence, _ in batch]}, padding=True, padding_side="right",
                                        return_tensors="pt").to(self.model.device)
            with self._lock:
                logits = self.model(**padded).logits[:, :-1].float()
            rows = torch.log_softmax(logits, dim=-1).gather(2, padded["input_ids"][:, 1:, None])[..., 0]  # row[t]: token t + 1
            log_probs += [row[len(sequence) - length - 1 : len(sequence) - 1].tolist() for row, (sequence, length) in zip(rows, batch)]
        return log_probs

    def _raw_stream(self, prompt: list[int], sampling: Sampling) -> Iterator[str]:
        """Raw text pieces from `generate` in a worker thread; closing this stops the worker."""
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        inputs = {"input_ids": torch.tensor([prompt], device=self.model.device)}
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True)
        cancel = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with self._seeded(sampling.seed), torch.inference_mode():
                    self.model.generate(
                        **inputs,
                        generation_config=self._generation_config(sampling),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_TurnEnded(self.tokenizer, len(prompt)), _Cancelled(cancel)]),
                    )
            except BaseException as error:  # re-raised in the reader's thread
                failure.append(error)
                streamer.end()

        worker = threading.Thread(target=run, name="chandler-stream", daemon=True)
        worker.start()
        try:
            yield from streamer
            worker.join()
            if failure:
                raise failure[0]
        finally:
            cancel.set()
