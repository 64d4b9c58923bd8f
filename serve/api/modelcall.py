"""The ingress's calls to `ChandlerModel`: timeouts that cancel the call (so a request that gave
up stops using the model), 503s while no model replica runs, early back-pressure, and model
failures as the contract's errors."""
import asyncio
import logging
import math
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from data.dialogue import PromptTooLong
from serve.api.errors import RETRY_BUSY, RETRY_DOWN, ApiError
from serve.settings import Settings

log = logging.getLogger("ray.serve.chandler")


class ModelClient:
    def __init__(self, model: DeploymentHandle, settings: Settings) -> None:
        self.model, self.settings = model, settings
        self.lost_replica = False
        self.lost = asyncio.Event()  # set while no replica runs: wakes requests waiting for a dead one
        self.watcher: asyncio.Task | None = None
        self.in_flight = 0  # this replica's model calls not yet answered
        self.load: dict[str, Any] | None = None  # the model's last report: waiting, request_s
        self.load_at = 0.0

    # -- before a call ------------------------------------------------------------------------
    def expected_wait(self) -> float:
        """Seconds until a new request's answer: the requests ahead of it (the model's last
        report, drained at the model's pace since, or this replica's own calls if more) and its
        own, at the model's mean pass time per request. Nothing ahead: 0, always worth a try."""
        if not self.load or not self.load["request_s"]:
            return 0.0
        cost = self.load["request_s"]
        ahead = max(self.in_flight, self.load["waiting"] - (time.monotonic() - self.load_at) / cost)
        return 0.0 if ahead <= 0 else (ahead + 1) * cost

    def running(self) -> bool:
        """Whether a model replica runs, as the watcher last saw (it starts on the first call)."""
        if self.watcher is None or self.watcher.done():
            self.watcher = asyncio.create_task(self._watch())
        return not self.lost_replica

    def available(self) -> None:
        """503 at once while no model replica runs, or while the queue is longer than the timeout."""
        if not self.running():
            raise ApiError(503, "model_unavailable", "the model is loading or restarting; try again shortly", RETRY_DOWN)
        wait, timeout = self.expected_wait(), self.settings.request_timeout_s
        if wait > timeout:
            retry = str(max(1, math.ceil(wait - timeout)))
            raise ApiError(503, "overloaded", f"the model is busy (about {wait:.0f}s of queue); try again later", retry)

    async def _watch(self) -> None:
        """Every second, ask the Serve controller whether a model replica is running: while none
        is (loading, or a dead one being replaced), requests get a 503 at once instead of
        waiting in the router's queue."""
        app = serve.get_replica_context().app_name
        while True:
            try:
                status = await asyncio.to_thread(serve.status)
                replicas = status.applications[app].deployments["ChandlerModel"].replica_states
                lost = replicas.get("RUNNING", 0) == 0
                if lost and not self.lost_replica:
                    log.warning("no model replica is running: answering 503")
                    self.lost.set()
                elif self.lost_replica and not lost:
                    log.info("a model replica is running: answering again")
                    self.lost.clear()
                self.lost_replica = lost
                if not lost:
                    self.load, self.load_at = await asyncio.wait_for(self.model.load.remote(), 1), time.monotonic()
            except Exception as error:  # the controller is busy or restarting: keep the last answer
                log.debug("model status unknown: %s", error)
            await asyncio.sleep(1)

    # -- calls --------------------------------------------------------------------------------
    async def call(self, pending, awaitable, deadline: float) -> Any:
        """The model's answer, or the contract's error: a 503 once `deadline` passes or once the
        model replica is known to be gone. `pending` is the DeploymentResponse(Generator),
        cancelled on any failure so that the model drops the request."""
        work = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self.lost.wait())
        self.in_flight += 1
        try:
            done, _ = await asyncio.wait({work, lost}, timeout=max(0.1, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                return work.result()
            if lost in done:
                raise ApiError(503, "model_unavailable", "the model is restarting; try again shortly", RETRY_DOWN)
            raise TimeoutError()
        except BaseException as error:
            work.cancel()
            work.add_done_callback(lambda task: task.cancelled() or task.exception())  # retrieved: not logged
            pending.cancel()
            if isinstance(error, asyncio.CancelledError):
                raise
            raise self.error(error) from None
        finally:
            self.in_flight -= 1
            lost.cancel()

    async def reply(self, turns: list[dict[str, str]], sampling: dict[str, Any], deadline: float) -> dict[str, Any]:
        self.available()
        response = self.model.generate.remote(turns, sampling)

        async def answer() -> dict[str, Any]:
            return await response

        result = await self.call(response, answer(), deadline)
        if result.get("load"):
            self.load, self.load_at = result.pop("load"), time.monotonic()
        return result

    async def open_stream(self, turns: list[dict[str, str]], sampling: dict[str, Any], deadline: float):
        """The model's stream with its first piece already in hand, so that overload, timeout and
        a lost replica still answer with a proper status rather than a broken event stream."""
        self.available()
        stream = self.model.options(stream=True).stream.remote(turns, sampling)
        return await self.call(stream, stream.__anext__(), deadline), stream

    async def pieces(self, first: dict[str, Any], stream, deadline: float):
        """The model's items, first included; an error after the start becomes an error event.
        A reader that stops early (a client gone, a timeout) cancels the model's stream."""
        ended = False
        try:
            yield first
            while True:
                yield await asyncio.wait_for(stream.__anext__(), max(0.1, deadline - time.monotonic()))
        except StopAsyncIteration:
            ended = True
        except Exception as error:
            failure = self.error(error)
            yield {"error": {"code": failure.code, "message": failure.message}}
        finally:
            if not ended:
                stream.cancel()

    def error(self, error: BaseException) -> ApiError:
        """A model call's failure as the contract's error."""
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

        if isinstance(error, ApiError):
            return error
        too_long = error if isinstance(error, PromptTooLong) else getattr(error, "cause", None)
        if isinstance(too_long, PromptTooLong):
            return ApiError(413, "prompt_too_long", str(too_long))
        if isinstance(error, TimeoutError):
            return ApiError(503, "timeout", f"no reply within {self.settings.request_timeout_s:g}s; try again later", RETRY_DOWN)
        if isinstance(error, BackPressureError):
            return ApiError(503, "overloaded", "the model is overloaded; try again shortly", RETRY_BUSY)
        if isinstance(error, (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)):
            log.warning("model replica lost (%s); answering 503 until Ray has replaced it", type(error).__name__)
            return ApiError(503, "model_unavailable", "the model is restarting; try again shortly", RETRY_DOWN)
        if isinstance(error, RayTaskError):
            log.error("model call failed: %s", error)
        else:
            log.exception("model call failed")
        return ApiError(500, "internal", "the model failed on this request; see the server log")
