"""The torch engine: base model (+ LoRA adapter), batched and streaming generation, clean replies.

No Ray here: the Serve app, the terminal chat, the benchmark and evaluation all use this class.

    engine = Engine()                                   # embedded SmolLM2 + shipped adapter if any
    engine.generate([[{"speaker": "Joey", "text": "How you doin'?"}]])[0].text
"""
from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch

from data.dialogue import CONTEXT_TOKEN_BUDGET, PERSONA, Turn, prompt_ids, prompt_text
from serve.engine.cleanup import MAX_REPLY_CHARS, clean_reply, neutralise_mentions, one_turn, turn_end
from serve.engine.interface import Reply, Sampling
from serve.engine.loading import EMBEDDED, adapter_config, attach_adapter, load_model, load_tokenizer, pick_device, resolve_adapter

# End-of-turn tokens of common chat templates (ChatML, Llama 3, Phi, Gemma), used when present.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
_MAYBE_LABEL = re.compile(r"[ \t]*(?:[A-Z][\w.'-]*(?:[ \t]+[A-Z][\w.'-]*){0,2}[ \t]*)?")


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


class TorchEngine:
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
        self.base_model = base_model
        self.style_model = style_model  # for best_of; None: models/chandler-style
        self.scorer = None  # a serve.character.style.StyleScorer, loaded on the first best_of request
        self.persona = persona
        self.context_budget = context_budget
        self.max_chars = max_chars
        self.device = pick_device(device)
        self.adapter = resolve_adapter(adapter, base_model)
        if self.adapter is not None:
            adapter_config(self.adapter)  # fail fast, before the base model loads
        self.tokenizer = load_tokenizer(base_model)
        self.tokenizer.padding_side = "left"
        model = load_model(base_model, quantization, self.device)
        if self.adapter is not None:
            model = attach_adapter(model, self.adapter, base_model)
        self.model = model.eval()
        self.quantized = getattr(self.model, "hf_quantizer", None) is not None
        self.stop_ids = self._stop_ids()
        self._lock = threading.Lock()  # one generation at a time: the model and the RNG are shared

    def _stop_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = self.model.generation_config.eos_token_id
        ids.update(configured if isinstance(configured, list) else [configured])
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in vocab)
        return sorted(i for i in ids if i is not None)

    # -- prompts ------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(self, turns: Sequence[Turn]) -> str:
        """The prompt for the character's next line, exactly as in training."""
        if not turns:
            raise ValueError("a conversation needs at least one turn")
        return prompt_text(self.tokenizer, turns, self.persona, self.context_budget)

    def prompt_ids(self, turns: Sequence[Turn]) -> list[int]:
        """The prompt's token ids: token-capped, user text never special (data/dialogue.py)."""
        return prompt_ids(self.tokenizer, turns, self.persona, self.context_budget)

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

    # -- generation ---------------------------------------------------------------------------
    def generate(self, conversations: Sequence[Sequence[Turn]], sampling: Sampling = Sampling()) -> list[Reply]:
        """One reply per conversation, all in one batched, left-padded pass.

        With `sampling.best_of = n > 1` (and sampling on) each conversation appears n times in that batch, and of
        its n replies the one with the highest style score (P(Chandler), plus relevance to the
        last message) is returned; its token counts are its own."""
        n = sampling.candidates
        if n <= 1 or not conversations:
            return self._generate(conversations, sampling)
        candidates = self._generate([turns for turns in conversations for _ in range(n)], sampling)
        groups = [candidates[i * n : (i + 1) * n] for i in range(len(conversations))]
        if self.scorer is None:
            from serve.character.style import DEFAULT_STYLE_MODEL, StyleScorer

            self.scorer = StyleScorer(self.style_model or DEFAULT_STYLE_MODEL)
        chosen = self.scorer.choose([turns[-1]["text"] for turns in conversations], [[r.text for r in g] for g in groups])
        return [group[index] for group, index in zip(groups, chosen)]

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
        replies = []
        for mask, row in zip(inputs["attention_mask"], output[:, width:].tolist()):
            ended = next((i for i, token in enumerate(row) if token in self.stop_ids), None)
            tokens = row[:ended] if ended is not None else row
            raw = self.tokenizer.decode(tokens)
            cut_short = ended is None and turn_end(raw) is None and len(tokens) >= sampling.max_new_tokens
            replies.append(
                Reply(
                    text=clean_reply(raw, self.max_chars, truncated=cut_short),
                    prompt_tokens=int(mask.sum()),
                    completion_tokens=len(tokens) + (ended is not None),
                )
            )
        return replies

    def stream(self, turns: Sequence[Turn], sampling: Sampling = Sampling()) -> Iterator[str]:
        """Pieces of the cleaned reply as they are produced (about a word at a time).

        Only text that no later token can change is yielded: an unfinished word, an open stage
        direction, or the start of a line that may turn out to be `Name:` waits. Generation
        stops as soon as the model starts another speaker's line. The pieces join to what
        `generate` would return, except that a sentence cut off by `max_new_tokens` or by the
        length limit is not taken back once sent. With `best_of` > 1 the choice needs whole
        replies: the chosen one comes as a single piece."""
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        if sampling.candidates > 1:
            yield self.generate([turns], sampling)[0].text
            return
        inputs = self._encode([turns])
        width = inputs["input_ids"].shape[1]
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
                        stopping_criteria=StoppingCriteriaList([_TurnEnded(self.tokenizer, width), _Cancelled(cancel)]),
                    )
            except BaseException as error:  # re-raised in the reader's thread
                failure.append(error)
                streamer.end()

        worker = threading.Thread(target=run, name="chandler-stream", daemon=True)
        worker.start()
        raw, sent = "", ""
        try:
            for piece in streamer:
                raw += piece
                if turn_end(raw) is not None:
                    cancel.set()
                    break
                settled = neutralise_mentions(one_turn(_settled(raw)))
                if len(settled) > self.max_chars:
                    cancel.set()
                    break
                if settled.startswith(sent) and len(settled) > len(sent):
                    yield settled[len(sent) :]
                    sent = settled
            worker.join()
            if failure:
                raise failure[0]
            final = clean_reply(raw, self.max_chars)
            if final.startswith(sent) and len(final) > len(sent):
                yield final[len(sent) :]
        finally:
            cancel.set()


def _settled(raw: str) -> str:
    """The part of streamed raw text that later tokens cannot change: complete words, and not
    a last line that may still grow into a `Name:` label (one to three capitalised words)."""
    cut = max(raw.rfind(" "), raw.rfind("\n"), raw.rfind("\t"))
    text = raw[: cut + 1] if cut >= 0 else ""
    line_start = raw.rfind("\n") + 1
    if _MAYBE_LABEL.fullmatch(raw[line_start:]):
        text = text[:line_start]
    return text
