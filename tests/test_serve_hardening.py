"""What an outside tester broke, against the real app (Ray Serve with two ingress replicas, the
embedded model, redis-server): issue 16's defects 1-8, and issue 15's regenerate and feedback."""
import asyncio
import json
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

import httpx
import pytest
from conftest import FEEDBACK_SALT, SERVE_API_KEY
from test_serve_api import AUTH, TIMEOUT, chat, sse, stored

from data.dialogue import NEWEST_TURN_TOKENS
from serve.api.redis_context import FEEDBACK, KEY, STATE


def post(url: str, path: str, content: bytes) -> httpx.Response:
    return httpx.post(f"{url}{path}", content=content, headers={**AUTH, "Content-Type": "application/json"}, timeout=TIMEOUT)


# -- 1. a long message cannot stall the model ---------------------------------------------------------------
def test_a_2000_emoji_message_is_cut_to_the_token_budget(serve_app, redis_db):
    short = chat(serve_app, "c-emoji-short", "x").json()["usage"]["prompt_tokens"]
    started = time.monotonic()
    long = chat(serve_app, "c-emoji", "😀" * 2000)  # about 6,000 tokens uncut
    took = time.monotonic() - started
    assert long.status_code == 200, long.text
    assert long.json()["usage"]["prompt_tokens"] <= short + NEWEST_TURN_TOKENS
    assert [t["text"] for t in stored(redis_db, "c-emoji")][0] == "😀" * 2000  # stored whole, prompted cut
    started = time.monotonic()
    assert chat(serve_app, "c-emoji-short", "and now?").status_code == 200
    print(f"2,000-emoji message answered in {took:.1f}s; a short one after it in {time.monotonic() - started:.1f}s")


# -- 2. forget, with two ingress replicas ---------------------------------------------------------------------
async def test_forget_during_an_exchange_commits_nothing_on_any_replica(serve_app, redis_db):
    """Six times: a chat is held in flight (an earlier exchange of its channel, opened straight in
    Redis, is not finished, so the chat may not commit), a DELETE comes meanwhile, on either
    replica as the proxy chooses, then the earlier exchange ends. Nothing of the chat may be stored."""
    async with httpx.AsyncClient(timeout=TIMEOUT, headers=AUTH) as client:
        for attempt in range(6):
            channel = f"c-forget-{attempt}"
            state = STATE.format(channel)
            redis_db.hincrby(state, "seq", 1)  # the earlier exchange: ticket 1, open
            body = {"channel_id": channel, "user": {"id": "1", "name": "Ross"}, "message": "Remember this?"}
            exchange = asyncio.create_task(client.post(f"{serve_app}/v1/chat", json=body))
            while redis_db.hget(state, "seq") != "2":  # the chat has opened (ticket 2) and read the history
                await asyncio.sleep(0.02)
            gone = await client.delete(f"{serve_app}/v1/channels/{channel}/context")
            assert gone.status_code == 204 and not exchange.done()
            redis_db.hset(state, "finished", 1)  # the earlier exchange ends: the chat may commit now
            reply = await exchange
            assert reply.status_code == 200, reply.text  # answered, ...
            assert stored(redis_db, channel) == [], f"attempt {attempt}: committed after the forget"  # ... not stored
            assert chat(serve_app, channel, "And now?").status_code == 200  # the channel works again
            assert [t["text"] for t in stored(redis_db, channel)][0] == "And now?"


# -- 3. idempotency --------------------------------------------------------------------------------------------
def test_a_repeated_idempotency_key_returns_the_stored_reply_and_commits_nothing(serve_app, redis_db):
    headers = {**AUTH, "Idempotency-Key": "discord-1234"}
    body = {"channel_id": "c-idem", "user": {"id": "1", "name": "Joey"}, "message": "Say it once"}
    first = httpx.post(f"{serve_app}/v1/chat", json=body, headers=headers, timeout=TIMEOUT)
    again = httpx.post(f"{serve_app}/v1/chat", json=body, headers=headers, timeout=TIMEOUT)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    streamed = sse(httpx.post(f"{serve_app}/v1/chat", json={**body, "stream": True}, headers=headers, timeout=TIMEOUT))
    assert streamed[-2] == first.json() and streamed[-1] == "[DONE]"
    assert [t["text"] for t in stored(redis_db, "c-idem")] == ["Say it once", first.json()["reply"]]
    bad = httpx.post(f"{serve_app}/v1/chat", json=body, headers={**AUTH, "Idempotency-Key": "a b"}, timeout=TIMEOUT)
    assert bad.status_code == 422


async def test_concurrent_resends_of_one_key_store_one_exchange(serve_app, redis_db):
    headers = {**AUTH, "Idempotency-Key": "discord-5678"}
    body = {"channel_id": "c-idem-race", "user": {"id": "1", "name": "Joey"}, "message": "Only once, please"}
    async with httpx.AsyncClient(timeout=TIMEOUT, headers=headers) as client:
        replies = await asyncio.gather(*(client.post(f"{serve_app}/v1/chat", json=body) for _ in range(3)))
    assert [r.status_code for r in replies] == [200] * 3
    assert len({r.json()["reply"] for r in replies}) == 1  # all get the one kept reply
    assert [t["text"] for t in stored(redis_db, "c-idem-race")] == ["Only once, please", replies[0].json()["reply"]]


# -- 4. 4xx, not 500 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "content", "status"), [
    ("/v1/chat", b"[" * 100_000, 400),
    ("/v1/chat", b'{"channel_id": "c-bad", "user": {"id": "1", "name": "J"}, "message": "hi \\ud800"}', 400),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "seed": 18446744073709551616}', 422),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}]}', 400),
], ids=["deep-nesting", "lone-surrogate", "huge-seed", "surrogate-completion"])
def test_hostile_bodies_get_a_4xx_json_error(serve_app, redis_db, path, content, status):
    response = post(serve_app, path, content)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] in {"invalid_json", "invalid_request"}
    assert not redis_db.exists(KEY.format("c-bad"))


# -- 5. a chunked body is refused at the limit, not read to its end -------------------------------------------
def test_a_chunked_body_is_refused_before_it_ends(serve_app):
    address = urlparse(serve_app)
    with socket.create_connection((address.hostname, address.port), timeout=30) as conn:
        conn.sendall(f"POST /v1/chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SERVE_API_KEY}\r\n"
                     "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"x" * 65536
        for _ in range(40):  # 2.5 MiB of a body that never ends
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.settimeout(20)  # reading the whole body first would leave this waiting for its end
        answer = b""
        while b"}}" not in answer and (part := conn.recv(65536)):
            answer += part
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"too_large"' in answer


# -- 8. the feedback stream, regenerate and sources ------------------------------------------------------------
def test_regenerate_replaces_the_last_reply(serve_app, redis_db):
    first = chat(serve_app, "c-regen", "Tell me a joke").json()
    body = {"channel_id": "c-regen", "user": {"id": "42", "name": "Joey"}, "regenerate": True}
    again = httpx.post(f"{serve_app}/v1/chat", json=body, headers=AUTH, timeout=TIMEOUT)
    assert again.status_code == 200, again.text
    assert again.json()["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"]  # the same prompt
    turns = stored(redis_db, "c-regen")
    assert [(t["role"], t["text"]) for t in turns] == [("user", "Tell me a joke"), ("assistant", again.json()["reply"])]
    assert turns[0]["ts"] <= turns[1]["ts"]
    assert turns[1]["replaced"] == [first["reply"]]  # what "another one" must not send again
    third = httpx.post(f"{serve_app}/v1/chat", json=body, headers=AUTH, timeout=TIMEOUT)
    assert third.status_code == 200, third.text
    assert stored(redis_db, "c-regen")[-1]["replaced"] == [first["reply"], again.json()["reply"]]
    empty = httpx.post(f"{serve_app}/v1/chat", json={**body, "channel_id": "c-regen-none"}, headers=AUTH, timeout=TIMEOUT)
    assert empty.status_code == 409 and empty.json()["error"]["code"] == "nothing_to_regenerate"
    assert not redis_db.exists(KEY.format("c-regen-none"))


def test_feedback_is_stored_with_its_context_and_exported(serve_app, redis_db, tmp_path):
    import hashlib
    import hmac

    chat(serve_app, "c-fb", "Where's Ross?")
    reply = chat(serve_app, "c-fb", "And Monica?").json()["reply"]
    rate = {"channel_id": "c-fb", "reply": reply, "rating": -1, "user": {"id": "user-77"}}
    assert httpx.post(f"{serve_app}/v1/feedback", json=rate).status_code == 401  # the key is required
    response = httpx.post(f"{serve_app}/v1/feedback", json=rate, headers=AUTH)
    assert response.status_code == 204 and response.content == b""
    ((_, entry),) = redis_db.xrange(FEEDBACK)
    assert entry["user"] == hmac.new(FEEDBACK_SALT.encode(), b"user-77", hashlib.sha256).hexdigest()
    assert "user-77" not in json.dumps(entry)
    context = json.loads(entry["context"])
    assert [t["text"] for t in context][0] == "Where's Ross?" and context[-1] == {"speaker": "Joey", "text": "And Monica?"}
    for wrong in [{**rate, "reply": "never said"}, {**rate, "channel_id": "c-fb-empty"}]:
        missing = httpx.post(f"{serve_app}/v1/feedback", json=wrong, headers=AUTH)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_reply"
    assert httpx.post(f"{serve_app}/v1/feedback", json={**rate, "rating": 5}, headers=AUTH).status_code == 422
    assert redis_db.xlen(FEEDBACK) == 1
    out = tmp_path / "feedback.jsonl"
    url = redis_db.connection_pool.connection_kwargs  # the app's Redis
    done = subprocess.run([sys.executable, "-m", "data", "feedback", "--redis", f"redis://{url['host']}:{url['port']}/0",
                           "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 1
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row == {"context": context, "reply": reply, "rating": -1}
