"""Engine benchmark, side by side in one run: the torch engine against the ct2 engine (int8, float32)
on the embedded model with the shipped adapter.

    python bench/engine.py                 # prints markdown tables, writes bench/results/engine.json

Starts, each engine in a fresh process: from the cache; the first start (de-quantizing the GGUF and,
for ct2, merging and converting) in a throw-away cache folder; memory (the weights, and the process's
resident memory after the engine loaded and gave a first reply, less before). Then, all engines
loaded in one process and interleaved (size by size, repeat by repeat, so that load from elsewhere falls on all alike), tokens
per second for 1, 4 and 16 conversations in one `generate` call, 32 new tokens at most, sampled with
the serving defaults (no seed: a seed costs the ct2 engine a fresh generator), then greedy without
a repetition penalty (the same tokens from every engine: the same work). Tokens counted are
the tokens each reply really got (a reply may end earlier). The fastest of `--repeats` runs counts.
`ct2 int8 2x1` is the ct2 engine with two generator workers of one thread each, splitting a batch
in two. A benchmark, not a test: numbers depend on the machine and on what else it is running.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OPENERS = [
    ("Joey", "How you doin'?"), ("Monica", "Who ate the last cookie?"), ("Ross", "We were on a break!"),
    ("Rachel", "Do you think I should go to Paris?"), ("Phoebe", "Smelly cat, smelly cat, what are they feeding you?"),
    ("Joey", "Joey doesn't share food!"), ("Monica", "Can you help me plan the wedding?"), ("Ross", "Pivot! Pivot!"),
    ("Rachel", "I got a job at Ralph Lauren!"), ("Phoebe", "I'm going to have triplets."), ("Joey", "Is that a duck in the bathroom?"),
    ("Monica", "Why is the apartment such a mess?"), ("Ross", "I'm getting divorced. Again."), ("Rachel", "Is this the right coffee order?"),
    ("Phoebe", "Do you believe in ghosts?"), ("Joey", "What's your job again, exactly?"),
]
# name -> (engine, quantization, ct2 threads per worker (0: --threads), ct2 workers)
ENGINES = {
    "torch": ("torch", "none", 0, 1),
    "ct2 int8": ("ct2", "auto", 0, 1),
    "ct2 float32": ("ct2", "none", 0, 1),
    "ct2 int8 2x1": ("ct2", "auto", 1, 2),
}


def conversations(count: int) -> list[list[dict[str, str]]]:
    return [[{"speaker": name, "text": text}] for name, text in (OPENERS * (count // len(OPENERS) + 1))[:count]]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load(name: str, threads: int):
    import torch

    from serve.engine import load_engine

    kind, quantization, per_worker, workers = ENGINES[name]
    torch.set_num_threads(threads)
    if kind == "torch":
        return load_engine("torch", quantization=quantization, device="cpu")
    from serve.engine.ct2_engine import Ct2Engine

    return Ct2Engine(compute_type="int8" if quantization == "auto" else "float32", threads=per_worker or threads, inter_threads=workers)


def weights_mb(engine) -> int:
    """The model's weights: torch's parameters and buffers, or the CTranslate2 model file (loaded whole)."""
    if hasattr(engine, "model"):
        return round(engine.model.get_memory_footprint() / 2**20)
    return round((engine.folder / "model.bin").stat().st_size / 2**20)


def start_one(name: str, threads: int, first: bool) -> dict:
    """In a fresh process: the start from the cache, the memory it added to the process, and (with
    `first`) the first start in a throw-away cache folder."""
    import ctranslate2  # noqa: F401  (libraries imported before, so that the memory is the model's)
    import transformers  # noqa: F401

    import serve.engine.ct2_engine  # noqa: F401
    from serve.engine import Sampling

    before, started = rss_mb(), time.perf_counter()
    engine = load(name, threads)
    info = {"start_s": round(time.perf_counter() - started, 2), "weights_mb": weights_mb(engine)}
    engine.generate(conversations(1), Sampling(max_new_tokens=8))  # every weight read at least once
    info["memory_mb"] = round(rss_mb() - before)
    if first:
        with tempfile.TemporaryDirectory(prefix="chandler-cache-") as folder:
            os.environ["CHANDLER_CACHE_DIR"] = folder
            started = time.perf_counter()
            load(name, threads)
            info["first_start_s"] = round(time.perf_counter() - started, 1)
    return info


def decodings(new_tokens: int) -> dict:
    """Sampled with the serving defaults (what users get; the engines' replies differ in length,
    see the README), and greedy without a repetition penalty (the same tokens from every engine
    up to int8 rounding, so the same work)."""
    from serve.engine import Sampling

    return {"sampled": Sampling(max_new_tokens=new_tokens), "greedy": Sampling(temperature=0, repetition_penalty=1.0, max_new_tokens=new_tokens)}


def throughput(engines: dict, sizes: list[int], new_tokens: int, repeats: int) -> dict:
    """Tokens per second, engines interleaved (size by size, repeat by repeat) so that load from
    elsewhere on the machine falls on all of them alike; the fastest repeat counts."""
    from serve.engine import Sampling

    for engine in engines.values():
        engine.generate(conversations(2), Sampling(max_new_tokens=4))  # warm-up
    best: dict = {name: {} for name in engines}
    for decoding, sampling in decodings(new_tokens).items():
        for size in sizes:
            for _ in range(repeats):
                for name, engine in engines.items():
                    started = time.perf_counter()
                    replies = engine.generate(conversations(size), sampling)
                    seconds = time.perf_counter() - started
                    tokens = sum(reply.completion_tokens for reply in replies)
                    row = {"decoding": decoding, "conversations": size, "new_tokens": tokens, "seconds": round(seconds, 2),
                           "tokens_per_s": round(tokens / seconds, 1)}
                    if (decoding, size) not in best[name] or row["tokens_per_s"] > best[name][decoding, size]["tokens_per_s"]:
                        best[name][decoding, size] = row
                    print(f"  {name}: {row}", file=sys.stderr, flush=True)
    return {name: list(rows.values()) for name, rows in best.items()}


def table(results: dict) -> str:
    runs = results["engines"]
    torch_rate = {(row["decoding"], row["conversations"]): row["tokens_per_s"] for row in runs[0]["generation"]}
    lines = ["| decoding | engine | conversations at once | new tokens | seconds | tokens/s | × torch |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for decoding in decodings(1):
        for run in runs:
            for row in (r for r in run["generation"] if r["decoding"] == decoding):
                ratio = row["tokens_per_s"] / torch_rate[decoding, row["conversations"]]
                lines.append(f"| {decoding} | {run['engine']} | {row['conversations']} | {row['new_tokens']} | {row['seconds']} "
                             f"| {row['tokens_per_s']} | {ratio:.1f} |")
    lines += ["", "| engine | start (cached) | first start (fresh cache) | weights | process memory after a first reply |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for run in runs:
        first = f"{run['first_start_s']} s" if "first_start_s" in run else "-"
        lines.append(f"| {run['engine']} | {run['start_s']} s | {first} | {run['weights_mb']} MB | {run['memory_mb']} MB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16], help="conversations at once (default: 1 4 16)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="threads per engine (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per size; the fastest counts (default: %(default)s)")
    parser.add_argument("--skip-first", action="store_true", help="do not measure first starts (de-quantizing, converting)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engine.json")
    parser.add_argument("--note", default="", help="free text saved with the results (e.g. what else ran)")
    parser.add_argument("--start", help=argparse.SUPPRESS)  # internal: measure this engine's starts, print JSON
    args = parser.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if args.start:
        print(json.dumps(start_one(args.start, args.threads, not args.skip_first)))
        return 0
    results: dict = {
        "machine": {"cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "platform": platform.platform()},
        "model": "embedded SmolLM2-135M-Instruct + the shipped adapter (torch: unmerged PEFT; ct2: merged, converted)",
        "threads": args.threads, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "note": args.note,
    }
    info = {}
    for name in args.engines:
        first = not args.skip_first and name in ("torch", "ct2 int8")  # the other ct2 rows: the same conversion
        command = [sys.executable, __file__, "--start", name, "--threads", str(args.threads)] + ([] if first else ["--skip-first"])
        info[name] = json.loads(subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1])
        print(f"  {name}: {info[name]}", file=sys.stderr, flush=True)
    engines = {name: load(name, args.threads) for name in args.engines}
    rates = throughput(engines, args.sizes, args.max_new_tokens, args.repeats)
    results["engines"] = [{"engine": name, **info[name], "generation": rates[name]} for name in args.engines]
    results["machine"]["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
