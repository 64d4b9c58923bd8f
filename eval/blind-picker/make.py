"""The LLM picker's blind rounds: blend with a picker, against the shipped blend, on a fresh draw.

No model of a reader's strength runs here, so a reader (a fresh session) plays the picker's model.
Each draw has its folder, `draw<N>/`, with its own everyday messages (`everyday.txt`):

    python -m train blind make --draw 2 --everyday eval/blind-picker/draw2/everyday.txt --out eval/blind-picker/draw2/shipped
    python eval/blind-picker/make.py requests 2  # the picker's requests (its exact messages) → draw2/reader/items.jsonl
    # the reader writes draw2/reader/answers.jsonl, one {"id": "q000", "answer": "3"} per item
    python eval/blind-picker/make.py replay 2    # blend with the picker, its API answering with the reader's answers → draw2/picker/
    python eval/blind-picker/make.py joint 2     # both rounds' pairs in one file for one panel → draw2/pairs.jsonl, key.json
    python -m train blind score --out eval/blind-picker/draw2

`requests` and `replay` take the number of lines the picker reads (`--lines N`, default 5:
`reader/`, `picker/`; N others: `reader-top<N>/`, `picker-top<N>/`), and `joint` puts every picker
round of the draw in the panel's file beside the shipped one.

A real model can answer the same items instead of a reader: `ask` sends each item's messages to an
OpenAI-compatible API (the picker's own call) and writes its raw answers to `<name>[-top<N>]/`, and
`replay --answers <name>` makes the round from them (`picker-<name>[-top<N>]/`):

    python eval/blind-picker/make.py ask 6 --lines 20 --url http://localhost:8080/v1 --model qwen2.5-coder-1.5b --answers qwen
    python eval/blind-picker/make.py replay 6 --lines 20 --answers qwen

Both rounds share the cached generations and the rivals; only blend's line can differ. The policy,
the picker and its HTTP calls are the serving code's own (`train.blind.make_pairs` with an
`LlmPicker`); only the model behind the API is the reader, replayed by `train.chat_api.ChatApi`.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from serve.character.picker import LlmPicker
from train.blind import make_pairs, write_pairs
from train.chat_api import ChatApi
from train.panels import joint_pairs

HERE = Path(__file__).resolve().parent
MODEL = READER = "reader"  # the name the picker sends; the reader (or a model's recorded answers) stands behind it


def folders(draw: int, lines: int, answerer: str = READER) -> tuple[Path, Path]:
    """The answerer's folder (a reader's, or a model's that `ask` fills) and the picker round's,
    for a picker that reads `lines` lines."""
    suffix = "" if lines == 5 else f"-top{lines}"
    picker = "picker" if answerer == READER else f"picker-{answerer}"
    return HERE / f"draw{draw}" / f"{answerer}{suffix}", HERE / f"draw{draw}" / f"{picker}{suffix}"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def blend_with_picker(draw: int, lines: int, out: Path, answer) -> ChatApi:
    """`make_pairs` as `make` ran it for the draw's `shipped/`, with a picker of `lines` lines whose
    API gives `answer(body)`."""
    api = ChatApi(answer)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / f"draw{draw}" / "shipped" / "generations.json", out / "generations.json")
    everyday = (HERE / f"draw{draw}" / "everyday.txt").read_text(encoding="utf-8").splitlines()
    try:
        print(make_pairs(Path("build/chandler"), Path("models/chandler-selector"), Path("build/lines-without-test"), out,
                         draw=draw, everyday=everyday, picker=LlmPicker(api.url, MODEL, timeout_s=60, lines=lines)))
    finally:
        api.close()
    return api


def requests(draw: int, lines: int) -> None:
    reader, _ = folders(draw, lines)
    with tempfile.TemporaryDirectory() as scratch:
        api = blend_with_picker(draw, lines, Path(scratch), lambda body: (200, "1", 0.0))  # "1": the order as it was
    asked = sorted({body["messages"][1]["content"]: body["messages"][0]["content"] for _, body in api.requests}.items())
    reader.mkdir(exist_ok=True)
    with open(reader / "items.jsonl", "w", encoding="utf-8") as file:
        for number, (user, system) in enumerate(asked):
            file.write(json.dumps({"id": f"q{number:03d}", "system": system, "user": user}, ensure_ascii=False) + "\n")
    print({"items": len(asked), "out": str(reader / "items.jsonl")})


def ask(draw: int, lines: int, answerer: str, url: str, model: str) -> None:
    """The model at `url` answers the reader's items, as the picker asks it, one at a time."""
    reader, _ = folders(draw, lines)
    out, _ = folders(draw, lines, answerer)
    out.mkdir(exist_ok=True)
    asker = LlmPicker(url, model, timeout_s=600, lines=lines)
    with open(out / "answers.jsonl", "w", encoding="utf-8") as file:
        for item in read_jsonl(reader / "items.jsonl"):
            started = time.perf_counter()
            answer = asker.answer([{"role": "system", "content": item["system"]}, {"role": "user", "content": item["user"]}])
            row = {"id": item["id"], "answer": answer, "seconds": round(time.perf_counter() - started, 2)}
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
            file.flush()
            print(row, flush=True)


def replay(draw: int, lines: int, answerer: str) -> None:
    reader, _ = folders(draw, lines)
    answered, picker = folders(draw, lines, answerer)
    items = {row["id"]: row for row in read_jsonl(reader / "items.jsonl")}
    answers = {row["id"]: str(row["answer"]) for row in read_jsonl(answered / "answers.jsonl")}
    missing = sorted(set(items) - set(answers))
    if missing:
        sys.exit(f"error: {answered / 'answers.jsonl'}: no answer for {len(missing)} items ({', '.join(missing[:3])}...)")
    by_user = {items[i]["user"]: answer for i, answer in answers.items()}
    api = blend_with_picker(draw, lines, picker, lambda body: (200, by_user.get(body["messages"][1]["content"], ""), 0.0))
    unasked = sum(body["messages"][1]["content"] not in by_user for _, body in api.requests)
    if unasked:
        sys.exit(f"error: {unasked} of the picker's requests are not among the reader's items: run `requests` again")
    (picker / "generations.json").unlink()  # the same as shipped/'s


def joint(draw: int) -> None:
    folder = HERE / f"draw{draw}"
    rounds = {"shipped": folder / "shipped"} | {picker.name: picker for picker in sorted(folder.glob("picker*"))}
    write_pairs(folder, joint_pairs(rounds), random.Random(draw), "k")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The LLM picker's blind rounds (see the module's docstring).")
    parser.add_argument("step", choices=["requests", "ask", "replay", "joint"])
    parser.add_argument("draw", type=int)
    parser.add_argument("--lines", type=int, default=5, help="lines the picker reads (requests, ask, replay)")
    parser.add_argument("--answers", default=READER, help="whose answers: a reader's, or the name `ask` gave a model's")
    parser.add_argument("--url", help="ask: the model's OpenAI-compatible API")
    parser.add_argument("--model", help="ask: the model's name at that API")
    args = parser.parse_args()
    if args.step == "ask" and not (args.url and args.model and args.answers != READER):
        parser.error("ask needs --url, --model and --answers NAME (not 'reader')")
    if args.step == "joint":
        joint(args.draw)
    elif args.step == "requests":
        requests(args.draw, args.lines)
    elif args.step == "ask":
        ask(args.draw, args.lines, args.answers, args.url, args.model)
    else:
        replay(args.draw, args.lines, args.answers)
