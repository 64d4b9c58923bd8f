"""`python -m train blind`: replies for a blind comparison, and its scores.

`make`: 100 held-out test conversations (test episodes; the line index used here is built without
them, so Chandler's true line cannot be retrieved) and 30 everyday messages that are not from the
show. A later `draw` takes the next 100 test conversations of the same shuffle (no two draws share
one) and may bring its own everyday messages: a fresh round, for judges to check what was tuned on
the first. For each, the replies of: blend (the shipped reply policy), generate (one sampled
generation, as `reply_mode=generate` sends), naive quote (the Chandler line of 3+ words whose
untuned MiniLM embedding is closest to the last message) and, held-out only, Chandler's real line.
The pairs blend–generate, blend–naive, blend–real go to `pairs.jsonl` (fields id, context, A, B)
with the sides shuffled and no sources; which side is which goes to `key.json`.

`make-examples`: the same conversations, one generation with the index's top `EXAMPLES` lines for
the conversation shown to the generator as examples (in its system prompt) against the plain
generation that `make` compared (the first of its cached candidates); the key's `system` names the
side under test, and `copies` in `made.json` counts generations that repeat an example word for word.

`score`: reads `judgments.jsonl` (`{"id", "choice": "A" | "B" | "tie"}`) and writes the win rates
of the system under test (blend, or the key's `system`; its side is the key's `blend` field)
against each rival, with counts, to `results.json` and `results.md`.
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from data.dialogue import CHARACTER, PERSONA, Turn
from serve.character.lines import Line, LineIndex, normalized, said_in
from serve.character.picker import LlmPicker
from serve.character.policy import BLEND_GENERATIONS, ReplyPolicy
from serve.character.selector import last_message
from serve.character.style import embed
from train.examples import TrainDataError, read_split

log = logging.getLogger(__name__)
HELD_OUT = 100
EXAMPLES = 3  # retrieved lines shown to the generator by `make-examples`
SENDER = "Alex"  # who says the everyday messages
EVERYDAY = [
    "I went to the gym for the first time in a year.",
    "Tell me about your childhood Thanksgivings.",
    "My boss wants me to work this weekend again.",
    "I think I'm going to ask her out tonight.",
    "Do you want to get coffee later?",
    "I just got dumped.",
    "What do you actually do for a living?",
    "My parents are visiting next week and I'm terrified.",
    "I got the job!",
    "Can you help me move this Saturday?",
    "I'm thinking of getting a dog.",
    "Why are you always making jokes?",
    "I burned dinner again.",
    "Do you believe in love at first sight?",
    "My flight got cancelled.",
    "What's the worst date you've ever been on?",
    "I'm so bored at work today.",
    "Are you ever serious about anything?",
    "I ran into my ex at the supermarket.",
    "Should I dye my hair blue?",
    "We're getting married!",
    "I can't sleep, it's 3 am.",
    "My roommate ate my leftovers again.",
    "How do I look in this outfit?",
    "I think I'm getting sick.",
    "Tell me a secret.",
    "I'm quitting my job to become a musician.",
    "Do you like kids?",
    "The new neighbours are really loud.",
    "What are you doing this weekend?",
]


def blind_conversations(data: Path, seed: int = 0, draw: int = 0, everyday: Sequence[str] = EVERYDAY) -> list[dict]:
    """The `draw`-th hundred held-out conversations (someone else speaks last) of one seeded shuffle,
    then the everyday ones, in a fixed order."""
    test = [record for record in read_split(data, "test") if record["context"][-1]["speaker"] != CHARACTER]
    held_out = random.Random(seed).sample(test, len(test))[draw * HELD_OUT : (draw + 1) * HELD_OUT]
    if draw < 0 or len(held_out) < HELD_OUT:
        raise TrainDataError(f"{data}: {len(test)} test conversations hold no draw {draw} of {HELD_OUT}")
    conversations = [{"kind": "held-out", "turns": r["context"], "real": r["reply"],
                      "season": r["season"], "episode": r["episode"]} for r in held_out]
    conversations += [{"kind": "everyday", "turns": [{"speaker": SENDER, "text": text}]} for text in everyday]
    return conversations


def read_everyday(path: Path) -> list[str]:
    """Everyday messages, one per line of a text file."""
    try:
        messages = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise TrainDataError(f"{path}: no readable everyday messages ({error})") from None
    if not messages:
        raise TrainDataError(f"{path}: no everyday messages (one per line)")
    return messages


def generations(conversations: list[dict], n: int, max_new_tokens: int, cache: Path, seed: int = 0) -> list[list[str]]:
    """n sampled generations per conversation from the shipped engine (cached: they take a while on CPU)."""
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached["n"] == n and len(cached["replies"]) == len(conversations):
            return cached["replies"]
    from serve.engine import Engine, Sampling

    engine = Engine(device="cpu")
    sampling = replace(Sampling(), max_new_tokens=max_new_tokens, seed=seed)
    replies: list[list[str]] = []
    for start in range(0, len(conversations), 4):
        batch = [c["turns"] for c in conversations[start : start + 4]]
        flat = engine.generate([turns for turns in batch for _ in range(n)], sampling)
        replies += [[reply.text for reply in flat[i * n : (i + 1) * n]] for i in range(len(batch))]
        log.info("generated for %d of %d conversations", len(replies), len(conversations))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"n": n, "replies": replies}, indent=1) + "\n")
    return replies


def context_lines(turns: list[Turn]) -> list[str]:
    return [f"{turn['speaker']}: {turn['text']}" for turn in turns]


def naive_quotes(index: LineIndex, conversations: list[list[Turn]]) -> list[Line]:
    """The baseline: the line of 3+ words closest to the last message by untuned MiniLM cosine."""
    scores = embed([last_message(turns) for turns in conversations]) @ index.vectors.message.T
    quotes = []
    for row, turns in zip(scores, conversations):
        said = said_in(turns)
        quotes.append(index.lines[next(i for i in np.argsort(-row) if index.quotable[i] and index.keys[i] not in said)])
    return quotes


def blind_pair(context: list[str], system_text: str, rival_text: str, rng: random.Random, key: dict) -> dict:
    """One pair, its sides drawn at random; its key says which side is the system under test (`blend`)."""
    first = rng.random() < 0.5
    return {"context": context, "A": system_text if first else rival_text, "B": rival_text if first else system_text,
            "key": {**key, "blend": "A" if first else "B", "identical": normalized(system_text) == normalized(rival_text)}}


def write_pairs(out: Path, pairs: list[dict], rng: random.Random, prefix: str) -> None:
    """`pairs.jsonl` for the judges, shuffled and without sources, and `key.json` beside it."""
    rng.shuffle(pairs)
    out.mkdir(parents=True, exist_ok=True)
    key = {}
    with open(out / "pairs.jsonl", "w", encoding="utf-8") as file:
        for number, pair in enumerate(pairs):
            pair_id = f"{prefix}{number:03d}"
            key[pair_id] = pair.pop("key")
            file.write(json.dumps({"id": pair_id, **pair}, ensure_ascii=False) + "\n")
    (out / "key.json").write_text(json.dumps(key, indent=1) + "\n")


def round_pairs(folder: Path) -> list[tuple[str, dict]]:
    """A blind round's pairs by id, each with its key entry under `key` (as `write_pairs` takes them)."""
    try:
        key = json.loads((folder / "key.json").read_text(encoding="utf-8"))
        rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    except (OSError, ValueError) as error:
        raise TrainDataError(f"{folder}: no readable blind round ({error}); run `python -m train blind make`") from None
    return [(row["id"], {"context": row["context"], "A": row["A"], "B": row["B"], "key": key[row["id"]]}) for row in rows]


def check_held_out(index: LineIndex, conversations: list[dict], splits: str = "train validation") -> None:
    """The index holds none of the held-out conversations' episodes (`splits`: what to index instead)."""
    indexed = {(line.season, line.episode) for line in index.lines}
    leaked = {(c["season"], c["episode"]) for c in conversations if c["kind"] == "held-out"} & indexed
    if leaked:
        raise TrainDataError(f"{index.folder}: the index holds held-out episodes {sorted(leaked)[:3]}...; "
                             f"build it with `python -m train lines --splits {splits}`")


def make_pairs(data: Path, selector: Path, lines: Path, out: Path, n: int = BLEND_GENERATIONS,
               max_new_tokens: int = 40, seed: int = 0, draw: int = 0, everyday: Sequence[str] = EVERYDAY,
               picker: LlmPicker | None = None) -> dict:
    from serve.engine import load_engine

    conversations = blind_conversations(data, seed, draw, everyday)
    generated = generations(conversations, n, max_new_tokens, out / "generations.json", seed)
    policy = ReplyPolicy("blend", selector, lines, picker=picker)
    check_held_out(policy.index, conversations)
    engine = load_engine() if policy.rerank else None  # the serving engine's LM reranks the lines
    rng = random.Random(seed)
    pairs, examples = [], []
    started = time.perf_counter()
    blends = policy.choose([c["turns"] for c in conversations], generated, engine)
    choose_ms = 1000 * (time.perf_counter() - started) / len(conversations)
    naives = naive_quotes(policy.index, [c["turns"] for c in conversations])
    for number, (conversation, candidates, blend, naive) in enumerate(zip(conversations, generated, blends, naives)):
        turns = conversation["turns"]
        rivals = {"generate": candidates[0], "naive quote": naive.text}
        if conversation["kind"] == "held-out":
            rivals["real line"] = conversation["real"]
        examples.append({"kind": conversation["kind"], "context": context_lines(turns), "blend": blend.text,
                         "blend_source": blend.source, **rivals})
        for rival, text in rivals.items():
            pairs.append(blind_pair(context_lines(turns), blend.text, text, rng, {
                "conversation": number, "kind": conversation["kind"], "rival": rival, "blend_source": blend.source["kind"]}))
    write_pairs(out, pairs, rng, "p")
    (out / "examples.json").write_text(json.dumps(examples, indent=1, ensure_ascii=False) + "\n")
    write_examples(out, examples)
    quotes = sum(e["blend_source"]["kind"] == "quote" for e in examples)
    summary = {"pairs": len(pairs), "conversations": len(conversations), "blend_quotes": quotes,
               "blend_generated": len(examples) - quotes, "policy_choose_ms_per_conversation_batched": round(choose_ms, 1),
               "generations_per_conversation": n, **({"picker": picker.model, "picker_lines": picker.lines} if picker else {})}
    (out / "made.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def examples_persona(lines: list[Line]) -> str:
    return PERSONA + " Lines you have said in situations like this:\n" + "\n".join(f"- {line.text}" for line in lines)


def example_generations(conversations: list[list[Turn]], shown: list[list[Line]], max_new_tokens: int,
                        seed: int = 0) -> list[str]:
    """One sampled generation per conversation, the lines `shown` for it in the system prompt."""
    from serve.engine import Engine, Sampling

    engine = Engine(device="cpu")
    sampling = replace(Sampling(), max_new_tokens=max_new_tokens, seed=seed)
    replies = []
    for conversation, lines in zip(conversations, shown):
        engine.persona = examples_persona(lines)  # one conversation per call: the persona is the engine's
        replies.append(engine.generate([conversation], sampling)[0].text)
    return replies


def make_example_pairs(data: Path, selector: Path, lines: Path, out: Path, plain: Path,
                       max_new_tokens: int = 40, seed: int = 0) -> dict:
    """Pairs of generate-with-examples vs plain generate (`plain`: the `generations.json` of `make`)."""
    if not plain.is_file():
        raise TrainDataError(f"{plain}: no cached generations; run `python -m train blind make` first")
    conversations = blind_conversations(data, seed)
    generated = [group[0] for group in json.loads(plain.read_text())["replies"]]
    policy = ReplyPolicy("quote", selector, lines)
    check_held_out(policy.index, conversations)
    turns = [c["turns"] for c in conversations]
    shown = policy.index.top(policy.selector.conversations(turns), EXAMPLES, turns)
    with_examples = example_generations(turns, shown, max_new_tokens, seed)
    rng = random.Random(seed)
    pairs = [blind_pair(context_lines(conversation["turns"]), text, plain_text, rng, {
                 "conversation": number, "kind": conversation["kind"], "rival": "generate", "system": "generate with examples"})
             for number, (conversation, plain_text, text) in enumerate(zip(conversations, generated, with_examples))]
    write_pairs(out, pairs, rng, "e")
    (out / "generations.json").write_text(json.dumps({"examples": [[line.text for line in lines] for lines in shown],
                                                      "replies": with_examples}, indent=1, ensure_ascii=False) + "\n")
    copies = sum(normalized(text) in {normalized(line.text) for line in lines} for text, lines in zip(with_examples, shown))
    summary = {"pairs": len(pairs), "examples_per_conversation": EXAMPLES, "copies": copies}
    (out / "made.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def write_examples(out: Path, examples: list[dict], per_kind: int = 10) -> None:
    """`examples.md`: the first `per_kind` held-out and everyday conversations (fixed order, not picked)."""
    blocks = []
    for kind in ("held-out", "everyday"):
        for example in [e for e in examples if e["kind"] == kind][:per_kind]:
            source = example["blend_source"]
            tag = f" (quote, S{source['season']}E{source['episode']})" if source["kind"] == "quote" else " (generated)"
            rows = [f"> {line}" for line in example["context"][-3:]]
            rows += [f"- **blend**{tag}: {example['blend']}", f"- generate: {example['generate']}",
                     f"- naive quote: {example['naive quote']}"]
            if "real line" in example:
                rows.append(f"- real line: {example['real line']}")
            blocks.append(f"**{kind}**\n\n" + "\n".join(rows))
    (out / "examples.md").write_text("# Blind comparison: 20 examples\n\n" + "\n\n".join(blocks) + "\n")


def score(out: Path) -> dict:
    """Win rates of blend against each rival from `judgments.jsonl` (several judges may judge one id)."""
    key = json.loads((out / "key.json").read_text())
    tallies: dict[str, dict[str, int]] = {}
    with open(out / "judgments.jsonl", encoding="utf-8") as file:
        judgments = [json.loads(line) for line in file if line.strip()]
    for judgment in judgments:
        entry = key.get(judgment.get("id"))
        if entry is None or judgment.get("choice") not in ("A", "B", "tie"):
            raise TrainDataError(f"{out / 'judgments.jsonl'}: bad judgment {judgment}")
        system = entry.get("system", "blend")
        outcome = "tie" if judgment["choice"] == "tie" else "win" if judgment["choice"] == entry["blend"] else "loss"
        for name in (f"{system} vs {entry['rival']} ({entry['kind']})", f"{system} vs {entry['rival']} (all)"):
            tally = tallies.setdefault(name, {"win": 0, "loss": 0, "tie": 0})
            tally[outcome] += 1
    results = {name: {**t, "judged": sum(t.values()), "win_rate": round(t["win"] / sum(t.values()), 3),
                      "win_rate_ties_half": round((t["win"] + 0.5 * t["tie"]) / sum(t.values()), 3)}
               for name, t in sorted(tallies.items())}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    rows = "\n".join(f"| {name} | {r['win']} | {r['loss']} | {r['tie']} | {r['win_rate']:.2f} | {r['win_rate_ties_half']:.2f} |"
                     for name, r in results.items())
    (out / "results.md").write_text("| comparison | wins | losses | ties | win rate | win rate (ties ½) |\n"
                                    "| --- | --- | --- | --- | --- | --- |\n" + rows + "\n")
    return results
