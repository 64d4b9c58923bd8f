"""`ChatIngress`: the FastAPI routes of the HTTP contract in front of `ChandlerModel`.

POST /v1/chat, POST /v1/feedback, DELETE /v1/channels/{id}/context, POST /v1/chat/completions
(OpenAI-compatible, stateless), GET /v1/models, GET /healthz, GET /readyz, GET / (web chat page).
Channel state lives in the store (Redis in a cluster), so any ingress replica may answer any request.
"""
import asyncio
import hashlib
import hmac
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

from serve.api.context import Commit, speaker, to_turns, turn
from serve.api.errors import RETRY_DOWN, STATIC, ApiError, api, parse
from serve.api.exchange import Exchange
from serve.api.model import AVOID
from serve.api.modelcall import ModelClient
from serve.api.openai import SSE_HEADERS, completion, completion_events, request_turns, sse
from serve.api.schemas import CHANNEL_ID, IDEMPOTENCY_KEY, ChatRequest, FeedbackRequest, OpenAIRequest
from serve.api.store import open_store
from serve.settings import AppArgs, load

log = logging.getLogger("ray.serve.chandler")
MAX_REPLACED = 20  # replies a chain of "another one" remembers not to send again


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=512)
@serve.ingress(api)
class ChatIngress:
    def __init__(self, model: DeploymentHandle, args: AppArgs) -> None:
        self.settings = s = load(args)  # the secrets (REDIS_URL, CHANDLER_API_KEY, ...) come from this replica's environment
        self.store = open_store(s.redis_url, s.context_turns, s.context_ttl_s, s.feedback_max)
        self.model = ModelClient(model, s)
        self.exchange = Exchange(self.store)
        log.info("ingress ready: %r, API key %s", s, "required" if s.api_key else "not required")

    # -- checks ---------------------------------------------------------------------------------
    def allowed(self, request: Request) -> bool:
        key = self.settings.api_key
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return not key or (scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), key.encode()))

    def authorize(self, request: Request) -> None:
        """Before anything else about the request is looked at."""
        if not self.allowed(request):
            raise ApiError(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)")

    def check_message(self, text: str | None) -> str:
        if text is None:
            raise ApiError(422, "invalid_request", "message: Field required")
        if not text.strip():
            raise ApiError(400, "empty_message", "the message is empty")
        if len(text) > self.settings.max_message_chars:
            raise ApiError(413, "message_too_long", f"the message is over {self.settings.max_message_chars} characters")
        return text

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

    def deadline(self) -> float:
        return time.monotonic() + self.settings.request_timeout_s

    # -- probes and the page ----------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self, request: Request) -> JSONResponse:
        """A bare status for anyone; the details (model, device, counters) only with the API key."""
        checks: dict[str, Any] = {"context": self.store.kind, "model": None}
        try:
            if self.model.running():  # busy is still ready: overload is answered per request
                checks["model"] = await asyncio.wait_for(self.model.model.info.remote(), 3)
        except Exception:
            pass
        if self.store.kind == "redis":
            checks["redis"] = "ok" if (await self.exchange.guard("ping", self.store.ping(), 2))[0] else "unreachable"
        else:
            checks["redis"] = "not used"
        ready = checks["model"] is not None and checks["redis"] != "unreachable"
        body: dict[str, Any] = {"status": "ready" if ready else "not ready"}
        if self.allowed(request):
            body.update(checks)
        if not ready:
            body["error"] = {"code": "not_ready", "message": "the model is loading or Redis is unreachable"}
        return JSONResponse(body, 200 if ready else 503, {} if ready else {"Retry-After": RETRY_DOWN})

    @api.get("/", include_in_schema=False)
    async def page(self) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    # -- the bot's API ------------------------------------------------------------------------------
    @api.post("/v1/chat")
    async def chat(self, request: Request) -> Response:
        """One exchange on a channel: its history, the model's reply, both committed (see exchange.py)."""
        self.authorize(request)
        body: ChatRequest = await parse(request, ChatRequest)
        key = request.headers.get("idempotency-key")
        if key is not None and not re.fullmatch(IDEMPOTENCY_KEY, key):
            raise ApiError(422, "invalid_request", "Idempotency-Key: 1-200 printable ASCII characters")
        message = None if body.regenerate else self.check_message(body.message)
        channel, deadline = body.channel_id, self.deadline()
        if key and (kept := await self.exchange.replayed(channel, key, deadline)):
            return self.answer(kept, body.stream)
        ticket, stored = await self.exchange.open(channel, deadline)
        try:
            sampling = self.sampling()
            if body.regenerate:
                if not stored or stored[-1].get("role") != "assistant":
                    raise ApiError(409, "nothing_to_regenerate", "the channel has no reply to regenerate")
                replaced = (*stored[-1].get("replaced", ()), stored[-1]["text"])[-MAX_REPLACED:]
                commit = Commit((), replaces=stored[-1]["text"], replaced=replaced, key=key)
                turns = to_turns(stored[:-1])
                sampling[AVOID] = replaced  # "another one" is another: none of the replies it replaced
            else:
                commit = Commit((turn("user", body.user.name, message),), key=key)
                turns = to_turns(stored) + [{"speaker": speaker(body.user.name), "text": message}]
            if body.stream:
                first, stream = await self.model.open_stream(turns, sampling, deadline)
                events = self.chat_events(channel, ticket, commit, self.model.pieces(first, stream, deadline), deadline)
                ticket = None  # the events release it
                return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
            result = await self.model.reply(turns, sampling, deadline)
            answer = {"reply": result["text"], "usage": {k: result[k] for k in ("prompt_tokens", "completion_tokens")},
                      "source": result["source"]}
            answer, ticket = await self.exchange.commit(channel, ticket, commit, answer, deadline), None
            return JSONResponse(answer)
        finally:
            self.exchange.release(channel, ticket)

    async def chat_events(self, channel, ticket, commit: Commit, pieces, deadline: float):
        """`{"delta"}` events, then `{"reply", "usage", "source"}` once committed, then `[DONE]`."""
        text, usage, source = "", None, None
        try:
            async for item in pieces:
                if "delta" in item:
                    text += item["delta"]
                    yield sse({"delta": item["delta"]})
                elif "usage" in item:
                    usage, source = item["usage"], item["source"]
                else:
                    yield sse(item)
                    return
            answer = {"reply": text, "usage": usage, "source": source}
            answer, ticket = await self.exchange.commit(channel, ticket, commit, answer, deadline), None
            yield sse(answer)
            yield sse("[DONE]")
        finally:
            self.exchange.release(channel, ticket)

    def answer(self, answer: dict[str, Any], stream: bool) -> Response:
        """A reply kept for its Idempotency-Key, sent again as it was asked for."""
        if not stream:
            return JSONResponse(answer)
        events = [sse({"delta": answer["reply"]}), sse(answer), sse("[DONE]")]
        return StreamingResponse(iter(events), media_type="text/event-stream", headers=SSE_HEADERS)

    @api.delete("/v1/channels/{channel_id}/context", status_code=204)
    async def forget(self, channel_id: str, request: Request) -> Response:
        self.authorize(request)
        if not re.fullmatch(CHANNEL_ID, channel_id):
            raise ApiError(422, "invalid_request", "channel_id: 1-100 letters, digits or ._:-")
        if not (await self.exchange.guard("delete", self.store.forget(channel_id), 3))[0]:
            raise ApiError(503, "context_unavailable", "Redis is unreachable; the context was not forgotten", RETRY_DOWN)
        return Response(status_code=204)

    @api.post("/v1/feedback", status_code=204)
    async def feedback(self, request: Request) -> Response:
        """A rating of one of the channel's replies, kept with the turns that reply answered."""
        self.authorize(request)
        if not self.settings.feedback:
            raise ApiError(404, "feedback_off", "feedback is turned off on this server (CHANDLER_FEEDBACK=off)")
        body: FeedbackRequest = await parse(request, FeedbackRequest)
        ok, stored = await self.exchange.guard("read", self.store.get(body.channel_id), 3)
        if not ok:
            raise ApiError(503, "context_unavailable", "Redis is unreachable; the rating was not stored", RETRY_DOWN)
        index = next((i for i in range(len(stored) - 1, -1, -1)
                      if stored[i].get("role") == "assistant" and stored[i].get("text") == body.reply), None)
        if index is None:
            raise ApiError(404, "unknown_reply", "that reply is not in the channel's recent conversation; nothing was stored")
        entry = {"context": json.dumps(to_turns(stored[:index]), ensure_ascii=False), "reply": body.reply,
                 "rating": str(body.rating), "user": self.user_hash(body.user.id), "ts": f"{time.time():.3f}"}
        if not (await self.exchange.guard("feedback", self.store.add_feedback(entry), 3))[0]:
            raise ApiError(503, "context_unavailable", "Redis is unreachable; the rating was not stored", RETRY_DOWN)
        return Response(status_code=204)

    def user_hash(self, user_id: str) -> str:
        """HMAC-SHA256 of the user id with the secret salt; without a salt no user id is kept."""
        salt = self.settings.feedback_salt
        return hmac.new(salt.encode(), user_id.encode(), hashlib.sha256).hexdigest() if salt else ""

    # -- OpenAI-compatible --------------------------------------------------------------------------
    @api.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        self.authorize(request)
        return {"object": "list", "data": [{"id": self.settings.model_name, "object": "model", "owned_by": "chandler-bot"}]}

    @api.post("/v1/chat/completions")
    async def completions(self, request: Request) -> Response:
        """Stateless: the conversation is in `messages` (see openai.py)."""
        self.authorize(request)
        body: OpenAIRequest = await parse(request, OpenAIRequest)
        turns = request_turns(body, self.settings.max_message_chars)
        self.check_message(turns[-1]["text"])
        sampling = self.sampling(body.max_completion_tokens or body.max_tokens, body.temperature, body.top_p, body.seed)
        head = {"id": "chatcmpl-" + uuid.uuid4().hex, "created": int(time.time()), "model": self.settings.model_name}
        deadline = self.deadline()
        if body.stream:
            first, stream = await self.model.open_stream(turns, sampling, deadline)
            events = completion_events(head, self.model.pieces(first, stream, deadline))
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        return JSONResponse(completion(head, await self.model.reply(turns, sampling, deadline)))
