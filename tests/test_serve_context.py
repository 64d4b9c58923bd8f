"""The channel-context store (serve/api/context.py) against a real redis-server, and the settings."""
import asyncio
import json
import logging

import pytest
from conftest import free_port

from serve.api.context import KEY, MemoryContext, RedisContext, open_store, speaker, to_turns, turn
from serve.settings import Settings, SettingsError, load


async def test_append_trims_and_keeps_exchanges_whole(redis_db, redis_server):
    store = RedisContext(redis_server.url, max_turns=10, ttl_s=60)
    try:
        async def exchange(i: int) -> None:
            await store.append("c1", turn("user", "Joey", f"q{i}"), turn("assistant", "Chandler", f"a{i}"))

        await asyncio.gather(*(exchange(i) for i in range(50)))
        stored = await store.get("c1")
    finally:
        await store.close()
    assert len(stored) == 10 == redis_db.llen(KEY.format("c1"))
    for user, bot in zip(stored[::2], stored[1::2]):  # never a question without its answer
        assert user["role"] == "user" and bot["role"] == "assistant"
        assert user["text"][1:] == bot["text"][1:]
    assert set(stored[0]) == {"role", "name", "text", "ts"}


async def test_redis_ttl_expires_and_is_renewed(redis_db, redis_server):
    store = RedisContext(redis_server.url, max_turns=10, ttl_s=2)
    try:
        await store.append("c1", turn("user", "Ross", "hi"))
        await asyncio.sleep(1.2)
        await store.append("c1", turn("user", "Ross", "still there?"))  # renews the TTL
        await asyncio.sleep(1.2)
        assert [t["text"] for t in await store.get("c1")] == ["hi", "still there?"]
        assert 0 < redis_db.ttl(KEY.format("c1")) <= 2
        await asyncio.sleep(2.2)
        assert await store.get("c1") == []
        assert not redis_db.exists(KEY.format("c1"))
    finally:
        await store.close()


async def test_redis_clear_and_channel_isolation(redis_db, redis_server):
    store = RedisContext(redis_server.url, max_turns=10, ttl_s=60)
    try:
        await store.append("a", turn("user", "Monica", "clean"))
        await store.append("b", turn("user", "Rachel", "shop"))
        await store.clear("a")
        assert await store.get("a") == []
        assert [t["text"] for t in await store.get("b")] == ["shop"]
    finally:
        await store.close()


async def test_redis_malformed_turn_is_skipped(redis_db, redis_server):
    redis_db.rpush(KEY.format("c"), "not json", json.dumps(turn("user", "Phoebe", "smelly cat")))
    store = RedisContext(redis_server.url, max_turns=10, ttl_s=60)
    try:
        assert [t["text"] for t in await store.get("c")] == ["smelly cat"]
    finally:
        await store.close()


async def test_redis_down_raises_for_the_caller_to_handle():
    from redis.exceptions import ConnectionError

    store = RedisContext(f"redis://127.0.0.1:{free_port()}/0", 10, 60, timeout_s=0.5)  # nothing listens there
    try:
        with pytest.raises((ConnectionError, OSError)):
            await store.get("c")
    finally:
        await store.close()


async def test_memory_store_trims_expires_and_clears():
    store = MemoryContext(max_turns=3, ttl_s=1)
    await store.append("c", *(turn("user", "Joey", str(i)) for i in range(5)))
    assert [t["text"] for t in await store.get("c")] == ["2", "3", "4"]
    await store.append("d", turn("user", "Joey", "x"))
    await store.clear("d")
    assert await store.get("d") == []
    await asyncio.sleep(1.1)
    assert await store.get("c") == []


def test_open_store_announces_memory_mode(caplog):
    with caplog.at_level(logging.INFO, logger="ray.serve.chandler.context"):
        store = open_store(None, 20, 60)
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


def test_settings_precedence_and_errors():
    assert load({}, env={}) == Settings()
    assert load({"torch_threads": 0, "temperature": 0}, env={"CHANDLER_TORCH_THREADS": "0"}).torch_threads == 0
    assert load({"max_new_tokens": 6, "adapter": "none"}, env={}).max_new_tokens == 6
    env = {"CHANDLER_MAX_NEW_TOKENS": "9", "CHANDLER_API_KEY": "sekrit-key", "REDIS_URL": "redis://:pw@x"}
    s = load({"max_new_tokens": 6}, env=env)
    assert (s.max_new_tokens, s.api_key, s.redis_url) == (9, "sekrit-key", "redis://:pw@x")
    assert "sekrit" not in repr(s) and "pw@x" not in repr(s)  # secrets stay out of logs
    with pytest.raises(SettingsError):
        load({"api_key": "in the config file"}, env={})
    with pytest.raises(SettingsError):
        load({"context_turns": "many"}, env={})
    with pytest.raises(SettingsError, match="CHANDLER_CONTEXT_TTL"):
        load({}, env={"CHANDLER_CONTEXT_TTL": "0"})
    with pytest.raises(SettingsError, match="^context_turns"):
        load({"context_turns": -1}, env={})
    assert load({"best_of": 2}, env={"CHANDLER_BEST_OF": "4"}).best_of == 4
    with pytest.raises(SettingsError, match="^CHANDLER_BEST_OF must be positive"):
        load({}, env={"CHANDLER_BEST_OF": "0"})


def test_serve_config_builds_the_application():
    """serve/config.yaml's import path and args are what `serve run`/`serve deploy` will use."""
    import importlib

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from serve.launch import CONFIG

    config = yaml.safe_load(CONFIG.read_text())
    ServeDeploySchema.model_validate(config)  # what `serve deploy` and KubeRay accept
    (app,) = config["applications"]
    assert app["name"] == "chandler" and app["route_prefix"] == "/"
    module, _, name = app["import_path"].partition(":")
    built = getattr(importlib.import_module(module), name)(app["args"])
    assert {d["name"] for d in app["deployments"]} == {"ChandlerModel", "ChatIngress"}
    assert type(built).__name__ == "Application"
    assert load(app["args"], env={}).max_new_tokens == app["args"]["max_new_tokens"]
