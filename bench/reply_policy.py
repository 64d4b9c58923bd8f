"""Latency that the reply policy adds: one conversation at a time, generate vs quote vs blend,
quote and blend with the LM rerank off (`CHANDLER_RERANK=off`), and blend with an LLM picker that
reads 5 or 20 lines (`CHANDLER_PICKER_LINES`; its API a stand-in on loopback that answers at once,
so the figure is what the deeper pool costs here, not the picker model's own time).

    python bench/reply_policy.py [--repeats 3] [--max-new-tokens 40] [--threads 2]

Each mode answers the same everyday messages (one request each, as a single user would); the
time is the wall time of `serve.character.policy.respond`, engine included. Modes run interleaved
in one process so that a busy machine slows all of them alike.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

MESSAGES = ["How was work today?", "I think I'm going to ask her out tonight.", "My flight got cancelled."]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/reply_policy.json"))
    args = parser.parse_args()
    import torch

    from serve.character.picker import LlmPicker
    from serve.character.policy import MODES, ReplyPolicy, respond
    from serve.engine import Sampling, load_engine
    from train.chat_api import ChatApi

    torch.set_num_threads(args.threads)
    engine = load_engine()
    policies = {mode: ReplyPolicy(mode) for mode in MODES}
    policies.update({f"{mode}, rerank off": ReplyPolicy(mode, rerank=False) for mode in ("quote", "blend")})
    api = ChatApi(lambda body: (200, "1", 0.0))
    policies.update({f"blend, picker of {lines} lines": ReplyPolicy("blend", picker=LlmPicker(api.url, "stand-in", lines=lines))
                     for lines in (5, 20)})
    sampling = Sampling(max_new_tokens=args.max_new_tokens, seed=0)
    times: dict[str, list[float]] = {name: [] for name in policies}
    respond(engine, policies["blend"], [[{"speaker": "Alex", "text": "Hi!"}]], sampling)  # warm-up
    for _ in range(args.repeats):
        for message in MESSAGES:
            for name, policy in policies.items():
                started = time.perf_counter()
                respond(engine, policy, [[{"speaker": "Alex", "text": message}]], sampling)
                times[name].append(time.perf_counter() - started)
    api.close()
    result = {name: {"median_s": round(statistics.median(t), 3), "requests": len(t)} for name, t in times.items()}
    result["engine"] = type(engine).__name__
    result["max_new_tokens"] = args.max_new_tokens
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
