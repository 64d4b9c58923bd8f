"""`ChatIngress`: the FastAPI routes of the HTTP contract in front of `ChandlerModel`.

POST /v1/chat, DELETE /v1/channels/{id}/context, POST /v1/chat/completions (OpenAI-compatible,
stateless, `stream: true` → server-sent events), GET /healthz, GET /readyz, GET / (web chat page).
"""
import asyncio
import json
import logging
import re
import secrets
import time
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve.api.context import open_store, speaker, to_turns, turn
from serve.api.errors import RETRY_BUSY, RETRY_DOWN, STATIC, ApiError, api, parse
from serve.api.schemas import CHANNEL_ID, ChatRequest, OpenAIRequest
from serve.settings import load

log = logging.getLogger("ray.serve.chandler")


def _sse(data: Any) -> str:
    return "data: " + (data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)) + "\n\n"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=512)
@serve.ingress(api)
class ChatIngress:
    def __init__(self, model: DeploymentHandle, settings: dict[str, Any]) -> None:
        self.model = model
        self.settings = s = load(settings)  # the environment (REDIS_URL, CHANDLER_API_KEY) is read here
        self.store = open_store(s.redis_url, s.context_turns, s.context_ttl_s)
        self.store_up = True
        self.model_lost = False
        self.lost = asyncio.Event()  # set while model_lost: wakes requests waiting for a dead replica
        self.watcher: asyncio.Task | None = None
        self.tails: dict[str, asyncio.Future] = {}  # per channel: the last request's commit
        self.resets: dict[str, float] = {}  # per channel: when it was last forgotten
        log.info("ingress ready: %r, API key %s", s, "required" if s.api_key else "not required")

    # -- helpers ------------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        """Before anything else about the request is looked at."""
        key = self.settings.api_key
        if not key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)")

    def check_message(self, text: str) -> None:
        if not text.strip():
            raise ApiError(400, "empty_message", "the message is empty")
        if len(text) > self.settings.max_message_chars:
            raise ApiError(413, "message_too_long", f"the message is over {self.settings.max_message_chars} characters")

    def sampling(self, max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                 seed: int | None = None) -> dict[str, Any]:
        s = self.settings
        return {
            "max_new_tokens": min(max_tokens or s.max_new_tokens, s.max_new_tokens),
            "temperature": s.temperature if temperature is None else temperature,
            "top_p": s.top_p if top_p is None else top_p,
            "best_of": s.best_of,
            "seed": seed,
        }

    def _store_failed(self, what: str, error: BaseException) -> None:
        if self.store_up:
            log.warning("Redis unavailable (%s: %s): replying without channel history until it is back", what, type(error).__name__)
        self.store_up = False

    def _store_ok(self) -> None:
        if not self.store_up:
            log.info("Redis is back: channel history resumes")
        self.store_up = True

    async def history(self, channel_id: str) -> list[dict[str, Any]]:
        try:
            stored = await asyncio.wait_for(self.store.get(channel_id), 3)
        except Exception as error:  # Redis down or slow: answer without history
            self._store_failed("read", error)
            return []
        self._store_ok()
        return stored

    async def commit(self, channel_id: str, arrived: float, *turns: dict[str, Any]) -> None:
        if self.resets.get(channel_id, 0) > arrived:
            return  # the channel was forgotten while this request was being answered
        try:
            await asyncio.wait_for(self.store.append(channel_id, *turns), 3)
        except Exception as error:
            self._store_failed("write", error)
            return
        self._store_ok()

    def ticket(self, channel_id: str) -> tuple[asyncio.Future | None, asyncio.Future]:
        """Exchanges of one channel are committed in the order their requests arrived."""
        previous = self.tails.get(channel_id)
        mine = asyncio.get_running_loop().create_future()
        self.tails[channel_id] = mine
        return previous, mine

    async def after(self, previous: asyncio.Future | None, deadline: float) -> None:
        if previous is not None and not previous.done():
            try:
                await asyncio.wait_for(asyncio.shield(previous), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                pass

    def release(self, channel_id: str, mine: asyncio.Future) -> None:
        if not mine.done():
            mine.set_result(None)
        if self.tails.get(channel_id) is mine:
            del self.tails[channel_id]

    def model_error(self, error: BaseException) -> ApiError:
        """A model call's failure as the contract's error."""
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

        if isinstance(error, ApiError):
            return error
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

    async def _watch_model(self) -> None:
        """Every second, ask the Serve controller whether a model replica is running: while none
        is (loading, or a dead one being replaced), requests get a 503 at once instead of
        waiting in the router's queue."""
        app = serve.get_replica_context().app_name
        while True:
            try:
                status = await asyncio.to_thread(serve.status)
                replicas = status.applications[app].deployments["ChandlerModel"].replica_states
                lost = replicas.get("RUNNING", 0) == 0
                if lost and not self.model_lost:
                    log.warning("no model replica is running: answering 503")
                    self.lost.set()
                elif self.model_lost and not lost:
                    log.info("a model replica is running: answering again")
                    self.lost.clear()
                self.model_lost = lost
            except Exception as error:  # the controller is busy or restarting: keep the last answer
                log.debug("model status unknown: %s", error)
            await asyncio.sleep(1)

    def model_available(self) -> None:
        if self.watcher is None or self.watcher.done():
            self.watcher = asyncio.create_task(self._watch_model())
        if self.model_lost:
            raise ApiError(503, "model_unavailable", "the model is loading or restarting; try again shortly", RETRY_DOWN)

    async def call(self, pending, awaitable) -> Any:
        """The model's answer, or the contract's error: a 503 once the request timeout passes or
        once the model replica is known to be gone (rather than waiting in the router's queue
        for its replacement). `pending` is the DeploymentResponse(Generator) to cancel."""
        self.model_available()
        work = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait({work, lost}, timeout=self.settings.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                return work.result()
            raise ApiError(503, "model_unavailable", "the model is restarting; try again shortly", RETRY_DOWN) if lost in done \
                else TimeoutError()
        except BaseException as error:
            work.cancel()
            pending.cancel()
            if isinstance(error, asyncio.CancelledError):
                raise
            raise self.model_error(error) from None
        finally:
            lost.cancel()

    async def reply(self, turns: list[dict[str, str]], sampling: dict[str, Any]) -> dict[str, Any]:
        self.model_available()
        response = self.model.generate.remote(turns, sampling)

        async def answer() -> dict[str, Any]:
            return await response

        return await self.call(response, answer())

    async def open_stream(self, turns: list[dict[str, str]], sampling: dict[str, Any]):
        """The model's stream with its first piece already in hand, so that overload, timeout and
        a lost replica still answer with a proper status rather than a broken event stream."""
        self.model_available()
        stream = self.model.options(stream=True).stream.remote(turns, sampling)
        return await self.call(stream, stream.__anext__()), stream

    async def pieces(self, first: dict[str, Any], stream, deadline: float):
        """The model's items, first included; an error after the start becomes an error event."""
        yield first
        try:
            while True:
                item = await asyncio.wait_for(stream.__anext__(), max(0.1, deadline - time.monotonic()))
                yield item
        except StopAsyncIteration:
            return
        except Exception as error:
            stream.cancel()
            failure = self.model_error(error)
            yield {"error": {"code": failure.code, "message": failure.message}}

    # -- routes -------------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        checks: dict[str, Any] = {"context": self.store.kind, "model": None}
        try:
            self.model_available()
            checks["model"] = await asyncio.wait_for(self.model.info.remote(), 3)
        except Exception:
            pass
        try:
            await asyncio.wait_for(self.store.ping(), 2)
            checks["redis"] = "ok" if self.store.kind == "redis" else "not used"
        except Exception as error:
            self._store_failed("ping", error)
            checks["redis"] = "unreachable"
        ready = checks["model"] is not None and checks["redis"] != "unreachable"
        body = {"status": "ready" if ready else "not ready", **checks}
        if not ready:
            body["error"] = {"code": "not_ready", "message": "the model is loading or Redis is unreachable"}
        return JSONResponse(body, 200 if ready else 503, {} if ready else {"Retry-After": RETRY_DOWN})

    @api.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @api.post("/v1/chat")
    async def chat(self, request: Request) -> Response:
        self.authorize(request)
        body: ChatRequest = await parse(request, ChatRequest)
        self.check_message(body.message)
        arrived, deadline = time.time(), time.monotonic() + self.settings.request_timeout_s
        stored = await self.history(body.channel_id)
        user_turn = turn("user", body.user.name, body.message, arrived)
        turns = to_turns(stored) + [{"speaker": speaker(body.user.name), "text": body.message}]
        previous, mine = self.ticket(body.channel_id)
        try:
            if body.stream:
                first, stream = await self.open_stream(turns, self.sampling())
                events = self._chat_events(body.channel_id, arrived, user_turn, first, stream, previous, mine, deadline)
                return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
            result = await self.reply(turns, self.sampling())
            await self.after(previous, deadline)
            await self.commit(body.channel_id, arrived, user_turn, turn("assistant", "Chandler", result["text"]))
        except BaseException:
            self.release(body.channel_id, mine)
            raise
        self.release(body.channel_id, mine)
        usage = {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"]}
        return JSONResponse({"reply": result["text"], "usage": usage})

    async def _chat_events(self, channel_id, arrived, user_turn, first, stream, previous, mine, deadline):
        text, usage = "", None
        try:
            async for item in self.pieces(first, stream, deadline):
                if "delta" in item:
                    text += item["delta"]
                    yield _sse({"delta": item["delta"]})
                elif "usage" in item:
                    usage = item["usage"]
                else:
                    yield _sse(item)
                    return
            await self.after(previous, deadline)
            await self.commit(channel_id, arrived, user_turn, turn("assistant", "Chandler", text))
            yield _sse({"reply": text, "usage": usage})
            yield _sse("[DONE]")
        finally:
            if usage is None:
                stream.cancel()
            self.release(channel_id, mine)

    @api.delete("/v1/channels/{channel_id}/context", status_code=204)
    async def forget(self, channel_id: str, request: Request) -> Response:
        self.authorize(request)
        if not re.fullmatch(CHANNEL_ID, channel_id):
            raise ApiError(422, "invalid_request", "channel_id: 1-100 letters, digits or ._:-")
        self.resets[channel_id] = time.time()
        try:
            await asyncio.wait_for(self.store.clear(channel_id), 3)
        except Exception as error:
            self._store_failed("delete", error)
            raise ApiError(503, "context_unavailable", "Redis is unreachable; the context was not forgotten", RETRY_DOWN) from None
        self._store_ok()
        return Response(status_code=204)

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        self.authorize(request)
        return {"object": "list", "data": [{"id": self.settings.model_name, "object": "model", "owned_by": "chandler-bot"}]}

    @api.post("/v1/chat/completions")
    async def completions(self, request: Request) -> Response:
        """Stateless: the conversation is in `messages`. System messages are ignored (the persona
        is fixed); user messages speak as the first word of `name` (default `Guest`)."""
        self.authorize(request)
        body: OpenAIRequest = await parse(request, OpenAIRequest)
        turns = []
        for message in body.messages:
            if message.role in ("system", "developer"):
                continue
            text = message.text()
            if len(text) > self.settings.max_message_chars:
                raise ApiError(413, "message_too_long", f"a message is over {self.settings.max_message_chars} characters")
            who = "Chandler" if message.role == "assistant" else speaker(message.name)
            turns.append({"speaker": who, "text": text})
        if not turns or body.messages[-1].role != "user":
            raise ApiError(400, "invalid_request", "the last message must be the user's")
        self.check_message(turns[-1]["text"])
        sampling = self.sampling(body.max_completion_tokens or body.max_tokens, body.temperature, body.top_p, body.seed)
        ident, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
        head = {"id": ident, "created": created, "model": self.settings.model_name}
        if body.stream:
            first, stream = await self.open_stream(turns, sampling)
            deadline = time.monotonic() + self.settings.request_timeout_s
            events = self._completion_events(head, first, stream, deadline, sampling["max_new_tokens"])
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        result = await self.reply(turns, sampling)
        return JSONResponse({
            **head, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]},
                         "finish_reason": "length" if result["completion_tokens"] >= sampling["max_new_tokens"] else "stop"}],
            "usage": {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
                      "total_tokens": result["prompt_tokens"] + result["completion_tokens"]},
        })

    async def _completion_events(self, head, first, stream, deadline, max_tokens):
        chunk = {**head, "object": "chat.completion.chunk"}
        yield _sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        done = False
        try:
            async for item in self.pieces(first, stream, deadline):
                if "delta" in item:
                    yield _sse({**chunk, "choices": [{"index": 0, "delta": {"content": item["delta"]}, "finish_reason": None}]})
                elif "usage" in item:
                    usage = {**item["usage"], "total_tokens": sum(item["usage"].values())}
                    reason = "length" if usage["completion_tokens"] >= max_tokens else "stop"
                    yield _sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}], "usage": usage})
                    done = True
                else:
                    yield _sse(item)
                    return
            yield _sse("[DONE]")
        finally:
            if not done:
                stream.cancel()
