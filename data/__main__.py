"""`python -m data build ...`: see README."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data.transcripts import DataError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data", description="Build the Chandler dialogue dataset.")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="transcripts → (context, reply) pairs split by episode")
    build.add_argument("--transcripts", type=Path, required=True, help="TSV, Emory JSON season file(s) or character,q,a CSV")
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--character", default="Chandler Bing")
    build.add_argument("--context-turns", type=int, default=4)
    build.add_argument("--seed", type=int, default=0)
    negatives = commands.add_parser("negatives", help="other friends' lines and movie dialogue, split like the pairs")
    negatives.add_argument("--transcripts", type=Path, required=True, help="TSV or Emory JSON season file(s)")
    negatives.add_argument("--movies", type=Path, required=True, help="folder of movie subtitle .txt files")
    negatives.add_argument("--out", type=Path, required=True)
    negatives.add_argument("--character", default="Chandler Bing", help="the positive class, left out here")
    negatives.add_argument("--context-turns", type=int, default=4)
    negatives.add_argument("--seed", type=int, default=0, help="the seed given to `build`, for the same episode split")
    feedback = commands.add_parser("feedback", help="ratings collected by the backend → (context, reply, rating) JSONL")
    feedback.add_argument("--redis", required=True, help="the backend's Redis, e.g. redis://localhost:6379/0")
    feedback.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    args = parser.parse_args(argv)
    if getattr(args, "context_turns", 1) < 1:
        parser.error("--context-turns must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "build":
            from data.build import build

            stats = build(args.transcripts, args.out, args.character, args.context_turns, args.seed)
            print(json.dumps({"pairs": stats["pairs"], "episodes": stats["episodes"]}))
        elif args.command == "negatives":
            from data.negatives import build_negatives

            stats = build_negatives(args.transcripts, args.movies, args.out, args.character, args.context_turns, args.seed)
            print(json.dumps({"lines": stats["lines"], "episodes": stats["episodes"]}))
        elif args.command == "feedback":
            from data.feedback import export

            print(json.dumps({"rows": export(args.redis, args.out), "out": str(args.out)}))
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
