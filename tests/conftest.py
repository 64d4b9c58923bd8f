"""Shared test set-up: offline Hugging Face, fixture paths."""
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


# -- the engine (serve/engine.py) ---------------------------------------------------------------
@pytest.fixture(scope="session")
def engine():
    """The real embedded model, no adapter (so replies do not change when one gets trained)."""
    from serve.engine import Engine

    return Engine(adapter=None, device="cpu")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A Hugging Face folder: a tiny random-weight Llama with the embedded model's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from serve.engine.loading import load_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = load_tokenizer("embedded")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_adapter(tiny_llama, tmp_path_factory) -> Path:
    """A LoRA adapter (PEFT format) made for `tiny_llama`, i.e. for another base than the embedded one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny-adapter")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(folder)
    return folder


# -- the Ray Serve backend (serve/app.py): a real redis-server and the real app ------------------
SERVE_API_KEY = "test-key-not-secret"
FEEDBACK_SALT = "test-salt-not-secret"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """`redis-server` on a loopback port, no persistence; stop() and start() keep the port."""

    def __init__(self, folder: Path) -> None:
        self.port, self.folder, self.process = free_port(), folder, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import shutil
        import subprocess
        import time

        import redis

        if not shutil.which("redis-server"):
            pytest.fail("redis-server is not on PATH (apt-get install -y redis-server)")
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.folder)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        pytest.fail("redis-server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, decode_responses=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_db(redis_server):
    """The session's Redis, running and empty."""
    if redis_server.process.poll() is not None:
        redis_server.start()
    client = redis_server.client()
    client.flushdb()
    return client


@pytest.fixture(scope="session")
def serve_app(redis_server):
    """Ray (2 CPUs) + the Serve app from serve/config.yaml with the real embedded model (no adapter,
    6 new tokens), two ingress replicas, Redis context, an API key, a feedback salt. Started once per session. Yields the base URL."""
    import ray
    from ray import serve

    from serve.launch import start

    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("CHANDLER_")]:
        del os.environ[name]  # the developer's own settings must not leak in
    os.environ.update(REDIS_URL=redis_server.url, CHANDLER_API_KEY=SERVE_API_KEY, CHANDLER_FEEDBACK_SALT=FEEDBACK_SALT,
                      RAY_USAGE_STATS_ENABLED="0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)  # replica logs stay in Ray's log files, out of other tests' captured output
    try:
        overrides = {"adapter": "none", "max_new_tokens": 6, "context_turns": 12, "context_ttl_s": 3600, "torch_threads": 1,
                     "request_timeout_s": 120, "reply_mode": "generate"}  # the policy's own tests: test_character_policy.py
        two_ingresses = {"ChatIngress": {"num_replicas": 2}}  # as on the cluster: channel state must live in Redis
        url = start("127.0.0.1", free_port(), overrides=overrides, deployment_overrides=two_ingresses)
        yield url.rstrip("/")
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
