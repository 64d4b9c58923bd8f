"""ChandlerModel without Ray's cluster (the deployment's class, the real model): a request whose caller gave
up (the ingress cancels it on timeout) is left out of the engine's next pass; the blend reply policy."""
import asyncio

import pytest

from serve.settings import AppArgs

# @serve.batch keeps one queue per decorated method, made on the event loop it is first used on: one loop for the module.
pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_a_cancelled_request_is_not_generated(monkeypatch):
    from types import SimpleNamespace

    from ray import serve

    from serve.api.model import ChandlerModel

    # @serve.batch reads its replica's max_ongoing_requests once, for a warning; here there is no replica.
    replica = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))
    monkeypatch.setattr(serve, "get_replica_context", lambda: replica)

    model = ChandlerModel.func_or_class(AppArgs(adapter="none", device="cpu", torch_threads=1))
    sampling = {"max_new_tokens": 60, "temperature": 0, "top_p": 0.9, "best_of": 1, "seed": None}
    turns = [{"speaker": "Joey", "text": "Tell me everything about your day, and then about your week."}]

    first = [asyncio.create_task(model.generate(turns, {**sampling, "seed": i})) for i in range(8)]  # a long pass
    while model.batches == 0:
        await asyncio.sleep(0.01)
    given_up = asyncio.create_task(model.generate(turns, sampling))  # waits for the next pass
    kept = asyncio.create_task(model.generate(turns, sampling))
    await asyncio.sleep(0.2)
    assert not any(task.done() for task in first), "the first pass ended too soon to test anything"
    given_up.cancel()
    results = await asyncio.gather(*first, kept)
    assert all(r["text"] for r in results) and given_up.cancelled()
    assert model.batched == 9  # the cancelled request never reached the engine
    assert results[-1]["load"]["request_s"] > 0


async def test_blend_sends_his_real_line_with_its_episode_and_never_twice(monkeypatch):
    """The deployment's default reply mode with the shipped selector and line index: an everyday message
    is answered with one of his lines, tagged with its episode; once said in the channel, that line is
    not sent again."""
    from types import SimpleNamespace

    from ray import serve

    from serve.api.model import ChandlerModel

    replica = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))
    monkeypatch.setattr(serve, "get_replica_context", lambda: replica)
    model = ChandlerModel.func_or_class(AppArgs(engine="torch", adapter="none", device="cpu", torch_threads=1, reply_mode="blend"))
    sampling = {"max_new_tokens": 2, "temperature": 0.8, "top_p": 0.9, "best_of": 1, "seed": 0}  # fewer than any quotable line has
    turns = [{"speaker": "Joey", "text": "I went to the gym for the first time in a year."}]

    first = await model.generate(turns, sampling)
    assert first["source"]["kind"] == "quote" and first["source"]["season"] >= 1 and first["source"]["episode"] >= 1
    assert first["completion_tokens"] > sampling["max_new_tokens"] and first["finish_reason"] == "stop"  # a whole line, not cut
    said = turns + [{"speaker": "Chandler", "text": first["text"]}, {"speaker": "Joey", "text": turns[0]["text"]}]
    again = await model.generate(said, sampling)
    assert again["text"] != first["text"]
    other = await model.generate(turns, {**sampling, "avoid": (first["text"],)})  # a regenerate: "another one"
    assert other["text"] != first["text"] and other["source"]["kind"] == "quote"
