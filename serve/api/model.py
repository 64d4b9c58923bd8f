"""`ChandlerModel`: the Ray Serve deployment that owns an engine and batches concurrent requests."""
import asyncio
import logging
import os
import threading
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from ray import serve

from serve.settings import AppArgs

if TYPE_CHECKING:
    from serve.engine import Sampling

log = logging.getLogger("ray.serve.chandler")  # under Ray Serve's logger: lands in the replica logs

AVOID = "avoid"  # a request's option beside the engine's Sampling: replies not to send (a regenerate's replaced one)


def sampling_of(options: dict[str, Any]) -> tuple["Sampling", tuple[str, ...]]:
    """A request's options as the engine's `Sampling` and the replies to avoid."""
    from serve.engine import Sampling

    options = dict(options)
    avoid = tuple(options.pop(AVOID, ()))
    return Sampling(**options), avoid


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64, max_queued_requests=256,
                  health_check_period_s=2)  # a dead replica is noticed (and 503s start) within seconds
class ChandlerModel:
    """One engine per replica; concurrent requests are generated together.

    `@serve.batch` gathers the requests that arrive within `batch_wait_timeout_s` of each other.
    It closes a batch before the engine is free, though, so under steady load the requests that
    arrive during one engine pass would split into several small batches that then run one after
    the other. So its batches go to a queue, and each engine pass takes everything waiting (up to
    `max_batch_size`); right after a pass it waits a moment (at most a tenth of the pass, at most
    1 s) for the clients it just answered, so that their next requests join the same pass."""

    def __init__(self, s: AppArgs) -> None:
        from serve.character.picker import configured_picker
        from serve.character.policy import ReplyPolicy
        from serve.engine import load_engine
        from serve.settings import load

        if s.torch_threads:
            import torch

            torch.set_num_threads(s.torch_threads)
        self.engine = load_engine(s.engine, s.base_model, s.adapter, s.quantization, s.device, threads=s.torch_threads)
        picker = configured_picker(load(s))  # its API key comes from this replica's environment
        self.policy = ReplyPolicy(s.reply_mode, rerank=s.rerank, picker=picker)  # generate | quote | blend: serve/character/policy.py
        self.max_batch_size, self.batch_wait_s = 16, 0.05
        self.pending: list[tuple[tuple, asyncio.Future]] = []
        self.arrived = asyncio.Event()
        self.runner: asyncio.Task | None = None
        self.last_pass: tuple[float, float, int] | None = None  # (ended at, seconds, requests)
        self.last_pending = 0  # requests already waiting when the last pass ended
        self.request_s = 0.0  # a running mean of pass time per request: with the queue, the ingress's wait estimate
        self.in_pass = 0  # requests in the engine pass now running
        self.batches = self.batched = 0
        log.info("model ready: base %s, adapter %s, device %s", s.base_model, self.engine.adapter, self.engine.device)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """`user_config` from the Serve config: batching can change without a restart."""
        self.max_batch_size = int(config.get("max_batch_size", 16))
        self.batch_wait_s = float(config.get("batch_wait_timeout_s", 0.05))
        self.generate_batch.set_max_batch_size(self.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(self.batch_wait_s)

    async def info(self) -> dict[str, Any]:
        return {"adapter": str(self.engine.adapter) if self.engine.adapter else None, "device": str(self.engine.device),
                "batches": self.batches, "batched_requests": self.batched, "pid": os.getpid()}

    async def load(self) -> dict[str, Any]:
        """The queue, for the ingress's early back-pressure (polled every second)."""
        return {"waiting": len(self.pending) + self.in_pass, "request_s": self.request_s}

    async def generate(self, turns: list[dict[str, str]], sampling: dict[str, Any]) -> dict[str, Any]:
        """`{text, prompt_tokens, completion_tokens, finish_reason, load}`; a prompt over the token
        limit raises `PromptTooLong` here, before it joins a batch. A caller that gives up
        (the ingress's timeout cancels the call) is left out of every pass not yet started."""
        await asyncio.to_thread(self.engine.prompt_ids, turns)
        answer = asyncio.get_running_loop().create_future()
        try:
            result = await self.generate_batch((turns, sampling, answer))
        except asyncio.CancelledError:
            answer.cancel()
            raise
        if isinstance(result, BaseException):
            raise result
        return result

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05, max_concurrent_batches=4)
    async def generate_batch(self, requests: list[tuple[list[dict[str, str]], dict[str, Any], asyncio.Future]]) -> list:
        self.pending.extend(((turns, sampling), answer) for turns, sampling, answer in requests)
        self.arrived.set()
        if self.runner is None or self.runner.done():
            self.runner = asyncio.create_task(self._run())
        return list(await asyncio.gather(*(answer for _, _, answer in requests), return_exceptions=True))

    async def _run(self) -> None:
        """Engine passes, one at a time, over whatever is waiting."""
        loop = asyncio.get_running_loop()
        while True:
            while not self.pending:
                self.arrived.clear()
                await self.arrived.wait()
            if self.last_pass is not None:  # give the clients just answered a moment to come back
                ended, took, size = self.last_pass
                target = min(self.max_batch_size, size + self.last_pending)
                until = ended + min(1.0, max(self.batch_wait_s, 0.1 * took))
                while len(self.pending) < target and loop.time() < until:
                    self.arrived.clear()
                    try:
                        await asyncio.wait_for(self.arrived.wait(), until - loop.time())
                    except TimeoutError:
                        pass
            batch = [(request, future) for request, future in self.pending[: self.max_batch_size] if not future.done()]
            del self.pending[: self.max_batch_size]
            if not batch:
                continue
            started, self.in_pass = loop.time(), len(batch)
            await self._pass(batch)
            took, self.in_pass = loop.time() - started, 0
            self.request_s = took / len(batch) if not self.request_s else 0.7 * self.request_s + 0.3 * took / len(batch)
            self.last_pass, self.last_pending = (loop.time(), took, len(batch)), len(self.pending)

    async def _pass(self, batch: list[tuple[tuple, asyncio.Future]]) -> None:
        self.batches += 1
        self.batched += len(batch)
        groups: dict[tuple, list[int]] = defaultdict(list)  # one engine call per distinct sampling
        for i, ((_, sampling), _) in enumerate(batch):
            groups[tuple(sorted(sampling.items()))].append(i)
        for key, members in groups.items():
            sampling, avoid = sampling_of(dict(key))
            try:
                replies = await asyncio.to_thread(self._generate, [batch[i][0][0] for i in members], sampling, avoid)
            except Exception as error:
                for i in members:
                    if not batch[i][1].done():
                        batch[i][1].set_exception(error)
                continue
            load = {"waiting": len(self.pending), "request_s": self.request_s}
            for i, reply in zip(members, replies):
                if not batch[i][1].done():
                    batch[i][1].set_result({**reply, "load": load})

    def _generate(self, conversations: list[list[dict[str, str]]], sampling, avoid: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """The engine's replies as the API reports them: `completion_tokens` are the tokens of the
        reply as sent (as for a stream); `finish_reason` is `length` when the engine hit the cap;
        `source` says whether the reply policy sent a real line of the show (never cut: `stop`) or a generated one."""
        from serve.character.policy import respond

        return [
            {"text": reply.text, "prompt_tokens": reply.prompt_tokens, "completion_tokens": self.engine.count_tokens(reply.text),
             "finish_reason": "length" if source["kind"] == "generated" and reply.completion_tokens >= sampling.max_new_tokens else "stop",
             "source": source}
            for reply, source in respond(self.engine, self.policy, conversations, sampling, avoid)
        ]

    async def stream(self, turns: list[dict[str, str]], sampling: dict[str, Any]):
        """`{"delta": text}` pieces, then `{"usage", "finish_reason", "source"}`. The engine runs in a
        thread; a reader that goes away stops it at the next piece."""
        from serve.character.policy import GENERATED

        if self.policy.mode != "generate":  # the policy chooses among whole candidates: one piece
            result = await self.generate(turns, sampling)
            yield {"delta": result["text"]}
            yield {"usage": {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"]},
                   "finish_reason": result["finish_reason"], "source": result["source"]}
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        pieces = self.engine.stream(turns, sampling_of(sampling)[0])

        def pump() -> None:
            try:
                for piece in pieces:
                    loop.call_soon_threadsafe(queue.put_nowait, ("delta", piece))
                    if stop.is_set():
                        break
            except BaseException as error:  # re-raised in the replica's loop
                loop.call_soon_threadsafe(queue.put_nowait, ("error", error))
            finally:
                pieces.close()
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))

        threading.Thread(target=pump, name="chandler-stream", daemon=True).start()
        text = ""
        try:
            while True:
                kind, value = await queue.get()
                if kind == "error":
                    raise value
                if kind == "end":
                    break
                text += value
                yield {"delta": value}
        finally:
            stop.set()
        prompt_tokens = len(await asyncio.to_thread(self.engine.prompt_ids, turns))
        completion_tokens = self.engine.count_tokens(text)
        yield {"usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
               "finish_reason": "length" if completion_tokens >= sampling["max_new_tokens"] else "stop", "source": dict(GENERATED)}
