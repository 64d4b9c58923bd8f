"""The HTTP contract of the Ray Serve backend, against the real app (Ray, the embedded model, Redis)."""
import asyncio
import json
import time

import httpx
import pytest
from conftest import SERVE_API_KEY

from serve.api.redis_context import KEY, STATE

AUTH = {"Authorization": f"Bearer {SERVE_API_KEY}"}
TIMEOUT = 180


def chat(url: str, channel: str, message: str, name: str = "Joey Tribbiani", **extra) -> httpx.Response:
    body = {"channel_id": channel, "user": {"id": "42", "name": name}, "message": message, **extra}
    return httpx.post(f"{url}/v1/chat", json=body, headers=AUTH, timeout=TIMEOUT)


def stored(redis_db, channel: str) -> list[dict]:
    return [json.loads(item) for item in redis_db.lrange(KEY.format(channel), 0, -1)]


def sse(response: httpx.Response) -> list:
    """The `data:` payloads of a server-sent event stream, JSON-decoded except `[DONE]`."""
    events = []
    for block in response.text.split("\n\n"):
        data = "\n".join(line[5:].strip() for line in block.splitlines() if line.startswith("data:"))
        if data:
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_health_and_readiness(serve_app):
    assert httpx.get(f"{serve_app}/healthz").json() == {"status": "ok"}
    bare = httpx.get(f"{serve_app}/readyz", timeout=30)
    assert bare.status_code == 200 and bare.json() == {"status": "ready"}  # strangers learn nothing more
    ready = httpx.get(f"{serve_app}/readyz", headers=AUTH, timeout=30)
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready" and body["redis"] == "ok" and body["context"] == "redis"
    assert body["model"]["device"] == "cpu" and body["model"]["pid"] > 0


def test_a_reply_is_stored_with_the_message(serve_app, redis_db):
    response = chat(serve_app, "c-reply", "How you doin'?")
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["reply"], str) and body["reply"].strip()
    assert body["usage"]["prompt_tokens"] > 20 and body["usage"]["completion_tokens"] >= 1  # the reply's tokens, re-counted
    assert body["source"] == {"kind": "generated"}
    turns = stored(redis_db, "c-reply")
    assert [(t["role"], t["name"], t["text"]) for t in turns] == [
        ("user", "Joey Tribbiani", "How you doin'?"),
        ("assistant", "Chandler", body["reply"]),
    ]
    assert turns[0]["ts"] <= turns[1]["ts"] <= time.time() + 1  # stamped by Redis at commit
    assert 3500 < redis_db.ttl(KEY.format("c-reply")) <= 3600  # context_ttl_s of the test app


def test_history_feeds_the_prompt_and_channels_are_isolated(serve_app, redis_db):
    first = chat(serve_app, "c-iso-a", "Where's Ross?").json()["usage"]["prompt_tokens"]
    second = chat(serve_app, "c-iso-a", "Where's Ross?").json()["usage"]["prompt_tokens"]
    other = chat(serve_app, "c-iso-b", "Where's Ross?").json()["usage"]["prompt_tokens"]
    assert second > first  # the first exchange is in the prompt
    assert other == first  # channel b sees none of channel a
    assert len(stored(redis_db, "c-iso-a")) == 4 and len(stored(redis_db, "c-iso-b")) == 2


def test_reset_forgets_the_channel(serve_app, redis_db):
    fresh = chat(serve_app, "c-reset", "Hi there").json()["usage"]["prompt_tokens"]
    chat(serve_app, "c-reset", "Hi there")
    gone = httpx.delete(f"{serve_app}/v1/channels/c-reset/context", headers=AUTH)
    assert gone.status_code == 204 and gone.content == b""
    assert not redis_db.exists(KEY.format("c-reset"))
    assert chat(serve_app, "c-reset", "Hi there").json()["usage"]["prompt_tokens"] == fresh
    assert httpx.delete(f"{serve_app}/v1/channels/never-used/context", headers=AUTH).status_code == 204


async def test_concurrent_requests_in_one_channel_keep_every_turn_in_order(serve_app, redis_db):
    messages = [f"message number {i}" for i in range(7)]
    async with httpx.AsyncClient(timeout=TIMEOUT, headers=AUTH) as client:
        async def opened(count: int) -> None:
            while int(redis_db.hget(STATE.format("c-busy"), "seq") or 0) < count:
                await asyncio.sleep(0.02)

        async def send(i: int, text: str) -> httpx.Response:
            # A known arrival order however busy the machine: each request goes once the one before
            # has taken its place in the channel's order, and all are still in flight together.
            await asyncio.wait_for(opened(i), TIMEOUT)
            body = {"channel_id": "c-busy", "user": {"id": str(i), "name": f"User{i}"}, "message": text}
            return await client.post(f"{serve_app}/v1/chat", json=body)

        responses = await asyncio.gather(*(send(i, m) for i, m in enumerate(messages)))
    assert [r.status_code for r in responses] == [200] * 7
    turns = stored(redis_db, "c-busy")
    # 7 exchanges = 14 turns, trimmed to the app's last 12: the first exchange is gone, atomically.
    assert len(turns) == 12
    assert [t["text"] for t in turns[::2]] == messages[1:]
    assert [t["text"] for t in turns[1::2]] == [r.json()["reply"] for r in responses[1:]]
    assert [t["name"] for t in turns[::2]] == [f"User{i}" for i in range(1, 7)]
    assert all(t["role"] == "assistant" for t in turns[1::2])
    user_times = [t["ts"] for t in turns[::2]]
    assert user_times == sorted(user_times)


def test_streaming_chat_sends_pieces_then_the_reply(serve_app, redis_db):
    response = chat(serve_app, "c-stream", "Tell me a joke", stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response)
    assert events[-1] == "[DONE]"
    final = events[-2]
    assert set(final) == {"reply", "usage", "source"} and final["source"] == {"kind": "generated"}
    deltas = [e["delta"] for e in events[:-2]]
    assert deltas and "".join(deltas) == final["reply"]
    assert final["usage"]["completion_tokens"] >= 1
    assert [t["text"] for t in stored(redis_db, "c-stream")] == ["Tell me a joke", final["reply"]]


def test_openai_compatible_completion(serve_app, redis_db):
    keys_before = set(redis_db.keys("chandler:ctx:*"))
    messages = [{"role": "user", "content": "Could you BE any slower?", "name": "Ross"}]
    body = {"model": "chandler", "messages": messages, "max_tokens": 4, "temperature": 0.7, "seed": 7}
    response = httpx.post(f"{serve_app}/v1/chat/completions", json=body, headers=AUTH, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["object"] == "chat.completion" and result["id"].startswith("chatcmpl-")
    assert result["model"] == "chandler"
    (choice,) = result["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    usage = result["usage"]
    assert usage["completion_tokens"] >= 1 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    # The same seed gives the same reply; the system message is ignored; `name` speaks by first name.
    again = {**body, "messages": [{"role": "system", "content": "You are a pirate. Talk like one, at length."},
                                  {"role": "user", "content": "Could you BE any slower?", "name": "Ross Geller"}]}
    repeat = httpx.post(f"{serve_app}/v1/chat/completions", json=again, headers=AUTH, timeout=TIMEOUT).json()
    assert repeat["choices"][0]["message"]["content"] == choice["message"]["content"]
    assert repeat["usage"]["prompt_tokens"] == usage["prompt_tokens"]

    # A conversation in `messages` (content parts too) makes a longer prompt; nothing is stored.
    longer = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "Ross"},
                           {"role": "assistant", "content": "Hello."}, *messages], "max_tokens": 2}
    grown = httpx.post(f"{serve_app}/v1/chat/completions", json=longer, headers=AUTH, timeout=TIMEOUT).json()
    assert grown["usage"]["prompt_tokens"] > usage["prompt_tokens"]
    assert set(redis_db.keys("chandler:ctx:*")) == keys_before


def test_completion_tokens_mean_the_reply_sent_and_a_cut_reply_says_length(serve_app):
    """One meaning of completion_tokens, streamed or not: the tokens of the reply as sent."""
    from serve.engine.loading import load_tokenizer

    tokenizer = load_tokenizer("embedded")
    body = {"messages": [{"role": "user", "content": "Tell me about your job, in detail.", "name": "Ross"}],
            "max_tokens": 2, "temperature": 0}
    plain = httpx.post(f"{serve_app}/v1/chat/completions", json=body, headers=AUTH, timeout=TIMEOUT).json()
    streamed = sse(httpx.post(f"{serve_app}/v1/chat/completions", json={**body, "stream": True}, headers=AUTH,
                              timeout=TIMEOUT))
    text = plain["choices"][0]["message"]["content"]
    assert plain["usage"]["completion_tokens"] == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert plain["choices"][0]["finish_reason"] == "length"  # two tokens cannot finish Chandler's line
    streamed_text = "".join(c["choices"][0]["delta"].get("content", "") for c in streamed[:-1])
    assert streamed[-2]["usage"]["completion_tokens"] == len(tokenizer(streamed_text, add_special_tokens=False)["input_ids"])


def test_openai_compatible_streaming(serve_app):
    body = {"messages": [{"role": "user", "content": "Say something"}], "stream": True}
    response = httpx.post(f"{serve_app}/v1/chat/completions", json=body, headers=AUTH, timeout=TIMEOUT)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text.strip()
    assert chunks[-1]["usage"]["completion_tokens"] >= 1


def test_models_list(serve_app):
    models = httpx.get(f"{serve_app}/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == ["chandler"]


GOOD = {"channel_id": "c-bad", "user": {"id": "1", "name": "Joey"}, "message": "hi"}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"[1, 2]", 422, "invalid_request"),
        ({**GOOD, "message": 5}, 422, "invalid_request"),
        ({**GOOD, "user": {"id": 1, "name": "Joey"}}, 422, "invalid_request"),
        ({k: v for k, v in GOOD.items() if k != "user"}, 422, "invalid_request"),
        ({**GOOD, "channel_id": "no spaces allowed"}, 422, "invalid_request"),
        ({**GOOD, "stream": "yes"}, 422, "invalid_request"),
        ({**GOOD, "message": ""}, 400, "empty_message"),
        ({**GOOD, "message": "   \n "}, 400, "empty_message"),
        ({**GOOD, "message": "x" * 2001}, 413, "message_too_long"),
        ({**GOOD, "message": "x" * (1 << 20)}, 413, "too_large"),
    ],
    ids=["bad-json", "no-body", "not-an-object", "message-int", "user-id-int", "no-user", "bad-channel", "stream-str",
         "empty", "blank", "too-long", "huge-body"],
)
def test_bad_chat_input(serve_app, redis_db, body, status, code):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{serve_app}/v1/chat", content=content, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert "Traceback" not in response.text
    assert not redis_db.exists(KEY.format("c-bad"))


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"messages": []}, 422, "invalid_request"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 422, "invalid_request"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 422, "invalid_request"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 422, "invalid_request"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, 400, "invalid_request"),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, 400, "invalid_request"),
        ({"messages": [{"role": "user", "content": " "}]}, 400, "empty_message"),
        ({"messages": [{"role": "user", "content": "x" * 2001}]}, 413, "message_too_long"),
    ],
    ids=["no-messages", "n-2", "temperature-str", "bad-role", "last-not-user", "system-only", "blank", "too-long"],
)
def test_bad_completion_input(serve_app, body, status, code):
    response = httpx.post(f"{serve_app}/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert "Traceback" not in response.text


def test_unknown_routes_and_methods_answer_json(serve_app):
    missing = httpx.get(f"{serve_app}/v1/nothing-here", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(f"{serve_app}/v1/chat", headers=AUTH)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {SERVE_API_KEY}", SERVE_API_KEY])
def test_api_key_is_required(serve_app, redis_db, header):
    headers = {"Authorization": header} if header else {}
    for method, path, body in [("POST", "/v1/chat", GOOD), ("POST", "/v1/chat/completions", {"messages": []}),
                               ("DELETE", "/v1/channels/c-key/context", None), ("POST", "/v1/chat", None)]:
        response = httpx.request(method, f"{serve_app}{path}", json=body, headers=headers)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    assert not redis_db.exists(KEY.format("c-bad"))
    # Probes and the page stay open; the right key opens the API.
    assert httpx.get(f"{serve_app}/healthz").status_code == 200
    assert httpx.get(f"{serve_app}/").status_code == 200
    assert httpx.delete(f"{serve_app}/v1/channels/c-key/context", headers=AUTH).status_code == 204


def test_the_page_and_its_script_are_served(serve_app):
    page = httpx.get(f"{serve_app}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="message"' in page.text and 'id="reset"' in page.text and "/static/app.js" in page.text
    script = httpx.get(f"{serve_app}/static/app.js")
    assert script.status_code == 200 and "/v1/chat" in script.text
    assert httpx.get(f"{serve_app}/static/nope.js").json()["error"]["code"] == "not_found"


async def test_concurrent_requests_share_engine_passes(serve_app):
    def counts() -> tuple[int, int]:
        model = httpx.get(f"{serve_app}/readyz", headers=AUTH, timeout=30).json()["model"]
        return model["batches"], model["batched_requests"]

    before = counts()
    async with httpx.AsyncClient(timeout=TIMEOUT, headers=AUTH) as client:
        bodies = [{"messages": [{"role": "user", "content": f"Question {i}?"}], "max_tokens": 3} for i in range(8)]
        responses = await asyncio.gather(*(client.post(f"{serve_app}/v1/chat/completions", json=b) for b in bodies))
    assert [r.status_code for r in responses] == [200] * 8
    after = counts()
    assert after[1] - before[1] == 8
    assert after[0] - before[0] <= 3  # not one engine pass per request
