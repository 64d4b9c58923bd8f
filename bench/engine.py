"""Engine benchmark: load times and generation throughput on the embedded model.

    python bench/engine.py                 # prints a markdown table, writes bench/results/engine.json

Load: the first start (GGUF de-quantized and cached as safetensors, in a throw-away cache folder)
against a start from the cache. Generation: tokens per second for 1, 4 and 16 conversations in
one batched `Engine.generate` call, fp32 and 4-bit (bitsandbytes NF4; fp32 compute on CPU),
32 new tokens each, sampled with a fixed seed. Tokens counted are the tokens each reply really
got (a reply may end before 32). A benchmark, not a test: numbers depend on the machine and on
what else it is running.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from serve.engine import Engine, Sampling  # noqa: E402

OPENERS = [
    ("Joey", "How you doin'?"), ("Monica", "Who ate the last cookie?"), ("Ross", "We were on a break!"),
    ("Rachel", "Do you think I should go to Paris?"), ("Phoebe", "Smelly cat, smelly cat, what are they feeding you?"),
    ("Joey", "Joey doesn't share food!"), ("Monica", "Can you help me plan the wedding?"), ("Ross", "Pivot! Pivot!"),
    ("Rachel", "I got a job at Ralph Lauren!"), ("Phoebe", "I'm going to have triplets."), ("Joey", "Is that a duck in the bathroom?"),
    ("Monica", "Why is the apartment such a mess?"), ("Ross", "I'm getting divorced. Again."), ("Rachel", "Is this the right coffee order?"),
    ("Phoebe", "Do you believe in ghosts?"), ("Joey", "What's your job again, exactly?"),
]


def conversations(count: int) -> list[list[dict[str, str]]]:
    return [[{"speaker": name, "text": text}] for name, text in (OPENERS * (count // len(OPENERS) + 1))[:count]]


def timed(make):
    start = time.perf_counter()
    result = make()
    return result, time.perf_counter() - start


def load_times() -> dict:
    """First start (de-quantize + cache) against a start from the cache, in a fresh cache folder."""
    saved = os.environ.get("CHANDLER_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="chandler-cache-") as folder:
        os.environ["CHANDLER_CACHE_DIR"] = folder
        try:
            _, first = timed(lambda: Engine(adapter=None, quantization="none", device="cpu"))
            _, cached = timed(lambda: Engine(adapter=None, quantization="none", device="cpu"))
        finally:
            os.environ.pop("CHANDLER_CACHE_DIR") if saved is None else os.environ.update(CHANDLER_CACHE_DIR=saved)
    return {"first_load_s": round(first, 1), "cached_load_s": round(cached, 1)}


def throughput(quantization: str, sizes: list[int], new_tokens: int) -> list[dict]:
    engine = Engine(adapter=None, quantization=quantization, device="cpu")
    memory_mb = engine.model.get_memory_footprint() / 2**20
    engine.generate(conversations(2), Sampling(max_new_tokens=4, seed=0))  # warm-up
    rows = []
    for size in sizes:
        replies, seconds = timed(lambda: engine.generate(conversations(size), Sampling(max_new_tokens=new_tokens, seed=0)))
        tokens = sum(reply.completion_tokens for reply in replies)
        rows.append({
            "quantization": "fp32" if quantization == "none" else "4-bit NF4",
            "conversations": size,
            "new_tokens": tokens,
            "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1),
            "memory_mb": round(memory_mb),
        })
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def table(results: dict) -> str:
    lines = [
        "| weights | conversations at once | new tokens | seconds | tokens/s | model memory |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results["generation"]:
        lines.append(
            f"| {row['quantization']} | {row['conversations']} | {row['new_tokens']} | {row['seconds']} "
            f"| {row['tokens_per_s']} | {row['memory_mb']} MB |"
        )
    if "load" in results:
        load = results["load"]
        lines += [
            "",
            "| start | seconds |",
            "| --- | ---: |",
            f"| first (GGUF de-quantized, cached as safetensors) | {load['first_load_s']} |",
            f"| later (from the safetensors cache) | {load['cached_load_s']} |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16], help="conversations at once (default: 1 4 16)")
    parser.add_argument("--quantizations", nargs="+", default=["none", "4bit"], choices=["none", "4bit"])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--skip-load", action="store_true", help="do not measure the first (de-quantizing) load")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engine.json")
    parser.add_argument("--note", default="", help="free text saved with the results (e.g. what else ran)")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    results: dict = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "model": "embedded SmolLM2-135M-Instruct, no adapter",
        "max_new_tokens": args.max_new_tokens,
        "note": args.note,
    }
    if not args.skip_load:
        print("measuring load times ...", file=sys.stderr, flush=True)
        results["load"] = load_times()
    results["generation"] = []
    for quantization in args.quantizations:
        print(f"generating, quantization={quantization} ...", file=sys.stderr, flush=True)
        results["generation"] += throughput(quantization, args.sizes, args.max_new_tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
