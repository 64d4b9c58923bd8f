"""What every engine shares: prompts from data/dialogue.py, best-of choice, replies from token ids,
and streaming clean-up. An engine adds `_generate` (a batch of prompts → replies) and `_raw_stream`
(one prompt → raw text pieces; closing it stops the generation)."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from data.dialogue import Turn, prompt_ids, prompt_text
from serve.engine.cleanup import clean_pieces, clean_reply, turn_end
from serve.engine.interface import Reply, Sampling
from serve.engine.loading import adapter_config, load_tokenizer, resolve_adapter


class EngineBase:
    stop_ids: list[int]
    scorer = None  # a serve.character.style.StyleScorer, loaded on the first best_of request

    def __init__(self, base_model: str, adapter: str | Path | None, persona: str, context_budget: int, max_chars: int,
                 style_model: str | Path | None) -> None:
        """What both engines set up before their own model: the adapter (checked first, so a bad
        one fails before any loading), the tokenizer and the prompt settings."""
        self.base_model, self.style_model = base_model, style_model  # style_model for best_of; None: models/chandler-style
        self.persona, self.context_budget, self.max_chars = persona, context_budget, max_chars
        self.adapter = resolve_adapter(adapter, base_model)
        if self.adapter is not None:
            adapter_config(self.adapter)
        self.tokenizer = load_tokenizer(base_model)

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

    def scored_ids(self, turns: Sequence[Turn], reply: str) -> tuple[list[int], int]:
        """The ids a reply is scored on, as in training (train/examples.encode): the conversation's
        prompt, then the reply and its end of turn; and how many of them are the reply's."""
        reply_ids = self.tokenizer(reply, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return self.prompt_ids(turns) + reply_ids, len(reply_ids)

    # -- generation ---------------------------------------------------------------------------
    def generate(self, conversations: Sequence[Sequence[Turn]], sampling: Sampling = Sampling()) -> list[Reply]:
        """One reply per conversation, generated as one batch.

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

    def stream(self, turns: Sequence[Turn], sampling: Sampling = Sampling()) -> Iterator[str]:
        """Pieces of the cleaned reply as they are produced (about a word at a time), see
        `cleanup.clean_pieces`. Generation stops as soon as the model starts another speaker's
        line, or when the reader stops reading (closes this iterator). With `best_of` > 1 the
        choice needs whole replies: the chosen one comes as a single piece."""
        if sampling.candidates > 1:
            yield self.generate([turns], sampling)[0].text
            return
        raw = self._raw_stream(self.prompt_ids(turns), sampling)
        try:
            yield from clean_pieces(raw, self.max_chars)
        finally:
            raw.close()

    def _reply(self, prompt_tokens: int, generated: list[int], max_new_tokens: int) -> Reply:
        """A reply from the new token ids of one row (up to its stop token, if any)."""
        ended = next((i for i, token in enumerate(generated) if token in self.stop_ids), None)
        tokens = generated[:ended] if ended is not None else generated
        raw = self.tokenizer.decode(tokens)
        cut_short = ended is None and turn_end(raw) is None and len(tokens) >= max_new_tokens
        return Reply(
            text=clean_reply(raw, self.max_chars, truncated=cut_short),
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens) + (ended is not None),
        )

    def _generate(self, conversations: Sequence[Sequence[Turn]], sampling: Sampling) -> list[Reply]:
        raise NotImplementedError

    def _raw_stream(self, prompt: list[int], sampling: Sampling) -> Iterator[str]:
        raise NotImplementedError
