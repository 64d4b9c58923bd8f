"""The channel store (serve/api/context.py, redis_context.py) against a real redis-server and in
memory, by the same rules; and the settings."""
import asyncio
import json
import logging

import pytest
from conftest import free_port

from serve.api.context import COMMITTED, CONFLICT, FORGOTTEN, Commit, MemoryContext, speaker, to_turns, turn
from serve.api.redis_context import FEEDBACK, KEY, RedisContext
from serve.api.store import open_store
from serve.settings import AppArgs, Settings, SettingsError, load


@pytest.fixture(params=["redis", "memory"])
async def store(request, redis_server):
    if request.param == "memory":
        yield MemoryContext(max_turns=10, ttl_s=60, feedback_max=3)
        return
    client = redis_server.client()
    client.flushdb()
    store = RedisContext(redis_server.url, max_turns=10, ttl_s=60, feedback_max=3)
    yield store
    await store.close()


def exchange(i: int) -> Commit:
    return Commit((turn("user", "Joey", f"q{i}"), turn("assistant", "Chandler", f"a{i}")))


async def test_commits_trim_keep_exchanges_whole_and_stamp_ts_in_list_order(store):
    async def one(i: int) -> str:
        ticket, _ = await store.open("c1")
        return await store.commit("c1", ticket, exchange(i))

    assert await asyncio.gather(*(one(i) for i in range(50))) == [COMMITTED] * 50
    stored = await store.get("c1")
    assert len(stored) == 10
    for user, bot in zip(stored[::2], stored[1::2]):  # never a question without its answer
        assert (user["role"], bot["role"]) == ("user", "assistant") and user["text"][1:] == bot["text"][1:]
    assert set(stored[0]) == {"role", "name", "text", "ts"}
    stamps = [t["ts"] for t in stored]
    assert stamps == sorted(stamps)


async def test_an_exchange_opened_before_forget_is_not_committed(store):
    ticket, _ = await store.open("c")
    await store.commit("c", ticket, exchange(0))
    late, history = await store.open("c")
    assert [t["text"] for t in history] == ["q0", "a0"]
    await store.forget("c")
    assert await store.commit("c", late, exchange(1)) == FORGOTTEN
    assert await store.get("c") == []
    assert await store.finished("c") == late.seq  # later exchanges need not wait for it
    fresh, history = await store.open("c")
    assert history == [] and await store.commit("c", fresh, exchange(2)) == COMMITTED
    assert [t["text"] for t in await store.get("c")] == ["q2", "a2"]


async def test_tickets_count_up_and_release_finishes_them(store):
    first, _ = await store.open("c")
    second, _ = await store.open("c")
    assert second.seq == first.seq + 1 and await store.finished("c") == 0
    await store.release("c", second)
    assert await store.finished("c") == second.seq
    await store.release("c", first)  # finished never goes back
    assert await store.finished("c") == second.seq


async def test_a_repeated_idempotency_key_gets_the_kept_reply_and_commits_nothing(store):
    kept = json.dumps({"reply": "a0", "usage": {}, "source": {"kind": "generated"}})
    ticket, _ = await store.open("c")
    assert await store.commit("c", ticket, Commit(exchange(0).turns, key="m-1", response=kept)) == COMMITTED
    again, _ = await store.open("c")
    assert await store.replay("c", "m-1") == kept and await store.replay("c", "m-2") is None
    assert await store.commit("c", again, Commit(exchange(1).turns, key="m-1", response="other")) == kept
    assert [t["text"] for t in await store.get("c")] == ["q0", "a0"]


async def test_regenerate_replaces_the_last_reply_only_if_it_is_still_the_last(store):
    ticket, _ = await store.open("c")
    await store.commit("c", ticket, exchange(0))
    ticket, _ = await store.open("c")
    assert await store.commit("c", ticket, Commit((turn("assistant", "Chandler", "new"),), replaces="a0")) == COMMITTED
    assert [t["text"] for t in await store.get("c")] == ["q0", "new"]
    ticket, _ = await store.open("c")
    assert await store.commit("c", ticket, Commit((turn("assistant", "Chandler", "newer"),), replaces="a0")) == CONFLICT
    assert [t["text"] for t in await store.get("c")] == ["q0", "new"]


async def test_redis_keys_expire_with_the_context(redis_db, redis_server):
    store = RedisContext(redis_server.url, max_turns=10, ttl_s=2)
    try:
        ticket, _ = await store.open("c1")
        await store.commit("c1", ticket, Commit(exchange(0).turns, key="k", response="{}"))
        assert 0 < redis_db.ttl(KEY.format("c1")) <= 2 and 0 < redis_db.ttl("chandler:state:c1") <= 2
        assert 0 < redis_db.ttl("chandler:reply:c1:k") <= 2
        await asyncio.sleep(2.2)
        assert (await store.open("c1"))[1] == [] and not redis_db.exists(KEY.format("c1"))
    finally:
        await store.close()


async def test_redis_feedback_stream_is_capped_and_malformed_turns_skipped(redis_db, redis_server):
    store = RedisContext(redis_server.url, max_turns=10, ttl_s=60, feedback_max=3)
    try:
        for i in range(200):
            await store.add_feedback({"reply": f"r{i}", "rating": "1"})
        assert redis_db.xlen(FEEDBACK) < 200  # approximate trimming keeps about `feedback_max`
        redis_db.rpush(KEY.format("c"), "not json", json.dumps(turn("user", "Phoebe", "smelly cat")))
        assert [t["text"] for t in await store.get("c")] == ["smelly cat"]
    finally:
        await store.close()


async def test_the_first_exchange_after_a_redis_restart_is_stored(redis_db, redis_server):
    """The pool's connection died with the old server: the client retries on a new one instead of
    failing the exchange (which would then be answered but not stored)."""
    store = RedisContext(redis_server.url, max_turns=10, ttl_s=60)
    await store.ping()
    redis_server.stop()
    redis_server.start()  # same port, empty
    try:
        ticket, _ = await store.open("c-restart")
        assert await store.commit("c-restart", ticket, exchange(1)) == COMMITTED
        assert [t["text"] for t in await store.get("c-restart")] == ["q1", "a1"]
    finally:
        await store.close()


async def test_redis_down_raises_for_the_caller_to_handle():
    from redis.exceptions import ConnectionError

    store = RedisContext(f"redis://127.0.0.1:{free_port()}/0", 10, 60, timeout_s=0.5)  # nothing listens there
    try:
        with pytest.raises((ConnectionError, OSError)):
            await store.open("c")
    finally:
        await store.close()


async def test_memory_store_expires_and_stays_bounded(monkeypatch):
    import serve.api.context as context

    store = MemoryContext(max_turns=3, ttl_s=1)
    ticket, _ = await store.open("c")
    await store.commit("c", ticket, Commit(tuple(turn("user", "Joey", str(i)) for i in range(5))))
    assert [t["text"] for t in await store.get("c")] == ["2", "3", "4"]
    await asyncio.sleep(1.1)
    assert await store.get("c") == []
    monkeypatch.setattr(context, "MAX_MEMORY_CHANNELS", 5)
    for i in range(20):
        await store.open(f"many-{i}")
    assert len(store.channels) == 5 and "many-19" in store.channels
    for i in range(20_010):
        await store.add_feedback({"reply": f"r{i}", "rating": "1"})
    assert len(store.feedback) == 10_000 and store.feedback[-1]["reply"] == "r20009"


def test_open_store_announces_memory_mode(caplog):
    with caplog.at_level(logging.INFO, logger="ray.serve.chandler.context"):
        store = open_store(None, 20, 60, 100)
    assert store.kind == "memory"
    assert "REDIS_URL is not set" in caplog.text and "memory" in caplog.text


def test_stored_turns_become_engine_turns():
    stored = [
        turn("user", "Joey Tribbiani", "How you doin'?"),
        turn("assistant", "Chandler", "Fine."),
        turn("user", "Chandler Bing", "I'm a user called Chandler"),
        turn("user", "", "who am I"),
        turn("user", "@<Ross: 123>", "weird name"),
    ]
    assert to_turns(stored) == [
        {"speaker": "Joey", "text": "How you doin'?"},
        {"speaker": "Chandler", "text": "Fine."},
        {"speaker": "Guest", "text": "I'm a user called Chandler"},
        {"speaker": "Guest", "text": "who am I"},
        {"speaker": "Ross", "text": "weird name"},
    ]
    assert speaker("  Mr.  Heckles ") == "Mr."


@pytest.fixture
def clean_env(monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith("CHANDLER_") or n == "REDIS_URL"]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_settings_precedence_and_errors(clean_env):
    assert load({}) == Settings()
    assert load({"torch_threads": 0, "temperature": 0}).torch_threads == 0
    assert load({"max_new_tokens": 6, "adapter": "none"}).max_new_tokens == 6
    for name, value in {"CHANDLER_MAX_NEW_TOKENS": "9", "CHANDLER_API_KEY": "sekrit-key", "REDIS_URL": "redis://:pw@x",
                        "CHANDLER_CONTEXT_TTL": "30", "CHANDLER_FEEDBACK": "off", "CHANDLER_RERANK": "off"}.items():
        clean_env.setenv(name, value)
    s = load({"max_new_tokens": 6, "context_ttl_s": 10, "rerank": True})
    assert (s.max_new_tokens, s.api_key, s.redis_url, s.context_ttl_s, s.feedback, s.rerank) == (
        9, "sekrit-key", "redis://:pw@x", 30, False, False)
    assert "sekrit" not in repr(s) and "pw@x" not in repr(s) and "sekrit" not in repr(s.args())  # secrets stay out
    with pytest.raises(SettingsError, match="^api_key: not a setting"):
        load({"api_key": "in the config file"})
    with pytest.raises(SettingsError, match="^context_turns: .*integer"):
        load({"context_turns": "many"})
    with pytest.raises(SettingsError, match="^context_turns: .*greater than 0"):
        load({"context_turns": -1})
    clean_env.setenv("CHANDLER_CONTEXT_TTL", "0")
    with pytest.raises(SettingsError, match="^CHANDLER_CONTEXT_TTL: .*greater than 0"):
        load({})
    clean_env.setenv("CHANDLER_CONTEXT_TTL", "30")
    clean_env.setenv("CHANDLER_BEST_OF", "0")
    with pytest.raises(SettingsError, match="^CHANDLER_BEST_OF: .*greater than 0"):
        load({"best_of": 2})


def test_serve_config_builds_the_application_through_the_typed_builder(clean_env):
    """serve/config.yaml's import path and args, called the way `serve run`/`serve deploy` call it:
    Serve validates `args` into the builder's `AppArgs` first, so a misspelt setting is refused."""
    import importlib

    import yaml
    from pydantic import ValidationError
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    from serve.launch import CONFIG

    config = yaml.safe_load(CONFIG.read_text())
    ServeDeploySchema.model_validate(config)  # what `serve deploy` and KubeRay accept
    (app,) = config["applications"]
    assert {d["name"] for d in app["deployments"]} == {"ChandlerModel", "ChatIngress"}
    module, _, name = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), name)
    assert type(call_user_app_builder_with_args_if_necessary(builder, app["args"])).__name__ == "Application"
    assert AppArgs.model_validate(app["args"]).max_new_tokens == app["args"]["max_new_tokens"]
    with pytest.raises(ValidationError, match="max_new_token"):
        call_user_app_builder_with_args_if_necessary(builder, {**app["args"], "max_new_token": 5})


async def test_a_slow_redis_cannot_hold_an_exchange_past_its_deadline(redis_db, redis_server):
    """The request timeout covers the commit: with Redis's writes paused (CLIENT PAUSE WRITE), the
    exchange answers at its deadline plus at most a second, unstored, and the store recovers."""
    import time

    from serve.api.exchange import Exchange

    store = RedisContext(redis_server.url, max_turns=10, ttl_s=60, timeout_s=30)
    exchange = Exchange(store)
    try:
        ticket, _ = await exchange.open("c-slow", time.monotonic() + 5)
        redis_db.execute_command("CLIENT", "PAUSE", 4000, "WRITE")
        started = time.monotonic()
        answer = {"reply": "Could this BE any slower?", "usage": {}, "source": {"kind": "generated"}}
        sent = await exchange.commit("c-slow", ticket, Commit((turn("user", "Joey", "hi"),)), answer, started + 0.5)
        assert sent == answer and time.monotonic() - started < 2.0
        redis_db.execute_command("CLIENT", "UNPAUSE")
    finally:
        await store.close()
