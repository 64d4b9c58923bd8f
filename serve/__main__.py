"""`python -m serve <command>`: the serving side's entry point.

    python -m serve chat                 talk to Chandler in the terminal
    python -m serve chat --message TEXT  one reply, then exit
    python -m serve up --host H --port P the Ray Serve backend alone (blocks)
    python -m serve run                  the backend, plus the Discord bot when DISCORD_TOKEN is set

Each command is a subparser whose `func(args) -> int` is the exit status.
"""
from __future__ import annotations

import argparse
import sys

from serve import chat, launch


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m serve", description="Chandler bot backend.")
    commands = main.add_subparsers(dest="command", required=True, metavar="command")

    chat_parser = commands.add_parser("chat", help="chat with Chandler in the terminal")
    chat.add_arguments(chat_parser)
    chat_parser.set_defaults(func=chat.run)

    for name, func, help_text in (
        ("up", launch.up, "start the Ray Serve backend (API + web chat) and block"),
        ("run", launch.run, "the backend, plus the Discord bot when DISCORD_TOKEN is set; Ctrl-C stops both"),
    ):
        launch_parser = commands.add_parser(name, help=help_text)
        launch.add_launch_arguments(launch_parser)
        launch_parser.set_defaults(func=func)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
