"""The LLM picker's blind round: blend with a picker, against the shipped blend, on draw 2.

No model of a reader's strength runs here, so a reader (a fresh session) plays the picker's model:

    python -m train blind make --draw 2 --everyday eval/blind-picker/everyday.txt --out eval/blind-picker/shipped
    python eval/blind-picker/make.py requests  # the picker's requests (its exact messages) → reader/items.jsonl
    # the reader writes reader/answers.jsonl, one {"id": "q000", "answer": "3"} per item
    python eval/blind-picker/make.py replay    # blend with the picker, its API answering with the reader's answers → picker/
    python eval/blind-picker/make.py joint     # both rounds' pairs in one file for one panel → pairs.jsonl, key.json
    python -m train blind score --out eval/blind-picker

Both rounds share the cached generations and the rivals; only blend's line can differ. The policy,
the picker and its HTTP calls are the serving code's own (`train.blind.make_pairs` with an
`LlmPicker`); only the model behind the API is the reader, replayed by `train.chat_api.ChatApi`.
"""
from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

from serve.character.picker import LlmPicker
from train.blind import make_pairs, write_pairs
from train.chat_api import ChatApi
from train.panels import joint_pairs

HERE = Path(__file__).resolve().parent
SHIPPED, PICKER, READER = HERE / "shipped", HERE / "picker", HERE / "reader"
MODEL = "reader"  # the name the picker sends; the reader stands behind it
SEED = 2


def blend_with_picker(out: Path, answer) -> ChatApi:
    """`make_pairs` as `make` ran it for `SHIPPED`, with a picker whose API gives `answer(body)`."""
    api = ChatApi(answer)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED / "generations.json", out / "generations.json")
    everyday = (HERE / "everyday.txt").read_text(encoding="utf-8").splitlines()
    try:
        print(make_pairs(Path("build/chandler"), Path("models/chandler-selector"), Path("build/lines-without-test"), out,
                         draw=2, everyday=everyday, picker=LlmPicker(api.url, MODEL, timeout_s=60)))
    finally:
        api.close()
    return api


def requests() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        api = blend_with_picker(Path(scratch), lambda body: (200, "1", 0.0))  # "1": the order as it was
    asked = sorted({body["messages"][1]["content"]: body["messages"][0]["content"] for _, body in api.requests}.items())
    READER.mkdir(exist_ok=True)
    with open(READER / "items.jsonl", "w", encoding="utf-8") as file:
        for number, (user, system) in enumerate(asked):
            file.write(json.dumps({"id": f"q{number:03d}", "system": system, "user": user}, ensure_ascii=False) + "\n")
    print({"items": len(asked), "out": str(READER / "items.jsonl")})


def replay() -> None:
    items = {row["id"]: row for row in map(json.loads, (READER / "items.jsonl").read_text(encoding="utf-8").splitlines())}
    answers = {row["id"]: str(row["answer"]) for row in map(json.loads, (READER / "answers.jsonl").read_text(encoding="utf-8").splitlines())}
    missing = sorted(set(items) - set(answers))
    if missing:
        sys.exit(f"error: {READER / 'answers.jsonl'}: no answer for {len(missing)} items ({', '.join(missing[:3])}...)")
    by_user = {items[i]["user"]: answer for i, answer in answers.items()}
    api = blend_with_picker(PICKER, lambda body: (200, by_user.get(body["messages"][1]["content"], ""), 0.0))
    unasked = sum(body["messages"][1]["content"] not in by_user for _, body in api.requests)
    if unasked:
        sys.exit(f"error: {unasked} of the picker's requests are not among the reader's items: run `requests` again")
    (PICKER / "generations.json").unlink()  # the same as SHIPPED's


def joint() -> None:
    write_pairs(HERE, joint_pairs({"shipped": SHIPPED, "picker": PICKER}), random.Random(SEED), "k")


if __name__ == "__main__":
    steps = {"requests": requests, "replay": replay, "joint": joint}
    if len(sys.argv) != 2 or sys.argv[1] not in steps:
        sys.exit(f"usage: make.py {' | '.join(steps)}")
    steps[sys.argv[1]]()
