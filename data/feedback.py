"""Ratings collected by the backend (`POST /v1/feedback`) → JSONL rows to train on.

The backend keeps each rating in the Redis stream `chandler:feedback` (capped; see the README):
fields `context` (JSON: the `{speaker, text}` turns the reply answered), `reply`, `rating`
(1 or -1), `user` (an HMAC of the user id, or empty) and `ts`. Each exported row is
`{"context": [...], "reply": str, "rating": 1 | -1}`: the shape of data/pairs.py's pairs plus the rating.
"""
from __future__ import annotations

import json
from pathlib import Path

from data.transcripts import DataError

STREAM = "chandler:feedback"  # serve/api/redis_context.py writes it
BATCH = 1000


def rows(client, stream: str = STREAM):
    """The stream's well-formed entries as training rows, oldest first."""
    start = "-"
    while True:
        entries = client.xrange(stream, min=start, count=BATCH)
        for _, fields in entries:
            try:
                context = json.loads(fields["context"])
                rating = int(fields["rating"])
            except (KeyError, ValueError):
                continue
            if rating in (1, -1) and isinstance(context, list) and fields.get("reply"):
                yield {"context": context, "reply": fields["reply"], "rating": rating}
        if len(entries) < BATCH:
            return
        start = "(" + entries[-1][0]


def export(redis_url: str, out: Path) -> int:
    """Write every rating in Redis to `out` (JSONL); returns the number of rows."""
    import redis

    try:
        client = redis.Redis.from_url(redis_url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30)
        client.ping()
    except (ValueError, redis.RedisError) as error:
        raise DataError(f"cannot read feedback from {redis_url.split('@')[-1]}: {error}") from None
    count = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as file:
        for row in rows(client):
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
