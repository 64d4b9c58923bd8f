"""Best-of-n benchmark: what choosing the most Chandler-like of n sampled replies gains and costs.

    python bench/best_of.py                     # writes bench/results/best_of.{json,md}
    python bench/best_of.py --data build/chandler --n 1 2 4 8

For each n, one batched `Engine.generate` call answers the same requests (the bench/engine.py
openers, or the last turns of held-out test contexts with --data) with `Sampling(best_of=n)`,
fixed seed. Gain: mean P(Chandler) and relevance of the replies returned, scored by the shipped
style classifier. Cost: wall and CPU time of the call (the fastest of --repeats runs), and the
part spent scoring. A benchmark, not a test: times depend on the machine and on what else runs
on it; CPU time is the steadier figure on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.engine import conversations as openers  # noqa: E402
from serve.character.style import DEFAULT_STYLE_MODEL, StyleScorer  # noqa: E402
from serve.engine import Engine, Sampling  # noqa: E402


def held_out(data: Path, count: int) -> list[list[dict[str, str]]]:
    records = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()[:count]]
    return [record["context"] for record in records]


class TimedScorer:
    """The style scorer, with the time spent choosing added up."""

    def __init__(self, scorer: StyleScorer) -> None:
        self.scorer, self.seconds = scorer, 0.0

    def choose(self, messages, candidates):
        start = time.perf_counter()
        try:
            return self.scorer.choose(messages, candidates)
        finally:
            self.seconds += time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine(adapter=args.adapter, device="cpu")
    scorer = StyleScorer(args.style_model)
    judge = StyleScorer(args.judge) if args.judge else None
    timed = TimedScorer(scorer)
    engine.scorer = timed
    requests = held_out(args.data, args.requests) if args.data else openers(args.requests)
    messages = [turns[-1]["text"] for turns in requests]
    engine.generate(requests[:2], Sampling(max_new_tokens=4, seed=0, best_of=2))  # warm-up: loads the encoder
    rows = []
    for n in args.n:
        sampling = Sampling(max_new_tokens=args.max_new_tokens, seed=args.seed, best_of=n)
        runs = []
        for _ in range(args.repeats):  # the same seed: the same replies; the fastest run counts
            timed.seconds = 0.0
            wall, cpu = time.perf_counter(), time.process_time()
            replies = engine.generate(requests, sampling)
            runs.append((time.perf_counter() - wall, time.process_time() - cpu, timed.seconds))
        total, cpu, scoring = min(runs)
        texts = [reply.text for reply in replies]
        rows.append({
            "n": n,
            "batch_s": round(total, 2),
            "cpu_s": round(cpu, 2),
            "scoring_s": round(scoring, 2),
            "mean_p_chandler": round(float(np.mean(scorer.score(texts))), 4),
            "mean_relevance": round(float(np.mean(scorer.relevance(messages, texts))), 4),
            **({"judge_p_chandler": round(float(np.mean(judge.score(texts, messages))), 4)} if judge else {}),
            "sequences_generated": n * len(requests),
            "examples": [{"message": m, "reply": t} for m, t in list(zip(messages, texts))[:4]],
        })
        print(f"n={n}: {total:.1f} s, P(Chandler) {rows[-1]['mean_p_chandler']:.3f}", flush=True)
    base = rows[0]
    for row in rows:
        row["latency_x"] = round(row["batch_s"] / base["batch_s"], 2)
        row["cpu_x"] = round(row["cpu_s"] / base["cpu_s"], 2)
        row["p_chandler_gain"] = round(row["mean_p_chandler"] - base["mean_p_chandler"], 4)
        if judge:
            row["judge_gain"] = round(row["judge_p_chandler"] - base["judge_p_chandler"], 4)
    return {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "adapter": str(engine.adapter or "none"),
        "style_model": f"{args.style_model} ({scorer.kind})",
        "judge": f"{args.judge} ({judge.kind})" if judge else None,
        "requests": len(requests),
        "source": f"held-out contexts from {args.data}" if args.data else "bench/engine.py openers",
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        f"Best-of-n: {result['requests']} requests ({result['source']}) in one batch, "
        f"{result['max_new_tokens']} new tokens max, adapter {result['adapter']}, style model {result['style_model']}, "
        f"{result['machine']}.",
        "",
        "| n | wall time (s) | × n=1 | CPU time (s) | × n=1 | scoring, wall (s) | mean P(Chandler) | gain | mean relevance |"
        + (" judge's P(Chandler) | judge's gain |" if result["judge"] else ""),
        "| --- " * (11 if result["judge"] else 9) + "|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['n']} | {row['batch_s']} | {row['latency_x']} | {row['cpu_s']} | {row['cpu_x']} | {row['scoring_s']} | "
                     f"{row['mean_p_chandler']:.3f} | {row['p_chandler_gain']:+.3f} | {row['mean_relevance']:.3f} |"
                     + (f" {row['judge_p_chandler']:.3f} | {row['judge_gain']:+.3f} |" if result["judge"] else ""))
    if result["judge"]:
        lines += ["", f"Judge: {result['judge']}, a second classifier that does not take part in the choice: the "
                  "selecting classifier's own gain is optimistic, since it grades what it picked."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--data", type=Path, help="a `python -m data build` folder: use held-out contexts")
    parser.add_argument("--adapter", default="default")
    parser.add_argument("--style-model", type=Path, default=DEFAULT_STYLE_MODEL)
    parser.add_argument("--judge", type=Path, help="another style model folder to grade the chosen replies")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="runs per n; the fastest counts")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "best_of")
    args = parser.parse_args()
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
