"""Load benchmark of the full stack: HTTP → Ray Serve ingress → batched model deployment → context store.

    python bench/serve_load.py                       # starts the stack here, writes bench/results/serve_load.{md,json,png}
    python bench/serve_load.py --url http://HOST:8000 --api-key KEY   # against a running stack

For 1, 4, 16 and 32 concurrent clients, each client sends POST /v1/chat (a fresh channel per
request, so every prompt is one opening line as in the engine benchmark, while the context store
is still read and written) back to back for a fixed time; clients stop sending at the end of the
window and the requests in flight are waited for. Reported: completion tokens per second (tokens
the replies really got, over the time until the last reply) and p50/p95 latency.

Beside them, in the same run on the same machine and with the same torch threads and sampling:
the engine's raw batched generation (16 conversations per `generate` call, no HTTP, no
Ray), and one-request-at-a-time serving — a threaded HTTP server that runs `generate` for one
request at a time under a lock, as the original project's Flask app did — under 16 clients.
A benchmark, not a test: the numbers depend on what else the machine is running.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
from engine import OPENERS  # noqa: E402  (bench/engine.py: the same opening lines)

RESULTS = ROOT / "bench" / "results"


async def load(url: str, clients: int, seconds: float, api_key: str | None) -> dict:
    """`clients` clients posting back to back for `seconds`; tokens/s and latency percentiles."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    latencies: list[float] = []
    tokens = errors = 0
    start = time.perf_counter()
    stop_at = start + seconds

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens, errors
        n = index
        while time.perf_counter() < stop_at:
            name, text = OPENERS[n % len(OPENERS)]
            n += clients
            body = {"channel_id": f"bench-{uuid.uuid4().hex[:12]}", "user": {"id": str(index), "name": name}, "message": text}
            sent = time.perf_counter()
            response = await http.post(f"{url}/v1/chat", json=body)
            if response.status_code != 200:
                errors += 1
                await asyncio.sleep(0.5)
                continue
            latencies.append(time.perf_counter() - sent)
            tokens += response.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, headers=headers, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    elapsed = time.perf_counter() - start
    return summary(clients, tokens, elapsed, latencies, errors)


def summary(clients: int, tokens: int, elapsed: float, latencies: list[float], errors: int = 0) -> dict:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan")
    return {"clients": clients, "requests": len(latencies), "errors": errors, "completion_tokens": tokens,
            "seconds": round(elapsed, 1), "tok_per_s": round(tokens / elapsed, 1),
            "p50_s": round(statistics.median(ordered), 2) if ordered else None, "p95_s": round(p95, 2) if ordered else None}


def raw_batch(engine, sampling, batch: int, seconds: float) -> dict:
    """The engine alone: `batch` conversations per generate call, back to back."""
    conversations = [[{"speaker": n, "text": t}] for n, t in (OPENERS * (batch // len(OPENERS) + 1))[:batch]]
    engine.generate(conversations[:2], sampling)  # warm-up
    tokens, latencies, start = 0, [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        sent = time.perf_counter()
        tokens += sum(r.completion_tokens for r in engine.generate(conversations, sampling))
        latencies.append(time.perf_counter() - sent)
    return summary(batch, tokens, time.perf_counter() - start, latencies)


def one_at_a_time_server(engine, sampling) -> ThreadingHTTPServer:
    """POST /v1/chat answered by `engine.generate` on one conversation at a time (a lock)."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            turns = [{"speaker": body["user"]["name"].split()[0], "text": body["message"]}]
            with lock:
                reply = engine.generate([turns], sampling)[0]
            data = json.dumps({"reply": reply.text, "usage": {"prompt_tokens": reply.prompt_tokens,
                                                               "completion_tokens": reply.completion_tokens}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the default listen backlog (5) resets clients queued behind the lock

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_stack(port: int, max_new_tokens: int, threads: int, adapter: str, batch_wait: float | None, engine: str) -> str:
    import ray

    from serve.launch import start

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("CHANDLER_API_KEY", None)
    ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    overrides = {"max_new_tokens": max_new_tokens, "torch_threads": threads, "request_timeout_s": 600, "adapter": adapter, "engine": engine}
    return start("127.0.0.1", port, overrides=overrides, deployment_overrides=batching(batch_wait)).rstrip("/")


def batching(batch_wait: float | None) -> dict:
    """Deployment options replacing serve/config.yaml's batch wait, if asked for."""
    if batch_wait is None:
        return {}
    from serve.launch import application_config

    (model,) = [d for d in application_config()["deployments"] if d["name"] == "ChandlerModel"]
    return {"ChandlerModel": {"user_config": {**model.get("user_config", {}), "batch_wait_timeout_s": batch_wait}}}


def batch_counts(url: str, api_key: str | None) -> tuple[int, int] | None:
    """(batches, requests batched) so far by the stack's model replica, from /readyz."""
    try:
        model = httpx.get(f"{url}/readyz", timeout=60).json()["model"]
        return model["batches"], model["batched_requests"]
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return None


def table(rows: list[dict], raw: dict, single: dict) -> str:
    lines = ["| serving | clients | requests | mean batch | completion tok/s | p50 latency (s) | p95 latency (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, row in [*(("full stack (Ray Serve, batched)", r) for r in rows), ("one request at a time (HTTP + lock)", single)]:
        lines.append(f"| {label} | {row['clients']} | {row['requests']} | {row.get('mean_batch', 1 if row is single else '?')} "
                     f"| {row['tok_per_s']} | {row['p50_s']} | {row['p95_s']} |")
    lines.append(f"| engine alone, one batch of {raw['clients']} per call | — | {raw['requests']} calls | {raw['clients']} "
                 f"| {raw['tok_per_s']} | {raw['p50_s']} per call | {raw['p95_s']} per call |")
    return "\n".join(lines)


def plot(rows: list[dict], raw: dict, single: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = [r["clients"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(clients, [r["tok_per_s"] for r in rows], "o-", label="full stack (Ray Serve, batched)")
    left.axhline(raw["tok_per_s"], color="tab:green", linestyle="--", label=f"engine alone, batch {raw['clients']}")
    left.axhline(0.8 * raw["tok_per_s"], color="tab:green", linestyle=":", label="80% of that (goal at 16 clients)")
    left.plot([single["clients"]], [single["tok_per_s"]], "s", color="tab:red", label="one request at a time")
    left.set(xscale="log", xticks=clients, xticklabels=[str(c) for c in clients], xlabel="concurrent clients",
             ylabel="completion tokens / s", title="Throughput")
    left.legend(fontsize=8)
    right.plot(clients, [r["p50_s"] for r in rows], "o-", label="p50")
    right.plot(clients, [r["p95_s"] for r in rows], "o--", label="p95")
    right.plot([single["clients"]] * 2, [single["p50_s"], single["p95_s"]], "s", color="tab:red", label="one at a time (p50, p95)")
    right.set(xscale="log", xticks=clients, xticklabels=[str(c) for c in clients], xlabel="concurrent clients",
              ylabel="seconds", title="Latency per request")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running stack (default: start one here)")
    parser.add_argument("--api-key", default=os.environ.get("CHANDLER_API_KEY"))
    parser.add_argument("--clients", default="1,4,16,32", help="concurrency levels (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=30, help="sending window per level (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="(default: %(default)s, as in bench/engine.py)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch (or CTranslate2) threads everywhere (default: all cores)")
    parser.add_argument("--engine", default="auto", choices=("auto", "torch", "ct2"), help="the engine everywhere (default: %(default)s)")
    parser.add_argument("--batch-wait", type=float, default=None, help="replace the config's batch_wait_timeout_s (local stack only)")
    parser.add_argument("--note", default="", help="a line about the conditions, added to the report")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    from serve.engine import Sampling, load_engine, resolve_adapter

    torch.set_num_threads(args.threads)
    adapter = str(resolve_adapter("default", "embedded") or "none")  # the same adapter for every path
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    url = args.url or start_stack(args.port, args.max_new_tokens, args.threads, adapter, args.batch_wait, args.engine)
    levels = [int(c) for c in args.clients.split(",")]
    asyncio.run(load(url, 2, 5, args.api_key))  # warm-up
    rows = []
    for clients in levels:
        before = batch_counts(url, args.api_key)
        rows.append(asyncio.run(load(url, clients, args.seconds, args.api_key)))
        after = batch_counts(url, args.api_key)
        if before and after and after[0] > before[0]:
            rows[-1]["mean_batch"] = round((after[1] - before[1]) / (after[0] - before[0]), 1)
        print(rows[-1], flush=True)

    if not args.url:  # the stack's model sits idle from here on
        from ray import serve

        serve.shutdown()
    engine = load_engine(args.engine, adapter=adapter, device="cpu", threads=args.threads)
    raw = raw_batch(engine, sampling, 16, args.seconds)
    print("raw", raw, flush=True)
    server = one_at_a_time_server(engine, sampling)
    single_url = f"http://127.0.0.1:{server.server_address[1]}"
    single = asyncio.run(load(single_url, 16, args.seconds, None))
    server.shutdown()
    print("one at a time", single, flush=True)

    at16 = next((r for r in rows if r["clients"] == 16), None)
    ratios = {}
    if at16:
        ratios = {"stack16_vs_raw_batch16": round(at16["tok_per_s"] / raw["tok_per_s"], 2),
                  "stack16_vs_one_at_a_time": round(at16["tok_per_s"] / single["tok_per_s"], 1)}
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, {type(engine).__name__} (--engine {args.engine}), torch {torch.__version__}, {args.threads} threads, "
               f"adapter {Path(adapter).name}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = "\n".join([
        f"Serving load, {args.seconds:g} s per level, {args.max_new_tokens} new tokens max, sampled (T=0.8); {machine}"
        + (f"; batch_wait_timeout_s {args.batch_wait:g}" if args.batch_wait is not None else "") + ".",
        "",
        table(rows, raw, single),
        "",
        *(f"- {name.replace('_', ' ')}: {value}×" for name, value in ratios.items()),
        *([f"- {args.note}"] if args.note else []),
    ])
    (args.out / "serve_load.md").write_text(report + "\n")
    (args.out / "serve_load.json").write_text(json.dumps({"machine": machine, "seconds": args.seconds,
        "max_new_tokens": args.max_new_tokens, "stack": rows, "raw_batch": raw, "one_at_a_time": single, "ratios": ratios}, indent=2) + "\n")
    plot(rows, raw, single, args.out / "serve_load.png")
    print(report)
    if not args.url:
        import ray

        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
