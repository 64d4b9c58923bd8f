"""The Ray Serve application: `ChandlerModel` (the engine, batched) behind `ChatIngress` (FastAPI).

    serve run serve/config.yaml        # or: python -m serve up --host 127.0.0.1 --port 8000

HTTP contract (../shared/DESIGN.md): POST /v1/chat, DELETE /v1/channels/{id}/context,
POST /v1/chat/completions (OpenAI-compatible, stateless, `stream: true` → server-sent events),
GET /healthz, GET /readyz, GET / (the web chat page). Every error is JSON
`{"error": {"code", "message"}}`; no stack trace reaches a client.
"""

import asyncio
import json
import logging
import os
import re
import secrets
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.context import open_store, speaker, to_turns, turn
from serve.settings import Settings, load

log = logging.getLogger("ray.serve.chandler")  # under Ray Serve's logger: lands in the replica logs

STATIC = Path(__file__).resolve().parent / "static"
CONFIG = Path(__file__).resolve().parent / "config.yaml"
MAX_BODY_BYTES = 1 << 20
CHANNEL_ID = r"^[\w.:-]{1,100}$"
RETRY_BUSY, RETRY_DOWN = "2", "5"


# --- the model deployment -------------------------------------------------------------------


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

    def __init__(self, settings: dict[str, Any]) -> None:
        from serve.engine import Engine

        s = Settings(**settings)
        if s.torch_threads:
            import torch

            torch.set_num_threads(s.torch_threads)
        self.engine = Engine(s.base_model, s.adapter, s.quantization, s.device)
        self.max_batch_size, self.batch_wait_s = 16, 0.05
        self.pending: list[tuple[tuple, asyncio.Future]] = []
        self.arrived = asyncio.Event()
        self.runner: asyncio.Task | None = None
        self.last_pass: tuple[float, float, int] | None = None  # (ended at, seconds, requests)
        self.last_pending = 0  # requests already waiting when the last pass ended
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

    async def generate(self, turns: list[dict[str, str]], sampling: dict[str, Any]) -> dict[str, Any]:
        return await self.generate_batch((turns, sampling))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05, max_concurrent_batches=4)
    async def generate_batch(self, requests: list[tuple[list[dict[str, str]], dict[str, Any]]]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in requests]
        self.pending.extend(zip(requests, futures))
        self.arrived.set()
        if self.runner is None or self.runner.done():
            self.runner = asyncio.create_task(self._run())
        return list(await asyncio.gather(*futures))

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
            started = loop.time()
            await self._pass(batch)
            self.last_pass, self.last_pending = (loop.time(), loop.time() - started, len(batch)), len(self.pending)

    async def _pass(self, batch: list[tuple[tuple, asyncio.Future]]) -> None:
        from serve.engine import Sampling

        self.batches += 1
        self.batched += len(batch)
        groups: dict[tuple, list[int]] = defaultdict(list)  # one engine call per distinct sampling
        for i, ((_, sampling), _) in enumerate(batch):
            groups[tuple(sorted(sampling.items()))].append(i)
        for key, members in groups.items():
            try:
                replies = await asyncio.to_thread(self.engine.generate, [batch[i][0][0] for i in members], Sampling(**dict(key)))
            except Exception as error:
                for i in members:
                    if not batch[i][1].done():
                        batch[i][1].set_exception(error)
                continue
            for i, reply in zip(members, replies):
                if not batch[i][1].done():
                    batch[i][1].set_result(asdict(reply))

    async def stream(self, turns: list[dict[str, str]], sampling: dict[str, Any]):
        """`{"delta": text}` pieces, then `{"usage": {...}}`. The engine runs in a thread; a
        reader that goes away stops it at the next piece."""
        from serve.engine import Sampling

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        pieces = self.engine.stream(turns, Sampling(**sampling))

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
        prompt_tokens = await asyncio.to_thread(lambda: self.engine.count_tokens(self.engine.prompt(turns)))
        yield {"usage": {"prompt_tokens": prompt_tokens, "completion_tokens": self.engine.count_tokens(text)}}


# --- request and error shapes ---------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ChatUser(Strict):
    id: str = Field(min_length=1, max_length=100)
    name: str = Field(max_length=200)


class ChatRequest(Strict):
    channel_id: str = Field(pattern=CHANNEL_ID)
    user: ChatUser
    message: str
    stream: bool = False  # an extension for the web page: server-sent events instead of JSON


class TextPart(Strict):
    type: Literal["text"]
    text: str


class OpenAIMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=200)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class OpenAIRequest(Strict):
    model: str | None = None
    messages: list[OpenAIMessage] = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    def response(self) -> JSONResponse:
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse({"error": {"code": self.code, "message": self.message}}, self.status, headers)


def _validation_error(error: RequestValidationError | ValidationError) -> ApiError:
    problems = error.errors()
    if any(p.get("type") == "json_invalid" for p in problems):
        return ApiError(400, "invalid_json", "the request body is not valid JSON")
    first = problems[0] if problems else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    return ApiError(422, "invalid_request", f"{where}: {first.get('msg', 'invalid value')}")


async def parse(request: Request, model: type[BaseModel]) -> Any:
    """The body as `model`, whatever the Content-Type says: 400 for bad JSON, 422 for bad fields."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "body: expected a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise _validation_error(error) from None


api = FastAPI(title="Chandler bot", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(ApiError)
async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    return error.response()


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    return _validation_error(error).response()


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed"}
    return ApiError(error.status_code, codes.get(error.status_code, "http_error"), str(error.detail)).response()


@api.exception_handler(Exception)
async def _crash(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return ApiError(500, "internal", "internal error; see the server log").response()


@api.middleware("http")
async def _limit_body(request: Request, call_next):
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > MAX_BODY_BYTES:
        return ApiError(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes").response()
    return await call_next(request)


api.mount("/static", StaticFiles(directory=STATIC), name="static")


def _sse(data: Any) -> str:
    return "data: " + (data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)) + "\n\n"


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# --- the ingress ----------------------------------------------------------------------------


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


# --- building the application ---------------------------------------------------------------


def compose(settings: Settings, deployments: dict[str, dict[str, Any]] | None = None) -> serve.Application:
    """The application graph; `deployments` are per-deployment options as in the Serve config."""
    deployments = deployments or {}
    model_settings = {k: v for k, v in asdict(settings).items() if k not in ("redis_url", "api_key")}
    model = ChandlerModel.options(**deployments.get("ChandlerModel", {})).bind(model_settings)
    return ChatIngress.options(**deployments.get("ChatIngress", {})).bind(model, model_settings)


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve config's `import_path` (an application builder): `args` are settings defaults,
    CHANDLER_* environment variables override them (see serve/settings.py)."""
    return compose(load(args))


# --- running it on this machine (python -m serve up | run) ----------------------------------


def application_config(config: Path | str = CONFIG, name: str = "chandler") -> dict[str, Any]:
    import yaml

    apps = yaml.safe_load(Path(config).read_text())["applications"]
    return next(app for app in apps if app["name"] == name)


def start(host: str, port: int, config: Path | str = CONFIG, overrides: dict[str, Any] | None = None,
          deployment_overrides: dict[str, dict[str, Any]] | None = None) -> str:
    """Deploy the application described in the Serve config on the Ray instance this process is
    connected to (with `overrides` of its args and `deployment_overrides` of its deployments'
    options), serving HTTP on host:port; returns the page's URL. Blocks until the model is loaded."""
    app = application_config(config)
    args = {**app.get("args", {}), **(overrides or {})}
    deployments = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app.get("deployments", [])}
    for name, options in (deployment_overrides or {}).items():
        deployments[name] = {**deployments.get(name, {}), **options}
    serve.start(http_options={"host": host, "port": port})
    serve.run(compose(load(args), deployments), name=app["name"], route_prefix=app.get("route_prefix", "/"))
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{shown}:{port}/"


def launch(args, with_bot: bool) -> int:
    """`python -m serve up` (with_bot False) and `python -m serve run` (the Discord bot too when
    DISCORD_TOKEN is set). Blocks until Ctrl-C or SIGTERM, then stops everything."""
    import signal
    import subprocess
    import sys

    from serve.settings import SettingsError

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cpus = args.num_cpus or max(2, os.cpu_count() or 1)
    overrides: dict[str, Any] = {}
    try:
        if load(application_config(args.config).get("args", {})).torch_threads == 0:
            overrides["torch_threads"] = max(1, os.cpu_count() or 1)  # one replica: let it use the machine
    except (OSError, KeyError, StopIteration, SettingsError) as error:
        print(f"error: {args.config}: {error}", file=sys.stderr)
        return 2
    import ray

    def interrupt(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)  # also when started with SIGINT ignored (a background job)
    signal.signal(signal.SIGTERM, interrupt)
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    bot = None
    try:
        try:
            url = start(args.host, args.port, args.config, overrides)
        except Exception as error:  # model that cannot load, port in use: one line, not a traceback
            print(f"error: the backend did not start: {str(error).strip().splitlines()[-1][:300]}", file=sys.stderr)
            return 1
        print(f"\nChandler is up: {url}  (web chat; API: POST {url}v1/chat, {url}v1/chat/completions)", flush=True)
        if with_bot and os.environ.get("DISCORD_TOKEN"):
            env = {**os.environ, "CHANDLER_API_URL": os.environ.get("CHANDLER_API_URL") or url.rstrip("/")}
            bot = subprocess.Popen([sys.executable, "-m", "discord_bot"], env=env)
            print(f"Discord bot started (pid {bot.pid})", flush=True)
        elif with_bot:
            print("DISCORD_TOKEN is not set: the Discord bot is not started.", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while True:
            time.sleep(0.5)
            if bot is not None and bot.poll() is not None:
                print(f"the Discord bot exited (status {bot.returncode}); the backend keeps running", flush=True)
                bot = None
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping…", flush=True)
        if bot is not None and bot.poll() is None:
            bot.terminate()
            try:
                bot.wait(10)
            except subprocess.TimeoutExpired:
                bot.kill()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0
