"""How the ingress turns model-call failures into the contract's errors (no Ray needed): overload,
request timeout, a replica that is gone, a crash inside the model."""
import asyncio
import json

import pytest
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError

from serve.api.errors import ApiError
from serve.api.ingress import ChatIngress
from serve.settings import Settings


class Pending:
    """Stands for a DeploymentResponse: records that it was cancelled."""

    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@pytest.fixture
async def ingress():
    cls = ChatIngress.func_or_class
    obj = cls.__new__(cls)
    obj.settings = Settings(request_timeout_s=0.3)
    obj.model_lost, obj.lost = False, asyncio.Event()
    obj.watcher = asyncio.get_running_loop().create_future()  # no Serve controller to watch here
    yield obj
    obj.watcher.cancel()


def body(error: ApiError) -> dict:
    return json.loads(error.response().body)


async def test_overload_is_503_with_retry_after(ingress):
    async def busy():
        raise BackPressureError(num_queued_requests=256, max_queued_requests=256)

    pending = Pending()
    with pytest.raises(ApiError) as caught:
        await ingress.call(pending, busy())
    assert (caught.value.status, caught.value.code) == (503, "overloaded")
    assert caught.value.response().headers["retry-after"] == "2"
    assert body(caught.value) == {"error": {"code": "overloaded", "message": caught.value.message}}
    assert pending.cancelled


async def test_request_timeout_is_503_and_cancels_the_call(ingress):
    pending = Pending()
    with pytest.raises(ApiError) as caught:
        await ingress.call(pending, asyncio.sleep(30))
    assert (caught.value.status, caught.value.code) == (503, "timeout")
    assert caught.value.retry_after and pending.cancelled


async def test_waiting_request_gets_503_when_the_replica_is_gone(ingress):
    pending = Pending()
    ingress.settings = Settings(request_timeout_s=30)
    waiting = asyncio.create_task(ingress.call(pending, asyncio.sleep(30)))
    await asyncio.sleep(0.05)
    ingress.lost.set()  # what the watcher does when no model replica is running
    with pytest.raises(ApiError) as caught:
        await asyncio.wait_for(waiting, 2)
    assert (caught.value.status, caught.value.code) == (503, "model_unavailable") and pending.cancelled
    ingress.model_lost = True
    with pytest.raises(ApiError) as refused:  # and new ones are refused at once
        await ingress.call(Pending(), asyncio.sleep(0))
    assert refused.value.code == "model_unavailable"


async def test_dead_actor_and_model_crash(ingress):
    async def died():
        raise ActorDiedError()

    async def crashed():
        raise ValueError("tensor shapes do not match")

    with pytest.raises(ApiError) as dead:
        await ingress.call(Pending(), died())
    assert (dead.value.status, dead.value.code) == (503, "model_unavailable")
    with pytest.raises(ApiError) as crash:
        await ingress.call(Pending(), crashed())
    assert (crash.value.status, crash.value.code) == (500, "internal")
    assert "tensor" not in crash.value.message  # internals stay in the server log
