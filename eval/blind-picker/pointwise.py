"""A pilot of another way to ask a small model: each of an item's lines alone ("is this a good reply
for Chandler here? Yes or No"), the line with the highest log-odds of "Yes" picked, on the third
readers' round (`eval/blind/probes/round3/readers`). The picker asks for a number among all the
lines at once, and small models answer that by position (README, "Check a model before it picks").

Needs llama-cpp-python (not in the project's environment; see README.md here for the model and
its install), and reads the model's logits directly, so it is not an API picker:

    llvenv/bin/python eval/blind-picker/pointwise.py qwen2.5-coder-1.5b-instruct.gguf eval/blind-picker/pointwise-qwen-coder-1.5b.jsonl

Prints how often the pick is the readers' line, and writes each item's log-odds.
"""
import json
import sys
from pathlib import Path

import numpy as np
from llama_cpp import Llama

READERS = Path(__file__).resolve().parents[1] / "blind" / "probes" / "round3" / "readers"
SYSTEM = ("Chandler Bing of the TV show Friends is in this conversation; the last turn is what he answers. "
          "Say whether the reply given is a good reply for Chandler here: in character for him and a good fit "
          "for the conversation. Answer Yes or No only.")
TURNS = 4  # what the picker sends


def log_odds(llm: Llama, turns: list[dict], options: list[str], yes: int, no: int) -> list[float]:
    """Yes-minus-No logit for each option after one shared prompt prefix (its KV cache reused)."""
    conversation = "\n".join(f"{turn['speaker']}: {turn['text']}" for turn in turns[-TURNS:])
    prefix = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nConversation:\n{conversation}\n\nChandler's reply:"
    llm.reset()
    llm.eval(llm.tokenize(prefix.encode(), add_bos=False, special=True))
    shared, scores = llm.n_tokens, []
    for option in options:
        llm.n_tokens = shared
        llm.eval(llm.tokenize(f" {option}<|im_end|>\n<|im_start|>assistant\n".encode(), add_bos=False, special=True))
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        scores.append(float(logits[yes] - logits[no]))
    return scores


def main(model: str, out: str) -> None:
    key = json.loads((READERS / "key.json").read_text(encoding="utf-8"))
    labels = {row["id"]: int(row["choice"]) - 1 for row in map(json.loads, (READERS / "labels.jsonl").read_text().splitlines())}
    llm = Llama(model, n_ctx=2048, n_threads=2, verbose=False)
    yes, no = (llm.tokenize(word, add_bos=False)[0] for word in (b"Yes", b"No"))
    rows = []
    for item_id, item in key.items():
        scores = log_odds(llm, item["turns"], item["options"], yes, no)
        rows.append({"id": item_id, "log_odds": [round(score, 3) for score in scores], "pick": int(np.argmax(scores))})
    hits = sum(row["pick"] == labels[row["id"]] for row in rows)
    Path(out).write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(json.dumps({"items": len(rows), "readers_line": round(hits / len(rows), 3),
                      "positions": {str(k + 1): sum(row["pick"] == k for row in rows) for k in range(5)}}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
