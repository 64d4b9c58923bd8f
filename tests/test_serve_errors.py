"""How the ingress's model calls (serve/api/modelcall.py) turn failures into the contract's errors,
no Ray needed: overload (early, from the queue's expected wait, and Serve's own), request timeout,
a replica that is gone, a prompt over the token limit, a crash inside the model."""
import asyncio
import json
import time

import pytest
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError

from data.dialogue import PromptTooLong
from serve.api.errors import ApiError
from serve.api.modelcall import ModelClient
from serve.settings import Settings


class Pending:
    """Stands for a DeploymentResponse: records that it was cancelled."""

    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch):
    """Settings() reads CHANDLER_* (pydantic-settings): another test's app must not leak in here."""
    import os

    for name in [n for n in os.environ if n.startswith("CHANDLER_") or n == "REDIS_URL"]:
        monkeypatch.delenv(name)


@pytest.fixture
async def client():
    model = ModelClient(None, Settings(request_timeout_s=0.3))
    model.watcher = asyncio.get_running_loop().create_future()  # no Serve controller to watch here
    yield model
    model.watcher.cancel()


def body(error: ApiError) -> dict:
    return json.loads(error.response().body)


async def call(client: ModelClient, awaitable, pending=None):
    try:
        client.available()
    except ApiError:
        awaitable.close()  # refused before the call: never started
        raise
    return await client.call(pending or Pending(), awaitable, time.monotonic() + client.settings.request_timeout_s)


async def test_overload_is_503_with_retry_after(client):
    async def busy():
        raise BackPressureError(num_queued_requests=256, max_queued_requests=256)

    pending = Pending()
    with pytest.raises(ApiError) as caught:
        await call(client, busy(), pending)
    assert (caught.value.status, caught.value.code) == (503, "overloaded")
    assert caught.value.response().headers["retry-after"] == "2"
    assert body(caught.value) == {"error": {"code": "overloaded", "message": caught.value.message}}
    assert pending.cancelled


async def test_a_long_queue_is_refused_at_once(client):
    client.settings = Settings(request_timeout_s=30)
    client.load, client.load_at = {"waiting": 64, "request_s": 0.75}, time.monotonic()
    assert client.expected_wait() == pytest.approx(65 * 0.75, abs=0.1)  # 64 ahead and this one
    started = time.monotonic()
    with pytest.raises(ApiError) as caught:
        await call(client, asyncio.sleep(30))
    assert time.monotonic() - started < 0.1
    assert (caught.value.status, caught.value.code) == (503, "overloaded")
    assert int(caught.value.response().headers["retry-after"]) >= 18
    # A queue that drained since (an older report) or fits in the timeout is served.
    client.load_at = time.monotonic() - 40
    assert client.expected_wait() < 30
    client.load, client.load_at = {"waiting": 16, "request_s": 1.0}, time.monotonic()
    assert await call(client, asyncio.sleep(0, "ok")) == "ok"
    client.in_flight = 400  # this replica's own calls count too
    assert client.expected_wait() > 30
    client.in_flight, client.load = 0, {"waiting": 0, "request_s": 100.0}
    assert client.expected_wait() == 0  # nothing queued: worth a try, even after a slow pass


async def test_request_timeout_is_503_and_cancels_the_call(client):
    pending = Pending()
    with pytest.raises(ApiError) as caught:
        await call(client, asyncio.sleep(30), pending)
    assert (caught.value.status, caught.value.code) == (503, "timeout")
    assert caught.value.retry_after and pending.cancelled and client.in_flight == 0


async def test_waiting_request_gets_503_when_the_replica_is_gone(client):
    pending = Pending()
    client.settings = Settings(request_timeout_s=30)
    waiting = asyncio.create_task(call(client, asyncio.sleep(30), pending))
    await asyncio.sleep(0.05)
    client.lost.set()  # what the watcher does when no model replica is running
    with pytest.raises(ApiError) as caught:
        await asyncio.wait_for(waiting, 2)
    assert (caught.value.status, caught.value.code) == (503, "model_unavailable") and pending.cancelled
    client.lost_replica = True
    with pytest.raises(ApiError) as refused:  # and new ones are refused at once
        await call(client, asyncio.sleep(0))
    assert refused.value.code == "model_unavailable"


async def test_dead_actor_model_crash_and_prompt_too_long(client):
    async def died():
        raise ActorDiedError()

    async def crashed():
        raise ValueError("tensor shapes do not match")

    async def too_long():
        raise PromptTooLong(900, 512)

    with pytest.raises(ApiError) as dead:
        await call(client, died())
    assert (dead.value.status, dead.value.code) == (503, "model_unavailable")
    with pytest.raises(ApiError) as crash:
        await call(client, crashed())
    assert (crash.value.status, crash.value.code) == (500, "internal")
    assert "tensor" not in crash.value.message  # internals stay in the server log
    with pytest.raises(ApiError) as refused:
        await call(client, too_long())
    assert (refused.value.status, refused.value.code) == (413, "prompt_too_long") and "512" in refused.value.message


async def test_feedback_can_be_turned_off():
    """CHANDLER_FEEDBACK=off: the route stores nothing and says so (the route itself, without Ray)."""
    from starlette.requests import Request

    from serve.api.ingress import ChatIngress

    ingress = ChatIngress.func_or_class.__new__(ChatIngress.func_or_class)
    ingress.settings = Settings(feedback=False)
    request = Request({"type": "http", "method": "POST", "path": "/v1/feedback", "headers": []})
    with pytest.raises(ApiError) as caught:
        await ingress.feedback(request)
    assert (caught.value.status, caught.value.code) == (404, "feedback_off")
