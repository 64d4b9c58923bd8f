"""Faults with real processes: Redis stopped and restarted under the running app, a model replica
killed. Replies keep coming (or a 503 with Retry-After says when to come back)."""
import os
import signal
import time

import httpx
from test_serve_api import AUTH, chat, stored


def test_redis_down_then_back(serve_app, redis_db, redis_server):
    fresh = chat(serve_app, "c-redis", "Is Redis up?").json()["usage"]["prompt_tokens"]
    redis_server.stop()
    try:
        down = chat(serve_app, "c-redis", "Is Redis up?")
        assert down.status_code == 200, down.text  # still a reply ...
        assert down.json()["usage"]["prompt_tokens"] == fresh  # ... without the history
        ready = httpx.get(f"{serve_app}/readyz", headers=AUTH, timeout=30)
        assert ready.status_code == 503 and ready.headers["retry-after"]
        assert ready.json()["redis"] == "unreachable" and ready.json()["error"]["code"] == "not_ready"
        forget = httpx.delete(f"{serve_app}/v1/channels/c-redis/context", headers=AUTH, timeout=30)
        assert forget.status_code == 503 and forget.json()["error"]["code"] == "context_unavailable"
    finally:
        redis_server.start()  # same port, empty (no persistence)
    client = redis_server.client()
    back = chat(serve_app, "c-redis", "Is Redis up?")
    assert back.status_code == 200, back.text
    assert [t["text"] for t in stored(client, "c-redis")] == ["Is Redis up?", back.json()["reply"]]
    again = chat(serve_app, "c-redis", "Is Redis up?")
    assert again.json()["usage"]["prompt_tokens"] > fresh  # history resumed
    assert httpx.get(f"{serve_app}/readyz", headers=AUTH, timeout=30).status_code == 200


def test_a_dead_model_replica_gives_503_until_replaced(serve_app, redis_db):
    pid = httpx.get(f"{serve_app}/readyz", headers=AUTH, timeout=30).json()["model"]["pid"]
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    while httpx.get(f"{serve_app}/readyz", headers=AUTH, timeout=30).json()["model"] is not None:  # until Serve has noticed
        assert time.monotonic() - started < 60, "the dead replica was never noticed"
        time.sleep(0.2)
    first = chat(serve_app, "c-dead", "Are you there?")
    assert first.status_code == 503, first.text
    assert first.json()["error"]["code"] == "model_unavailable"
    assert int(first.headers["retry-after"]) > 0
    # Until Ray has a new replica: quick 503s, not hanging requests; then replies again.
    while True:
        assert time.monotonic() - started < 600, "the model replica was not replaced"
        asked = time.monotonic()
        response = chat(serve_app, "c-dead", "Are you there?")
        if response.status_code == 200:
            break
        assert response.status_code == 503 and response.headers["retry-after"], response.text
        assert time.monotonic() - asked < 10
        time.sleep(1)
    # Each of the two ingress replicas notices the new model replica on its own watcher's poll (every
    # second), so readyz may still answer from one that has not: wait until four reports in a row
    # name a model, which leaves both ingresses ready for the tests that follow.
    reports: list = []
    while len(reports) < 4 or None in reports[-4:]:
        assert time.monotonic() - started < 660, "readyz never reported the new model replica"
        reports.append(httpx.get(f"{serve_app}/readyz", headers=AUTH, timeout=30).json()["model"])
        time.sleep(0.25)
    assert reports[-1]["pid"] != pid
    assert stored(redis_db, "c-dead")[-1]["text"] == response.json()["reply"]
