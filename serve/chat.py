"""`python -m serve chat`: talk to the engine in a terminal.

Interactive by default (history kept, `/reset`, `/quit`, line editing); `--message TEXT` prints
one reply and exits. Bad input (missing adapter, adapter for another base model, a model that
cannot be had offline) gives one `error: ...` line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from data.dialogue import CHARACTER
from serve.character.policy import DEFAULT_MODE, MODES, ReplyPolicy, respond
from serve.character.selector import SelectorError
from serve.engine.loading import EMBEDDED, QUANTIZATIONS, ModelLoadError

HELP = "/reset forgets the conversation, /quit (or Ctrl-D) leaves."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from serve.engine import Sampling

    defaults = Sampling()
    parser.add_argument("--base-model", default=EMBEDDED, help="'embedded' (SmolLM2-135M in the package), a Hugging Face id or a folder (default: %(default)s)")
    parser.add_argument("--adapter", default="default", help="LoRA adapter folder, 'default' (the shipped one, if trained) or 'none' (default: %(default)s)")
    parser.add_argument("--engine", default=os.environ.get("CHANDLER_ENGINE", "auto"), choices=("auto", "torch", "ct2"),
                        help="auto = ct2 on CPU when the base converts, torch on CUDA (default: CHANDLER_ENGINE or %(default)s)")
    parser.add_argument("--quantization", default="auto", choices=QUANTIZATIONS, help="4bit = bitsandbytes NF4; auto = 4bit on CUDA only (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="(default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="0 = greedy (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="for reproducible replies")
    parser.add_argument("--best-of", type=int, default=defaults.best_of, help="sample N replies, show the most Chandler-like by the style classifier (default: %(default)s)")
    parser.add_argument("--reply-mode", choices=MODES, default=os.environ.get("CHANDLER_REPLY_MODE", DEFAULT_MODE),
                        help="generate, quote his real lines, or blend both by the selector (default: CHANDLER_REPLY_MODE or %(default)s)")
    parser.add_argument("--rerank", type=switch, default=os.environ.get("CHANDLER_RERANK", "on"), metavar="on|off",
                        help="rerank the selector's top lines with the LM (off: faster, slightly worse picks; default: CHANDLER_RERANK or on)")
    parser.add_argument("--name", default="Joey", help="your name in the conversation (default: %(default)s)")
    parser.add_argument("--message", help="print one reply to TEXT and exit")


def switch(text: str) -> bool:
    """on/off (also true/false, yes/no, 1/0), as the backend's settings read them."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(bool).validate_python(text)
    except ValidationError:
        raise argparse.ArgumentTypeError(f"{text!r}: use on or off") from None


def run(args: argparse.Namespace) -> int:
    from serve.engine import Sampling

    if args.max_new_tokens < 1:
        return _fail("--max-new-tokens must be at least 1")
    if args.temperature < 0:
        return _fail("--temperature must be 0 (greedy) or more")
    if args.message is not None and not args.message.strip():
        return _fail("--message is empty")
    if args.best_of < 1:
        return _fail("--best-of must be at least 1")
    from serve.character.picker import configured_picker
    from serve.character.style import StyleModelError, StyleScorer
    from serve.engine import load_engine
    from serve.settings import SettingsError, load

    _quiet()
    try:
        picker = configured_picker(load())  # CHANDLER_PICKER_URL, ... from the environment, as the backend reads them
        policy = ReplyPolicy(args.reply_mode, rerank=args.rerank, picker=picker)  # before the engine: a missing selector or index fails at once
        engine = load_engine(args.engine, args.base_model, args.adapter, args.quantization, args.device)
        if args.best_of > 1:
            engine.scorer = StyleScorer()  # loaded now, so that a missing classifier fails at start
    except (ModelLoadError, StyleModelError, SelectorError, SettingsError) as error:
        return _fail(str(error))
    sampling = Sampling(temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed, best_of=args.best_of)
    if args.message is not None:
        reply, source = respond(engine, policy, [[{"speaker": args.name, "text": args.message.strip()}]], sampling)[0]
        print(reply.text + quote_tag(source))
        return 0
    return chat_loop(engine, sampling, args.name, policy)


def quote_tag(source: dict) -> str:
    """`  [S3E5]` after a real line of the show, nothing after a generated one."""
    return f"  [S{source['season']}E{source['episode']}]" if source["kind"] == "quote" else ""


def chat_loop(engine, sampling, name: str, policy: ReplyPolicy) -> int:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    adapter = engine.adapter or "no adapter"
    print(f"Chatting with {CHARACTER} ({engine.base_model}, {adapter}, {engine.device}). {HELP}")
    turns: list[dict[str, str]] = []
    while True:
        try:
            line = input(f"{name}> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            turns.clear()
            print("(conversation forgotten)")
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}. {HELP}")
            continue
        turns.append({"speaker": name, "text": line})
        print(f"{CHARACTER}> ", end="", flush=True)
        pieces = []
        try:
            if policy.mode == "generate":
                for piece in engine.stream(turns, sampling):
                    pieces.append(piece)
                    print(piece, end="", flush=True)
            else:  # the policy needs whole candidates: the reply comes in one piece
                reply, source = respond(engine, policy, [turns], sampling)[0]
                pieces.append(reply.text)
                print(reply.text + quote_tag(source), end="", flush=True)
        except KeyboardInterrupt:
            pass
        print()
        turns.append({"speaker": CHARACTER, "text": "".join(pieces)})


def _quiet() -> None:
    """No progress bars or library deprecation notices in a terminal chat (the selector and the engine load quietly)."""
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _fail(message: str) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return 2
