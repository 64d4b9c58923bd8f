"""ChandlerModel's batching without Ray's cluster (the deployment's class, the real model): a request whose
caller gave up (the ingress cancels it on timeout) is left out of the engine's next pass."""
import asyncio

from serve.settings import AppArgs


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
