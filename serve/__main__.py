"""`python -m serve <command>`: the serving side's entry point.

    python -m serve chat                 talk to Chandler in the terminal
    python -m serve chat --message TEXT  one reply, then exit

Each command is a subparser whose `func(args) -> int` is the exit status.
"""
from __future__ import annotations

import argparse
import sys

from serve import chat


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m serve", description="Chandler bot backend.")
    commands = main.add_subparsers(dest="command", required=True, metavar="command")

    chat_parser = commands.add_parser("chat", help="chat with Chandler in the terminal")
    chat.add_arguments(chat_parser)
    chat_parser.set_defaults(func=chat.run)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
