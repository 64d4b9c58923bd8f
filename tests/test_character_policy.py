"""The selector, the line index and the reply policy, on a quickly built selector (the untuned
encoder saved as one) and a handful of invented lines."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from serve.character.lines import Line, LineIndex, read_prompts, write_index
from serve.character.policy import ReplyPolicy, check_files, respond
from serve.character.preference import FEATURES, WEIGHTS, Preference
from serve.character.rerank import LmRerank
from serve.character.selector import SETTINGS, Selector, SelectorError, context_text
from train.blind import score
from train.examples import TrainDataError
from train.preferences import fit_preference, make_items
from train.ranking import distractor_draws, recall_at_1
from train.rerank import candidate_pools, lm_pairs, reranked_recall

LINES = [
    ("Oh, the gym. I pay them every month so my membership card stays warm.", "Have you been to the gym lately?", 1, 2),
    ("Thanksgiving at my house meant pie, tears and a divorce lawyer.", "What were your family holidays like?", 2, 3),
    ("I'm in data processing, and no, I don't know what that means either.", "What do you do for work?", 3, 5),
    ("A dog? I can barely keep a cactus alive.", "We should get a puppy.", 4, 1),
    ("Yeah.", "Is your job boring?", 4, 2),
    ("Ross is getting a dog? The dog should get a lawyer.", "Ross wants a dog too.", 4, 3),
]
JOB = [{"speaker": "Alex", "text": "So what is your job exactly?"}]


def make_selector(folder, nudge: float = 0.0, threshold: float = 0.5):
    """The untuned encoder saved as a selector (`nudge` changes its weights: another selector)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from serve.character.style import encoder_path
    from train.selector import SelectorConfig, save_fp16

    model = SentenceTransformer(str(encoder_path()), local_files_only=True, device="cpu")
    if nudge:
        with torch.no_grad():
            next(model.parameters()).add_(nudge)
    save_fp16(model, folder, SelectorConfig(data="fixture", out=str(folder), epochs=0), [], 0.0)
    set_settings(folder, message_weight=1.0, threshold=threshold)
    return folder


def set_settings(folder, **values) -> None:
    settings = json.loads((folder / SETTINGS).read_text())
    (folder / SETTINGS).write_text(json.dumps({**settings, **values}))


@pytest.fixture(scope="module")
def selector_folder(tmp_path_factory):
    return make_selector(tmp_path_factory.mktemp("selector"))


@pytest.fixture(scope="module")
def lines_folder(selector_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("lines")
    write_index(line_records(), Selector(selector_folder), out, prompts={})
    return out


def line_records():
    return [{"reply": reply, "context": [{"speaker": "Ross", "text": message}], "season": season, "episode": episode}
            for reply, message, season, episode in LINES]


def policy(mode, selector_folder, lines_folder, threshold, rerank=None, switch=True):
    """The fixtures' policy with the selector's own threshold and, when given, a fitted LM rerank."""
    set_settings(selector_folder, threshold=threshold, rerank=rerank or {})
    return ReplyPolicy(mode, selector_folder, lines_folder, rerank=switch)


def test_context_text_puts_the_newest_turn_first():
    turns = [{"speaker": name, "text": str(i)} for i, name in enumerate(["Ross", "Monica", "Joey", "Rachel", "Phoebe"])]
    assert context_text(turns) == "Phoebe: 4 | Rachel: 3 | Joey: 2 | Monica: 1"


def test_retrieval_finds_the_line_that_answers_and_skips_short_ones(selector_folder, lines_folder):
    selector = Selector(selector_folder)
    index = LineIndex(lines_folder, selector)
    gym_message = [{"speaker": "Alex", "text": "I finally went back to the gym today."}]
    top, gym = index.top(selector.conversations([JOB, gym_message]), k=10, conversations=[JOB, gym_message])
    assert top[0].text.startswith("I'm in data processing")
    assert (top[0].season, top[0].episode) == (3, 5)
    assert "Yeah." not in [line.text for line in top]  # under 3 words: never quoted
    assert [line.score for line in top] == sorted((line.score for line in top), reverse=True)
    assert "gym" in gym[0].text


def test_a_line_naming_someone_is_quoted_only_where_they_are(selector_folder, lines_folder):
    selector = Selector(selector_folder)
    index = LineIndex(lines_folder, selector)
    alone = [{"speaker": "Alex", "text": "Ross is getting a dog."}]
    with_ross = [{"speaker": "Ross", "text": "I'm getting a dog."}, {"speaker": "Monica", "text": "A dog!"}]
    strangers = [{"speaker": "Alex", "text": "My brother is getting a dog."}]
    to_ross = [{"speaker": "Ross", "text": "I'm getting a dog."}]  # not "Ross is getting a dog?" to Ross himself
    conversations = [alone, with_ross, strangers, to_ross]
    found = [[line.text for line in lines] for lines in index.top(selector.conversations(conversations), k=10, conversations=conversations)]
    named = "Ross is getting a dog? The dog should get a lawyer."
    assert named in found[0] and named in found[1]
    assert named not in found[2] and named not in found[3]
    assert "A dog? I can barely keep a cactus alive." in found[2] and "A dog? I can barely keep a cactus alive." in found[3]


def test_another_one_avoids_the_replaced_lines_and_their_near_copies(selector_folder, tmp_path):
    replies = ["Okay. I wanna quit the gym.", "I wanna quit the gym!", "My membership card is the only part of me that works out."]
    records = [{"reply": reply, "context": [{"speaker": "Ross", "text": "How is the gym?"}], "season": 4, "episode": 4} for reply in replies]
    selector = Selector(selector_folder)
    write_index(records, selector, tmp_path, prompts={})
    index = LineIndex(tmp_path, selector)
    gym = [[{"speaker": "Alex", "text": "I finally went back to the gym today."}]]
    assert {line.text for line in index.top(selector.conversations(gym), k=3, conversations=gym)[0]} == set(replies)
    rest = index.top(selector.conversations(gym), k=3, conversations=gym, avoid=["okay. i wanna QUIT the gym."])[0]
    assert [line.text for line in rest] == [replies[2]]  # the line replaced, and the one it holds, are both out


def test_third_person_is_a_name_not_spoken_to():
    from serve.character.lines import third_person

    names = frozenset({"Ross", "Monica"})
    assert third_person("Does Ross know?", names) == {"Ross"}
    assert third_person("Ross, wait! Monica!", names) == set()
    assert third_person("Hey Ross.", names) == set()
    assert third_person("Monica said wedding, Ross.", names) == {"Monica"}
    assert third_person("Does Mon know? Hey Ross.", names) == {"Monica"}  # a friend's short name is the friend


def test_a_line_naming_a_friend_by_a_short_name_is_quoted_only_where_they_are(selector_folder, tmp_path):
    replies = ["Hey Mon, I think I figured out whose handcuffs they are.", "Does Mon know about the handcuffs?",
               "I think I figured out whose handcuffs they are."]
    context = [{"speaker": "Ross", "text": "Monica, look."}, {"speaker": "Monica", "text": "Whose handcuffs are these?"}]
    records = [{"reply": reply, "context": context, "season": 5, "episode": n} for n, reply in enumerate(replies)]
    selector = Selector(selector_folder)
    write_index(records, selector, tmp_path, prompts={})
    index = LineIndex(tmp_path, selector)
    conversations = [[{"speaker": "Grandma", "text": "Whose handcuffs are these?"}],
                     [{"speaker": "Monica", "text": "Whose handcuffs are these?"}],
                     [{"speaker": "Joey", "text": "Mon found handcuffs. Whose are they?"}],
                     [{"speaker": "Mon", "text": "Whose handcuffs are these?"}]]
    found = [{line.text for line in lines} for lines in index.top(selector.conversations(conversations), k=3, conversations=conversations)]
    assert found[0] == {replies[2]}  # Monica is not in Grandma's conversation
    assert found[1] == {replies[0], replies[2]}  # "Hey Mon" speaks to her; "Does Mon know?" speaks of her
    assert found[2] == set(replies)  # Joey's turn names her by the same short name
    assert found[3] == found[1]  # someone called Mon is her too


def test_blend_quotes_only_above_the_threshold(selector_folder, lines_folder):
    generated = ["Banana pancakes are purple on Tuesdays.", "My job? I crunch numbers until they cry."]
    low, = policy("blend", selector_folder, lines_folder, threshold=-5.0).choose([JOB], [generated])
    assert low.source == {"kind": "quote", "season": 3, "episode": 5}
    assert low.text.startswith("I'm in data processing")
    high, = policy("blend", selector_folder, lines_folder, threshold=5.0).choose([JOB], [generated])
    assert high.source == {"kind": "generated"}
    assert high.text == generated[1]  # the generation the selector scores higher


def test_no_line_already_in_the_conversation_is_sent_again(selector_folder, lines_folder):
    said = LINES[2][0]
    turns = [*JOB, {"speaker": "Chandler", "text": said}, {"speaker": "Alex", "text": "No really, what is your job?"}]
    chosen, = policy("quote", selector_folder, lines_folder, threshold=-5.0).choose([turns], [[]])
    assert chosen.text != said and chosen.source["kind"] == "quote"
    top, = policy("quote", selector_folder, lines_folder, threshold=-5.0).choose([JOB], [[]])
    assert top.text == said  # the best line for the job question, unless it is to be avoided (a regenerate)
    other, = policy("quote", selector_folder, lines_folder, threshold=-5.0).choose([JOB], [[]], avoid=[said.upper()])
    assert other.text != said and other.source["kind"] == "quote"
    blend = policy("blend", selector_folder, lines_folder, threshold=5.0)
    assert blend.choose([turns], [["  " + said.upper(), "Accounting, sort of."]])[0].text == "Accounting, sort of."


def test_respond_generates_only_where_no_real_line_answers(selector_folder, lines_folder):
    class Engine:  # the policy's side of the engine interface, counted
        calls: list = []

        def generate(self, conversations, sampling):
            from serve.engine import Reply

            self.calls.append((len(conversations), sampling.best_of))
            return [Reply("Could I BE any more employed?", 7, 9) for _ in conversations]

        def count_tokens(self, text):
            return len(text.split())

        def prompt_ids(self, turns):
            return [0] * 7

    from serve.engine import Sampling

    engine = Engine()
    gym = [{"speaker": "Alex", "text": "I finally went back to the gym today."}]
    blend = policy("blend", selector_folder, lines_folder, threshold=-5.0)
    answers = respond(engine, blend, [JOB, gym], Sampling(best_of=2))
    assert [source for _, source in answers] == [{"kind": "quote", "season": 3, "episode": 5}, {"kind": "quote", "season": 1, "episode": 2}]
    assert answers[0][0].prompt_tokens == 7 and engine.calls == []  # quoted: nothing generated
    blend = policy("blend", selector_folder, lines_folder, threshold=5.0)
    (reply, source), = respond(engine, blend, [JOB], Sampling(best_of=2))
    assert source == {"kind": "generated"} and reply.text == "Could I BE any more employed?"
    assert engine.calls == [(4, 1)]  # BLEND_GENERATIONS candidates, each returned (best_of 1 per row)
    # quote: a generation only where every retrieved line was already said
    quoting = policy("quote", selector_folder, lines_folder, threshold=5.0)
    said = [*JOB, *({"speaker": "Chandler", "text": line} for line, *_ in LINES), {"speaker": "Alex", "text": "Really?"}]
    engine.calls.clear()
    (first, first_source), (second, second_source) = respond(engine, quoting, [JOB, said], Sampling())
    assert first_source["kind"] == "quote" and second_source == {"kind": "generated"}
    assert engine.calls == [(1, 1)]
    (reply, source), = respond(engine, ReplyPolicy("generate"), [JOB], Sampling())
    assert source == {"kind": "generated"} and reply.text == "Could I BE any more employed?"


def test_missing_selector_or_index_is_one_clear_error(tmp_path, selector_folder):
    ReplyPolicy("generate", tmp_path / "none", tmp_path / "none")  # generate needs neither
    for mode in ("quote", "blend"):
        with pytest.raises(SelectorError, match="no selector here"):
            check_files(mode, tmp_path / "none", tmp_path / "none")
        with pytest.raises(SelectorError, match="no line index here"):
            ReplyPolicy(mode, selector_folder, tmp_path / "none")
    run = subprocess.run([sys.executable, "-m", "train", "lines", "--data", str(tmp_path), "--selector",
                          str(tmp_path / "none"), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "no selector here" in run.stderr


def test_an_index_built_with_another_selector_is_refused(tmp_path, selector_folder, lines_folder):
    other = make_selector(tmp_path / "other", nudge=0.01)
    assert Selector(other).id != Selector(selector_folder).id
    with pytest.raises(SelectorError, match="another selector"):
        LineIndex(lines_folder, Selector(other))
    with pytest.raises(SelectorError, match="another selector"):
        check_files("blend", other, lines_folder)


DATA_PROCESSING = LINES[2][0]
MOM = [{"speaker": "Alex", "text": "My mom asked me what you do all day."}]
GYM = [{"speaker": "Alex", "text": "I finally went back to the gym today."}]


def test_a_lines_prompt_lifts_it_where_the_prompt_fits_the_message(tmp_path):
    prompted = make_selector(tmp_path / "prompted")
    set_settings(prompted, prompt_weight=2.0)
    selector = Selector(prompted)
    written = {DATA_PROCESSING: "Your mom asked me what you do all day at the office."}
    tops = {}
    for name, prompts in (("without", {}), ("with", written)):
        write_index(line_records(), selector, tmp_path / name, prompts)
        index = LineIndex(tmp_path / name, selector)
        tops[name] = [[line.text for line in lines] for lines in index.top(selector.conversations([MOM, GYM]), 3, [MOM, GYM])]
    assert tops["without"][0][0] != DATA_PROCESSING and tops["with"][0][0] == DATA_PROCESSING
    assert "gym" in tops["with"][1][0]  # a line without a written prompt stands for its own
    stored = [json.loads(row) for row in (tmp_path / "with" / "lines.jsonl").read_text().splitlines()]
    assert [row["prompt"] for row in stored] == [written.get(row["reply"], row["reply"]) for row in stored]
    assert json.loads((tmp_path / "with" / "index.json").read_text())["written_prompts"] == 1


def test_an_index_without_prompts_is_refused_where_the_selector_scores_them(tmp_path, selector_folder, lines_folder):
    from safetensors.numpy import load_file, save_file

    old = tmp_path / "old"
    old.mkdir()
    for name in ("lines.jsonl", "index.json"):
        (old / name).write_bytes((lines_folder / name).read_bytes())
    vectors = load_file(str(lines_folder / "vectors.safetensors"))
    save_file({name: vectors[name] for name in ("selector", "message")}, str(old / "vectors.safetensors"))
    LineIndex(old, Selector(selector_folder))  # a selector without a prompt weight reads it as before
    set_settings(selector_folder, prompt_weight=1.0)
    try:
        with pytest.raises(SelectorError, match="no line prompts"):
            LineIndex(old, Selector(selector_folder))
    finally:
        set_settings(selector_folder, prompt_weight=0.0)


def test_unreadable_prompts_are_one_clear_error(tmp_path, selector_folder):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"line": "Hi."}\n')
    with pytest.raises(SelectorError, match="cannot read the line prompts"):
        read_prompts(bad)
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps(line_records()[0]) + "\n")
    run = subprocess.run([sys.executable, "-m", "train", "lines", "--data", str(data), "--splits", "train", "--selector",
                          str(selector_folder), "--out", str(tmp_path / "out"), "--prompts", str(bad)],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "cannot read the line prompts" in run.stderr
    assert not (tmp_path / "out").exists()
    for fit in ("prompts", "rerank"):  # both extend the selector's metrics.json, which it has not yet
        unreported = subprocess.run([sys.executable, "-m", "train", fit, "--data", str(data), "--selector",
                                     str(selector_folder)], capture_output=True, text=True)
        assert unreported.returncode == 2
        assert unreported.stderr.strip().count("\n") == 0 and "no metrics.json" in unreported.stderr


KNOCK = [{"speaker": "Joey", "text": "Knock knock."}]


def test_pmi_rewards_the_reply_that_answers_its_conversation(engine):
    rerank = LmRerank(1.0)
    rerank.bind(engine)
    pmi = rerank.pmi([KNOCK, JOB, KNOCK, JOB], ["Who's there?", "Who's there?", "I work in data processing.", "I work in data processing."])
    assert pmi[0] > pmi[1] and pmi[3] > pmi[2]


def test_rerank_adds_weighted_pmi_best_first_and_scores_each_prior_once(engine):
    scored = []

    class Counted:  # the engine, counting the replies it scores
        def reply_log_probs(self, conversations, replies):
            scored.extend(replies)
            return engine.reply_log_probs(conversations, replies)

    counted = Counted()
    lines = [[Line("I work in data processing.", 1, 2, 0.31), Line("Who's there?", 1, 1, 0.30)]]
    unweighted = LmRerank(0.0)
    unweighted.bind(counted)
    assert unweighted.rerank([KNOCK], lines) == lines
    rerank = LmRerank(1.0)
    rerank.bind(counted)
    scored.clear()
    best, other = rerank.rerank([KNOCK], lines)[0]
    assert best.text == "Who's there?" and (best.season, best.episode) == (1, 1)
    pmi = rerank.pmi([KNOCK, KNOCK], [best.text, other.text])
    assert best.score == pytest.approx(0.30 + pmi[0], abs=1e-4) and other.score == pytest.approx(0.31 + pmi[1], abs=1e-4)
    assert len(scored) == 2 + 2 + 2  # priors once, then the conversation's two lines twice
    rerank.bind(Counted())  # another engine: its own priors
    scored.clear()
    rerank.pmi([KNOCK], [best.text])
    assert len(scored) == 2
    with pytest.raises(ValueError, match="pass the engine"):
        rerank.bind(None)


def test_blend_with_the_lm_rerank_puts_the_threshold_on_the_reranked_score(engine, selector_folder, lines_folder):
    generated = ["Banana pancakes are purple on Tuesdays."]
    plain = policy("quote", selector_folder, lines_folder, threshold=0.0)
    lines = plain.index.top(plain.selector.conversations([JOB]), plain.top_k, [JOB])
    rerank = LmRerank(1.0)
    rerank.bind(engine)
    best = rerank.rerank([JOB], lines)[0][0]
    below, above = best.score - 0.01, best.score + 0.01
    fitted = {"lm_weight": 1.0, "threshold": below}
    quoted, = policy("blend", selector_folder, lines_folder, threshold=5.0, rerank=fitted).choose([JOB], [generated], engine)
    assert quoted.text == best.text and quoted.score == pytest.approx(best.score, abs=1e-4)
    blend = policy("blend", selector_folder, lines_folder, threshold=-5.0, rerank={**fitted, "threshold": above})
    assert blend.choose([JOB], [generated], engine)[0].text == generated[0]
    with pytest.raises(ValueError, match="pass the engine"):
        blend.choose([JOB], [generated])
    # Switched off: the selector's own score against its own threshold, and no LM.
    unranked = policy("blend", selector_folder, lines_folder, threshold=5.0, rerank=fitted, switch=False)
    assert unranked.rerank is None and unranked.choose([JOB], [generated])[0].text == generated[0]
    own, = policy("quote", selector_folder, lines_folder, threshold=-5.0, rerank=fitted, switch=False).choose([JOB], [[]])
    assert (own.text, own.score) == (lines[0][0].text, pytest.approx(lines[0][0].score, abs=1e-4))
    set_settings(selector_folder, rerank={})


def test_reranked_recall_counts_only_the_selectors_top_candidates():
    rng = np.random.default_rng(0)
    replies = [str(i) for i in range(12)]
    draws = distractor_draws(replies, sizes=(3, 10))
    pools = candidate_pools(draws, len(replies))
    scores = rng.random((12, 12))
    zero, favours_true = np.zeros((12, 12)), 10 * np.eye(12)
    assert reranked_recall(scores, zero, pools, weight=1.0, depth=10) == recall_at_1(scores, draws)
    assert reranked_recall(scores, favours_true, pools, weight=0.0, depth=10) == recall_at_1(scores, draws)
    assert reranked_recall(scores, favours_true, pools, weight=1.0, depth=10) == {"R3@1": 1.0, "R10@1": 1.0}
    assert reranked_recall(scores, favours_true, pools, weight=1.0, depth=1) == recall_at_1(scores, draws)
    within_two = reranked_recall(scores, favours_true, pools, weight=1.0, depth=2)["R10@1"]
    ranks = [(scores[i, pools[10][i]] > scores[i, i]).sum() for i in range(12)]
    assert within_two == pytest.approx(np.mean([rank < 2 for rank in ranks]), abs=1e-3)
    pairs = set(lm_pairs(scores, pools, depth=2))
    assert {(i, i) for i in range(12)} <= pairs
    assert all((i, int(j)) in pairs for pool in pools.values() for i, row in enumerate(pool)
               for j in row[np.argsort(-scores[i, row], kind="stable")[:2]])


def test_recall_draws_never_hold_the_true_text_and_score_rankings():
    replies = ["a", "b", "a", "c", "d", "e", "f", "g", "h", "i", "j", "k"]
    draws = distractor_draws(replies, sizes=(3, 10))
    assert all(replies[j] != replies[i] for i, row in enumerate(draws[10]) for j in row)
    assert recall_at_1(np.eye(len(replies)), draws) == {"R3@1": 1.0, "R10@1": 1.0}
    assert recall_at_1(-np.eye(len(replies)), draws) == {"R3@1": 0.0, "R10@1": 0.0}


def test_blind_scores_count_wins_losses_and_ties(tmp_path):
    key = {"p0": {"rival": "generate", "kind": "everyday", "blend": "A"},
           "p1": {"rival": "generate", "kind": "everyday", "blend": "B"},
           "p2": {"rival": "real line", "kind": "held-out", "blend": "B"}}
    (tmp_path / "key.json").write_text(json.dumps(key))
    judgments = [{"id": "p0", "choice": "A"}, {"id": "p1", "choice": "A"}, {"id": "p2", "choice": "tie"},
                 {"id": "p0", "choice": "A"}]
    (tmp_path / "judgments.jsonl").write_text("\n".join(json.dumps(j) for j in judgments))
    results = score(tmp_path)
    assert results["blend vs generate (everyday)"] == {"win": 2, "loss": 1, "tie": 0, "judged": 3, "win_rate": 0.667,
                                                       "win_rate_ties_half": 0.667}
    assert results["blend vs real line (all)"]["tie"] == 1 and results["blend vs real line (all)"]["win_rate"] == 0.0
    assert "| blend vs generate (everyday) | 2 | 1 | 0 |" in (tmp_path / "results.md").read_text()


def test_blind_scores_name_the_system_under_test_and_examples_go_to_the_system_prompt(tmp_path):
    from data.dialogue import PERSONA
    from serve.character.lines import Line
    from train.blind import examples_persona

    key = {"e0": {"rival": "generate", "kind": "everyday", "system": "generate with examples", "blend": "B"}}
    (tmp_path / "key.json").write_text(json.dumps(key))
    (tmp_path / "judgments.jsonl").write_text(json.dumps({"id": "e0", "choice": "B"}) + "\n")
    assert score(tmp_path)["generate with examples vs generate (all)"]["win"] == 1
    persona = examples_persona([Line(LINES[0][0], 1, 2), Line(LINES[3][0], 4, 1)])
    assert persona.startswith(PERSONA) and f"- {LINES[0][0]}" in persona and f"- {LINES[3][0]}" in persona
    run = subprocess.run([sys.executable, "-m", "train", "blind", "make-examples", "--plain", str(tmp_path / "none.json"),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0 and "no cached generations" in run.stderr
    assert not (tmp_path / "out").exists()


def test_selector_training_takes_the_other_friends_answers_of_train_episodes_only(tmp_path):
    from train.selector import others_pairs

    rows = {
        "train": [{"source": "friends", "text": "We were on a break!", "context": [{"speaker": "Rachel", "text": "You slept with her!"}]},
                  {"source": "friends", "text": "Hi.", "context": []},
                  {"source": "movie", "text": "I'll be back.", "context": [{"speaker": "", "text": "Bye."}]}],
        "validation": [{"source": "friends", "text": "Pivot!", "context": [{"speaker": "Ross", "text": "Lift."}]}],
    }
    for split, split_rows in rows.items():
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in split_rows))
    assert others_pairs(tmp_path) == [{"context": rows["train"][0]["context"], "reply": "We were on a break!"}]


def test_hard_negatives_are_other_replies_near_the_top_for_every_pair(selector_folder):
    from sentence_transformers import SentenceTransformer

    from train.selector import SelectorConfig, pairs_dataset, with_hard_negatives

    records = [{"context": [{"speaker": "Ross", "text": message}], "reply": reply} for reply, message, _, _ in LINES]
    model = SentenceTransformer(str(selector_folder), local_files_only=True, device="cpu")
    mined = with_hard_negatives(pairs_dataset(records), model, SelectorConfig(data="", out="", hard_negatives=1))
    assert mined.column_names == ["anchor", "positive", "negative_1"] and len(mined) == len(records)
    replies = {reply for reply, *_ in LINES}
    assert all(row["negative_1"] in replies and row["negative_1"] != row["positive"] for row in mined)


def test_a_selector_continued_from_another_records_and_describes_every_stage(tmp_path, selector_folder):
    from train.ranking import write_card
    from train.selector import SelectorConfig, earlier_stages

    first = json.loads((selector_folder / SETTINGS).read_text())
    assert earlier_stages(SelectorConfig(data="d", out="o")) == []
    stages = earlier_stages(SelectorConfig(data="d", out="o", init=str(selector_folder)))
    assert stages == [{"id": first["id"], "config": first["config"], "train_runtime_s": first["train_runtime_s"]}]
    second = {**first, "stages": stages, "config": {**first["config"], "epochs": 1.0, "init": str(selector_folder)},
              "threshold_percentile": 25}
    (tmp_path / SETTINGS).write_text(json.dumps({**second, "id": "next"}))
    assert earlier_stages(SelectorConfig(data="d", out="o", init=str(tmp_path))) == [*stages, {
        "id": "next", "config": second["config"], "train_runtime_s": first["train_runtime_s"]}]
    metrics = {"test": {"random": {"R10@1": 0.1, "R100@1": 0.01}}, "test_pairs": 3, "message_weight": 0.0}
    write_card(tmp_path, second, metrics)
    card = (tmp_path / "README.md").read_text()
    assert "Stage 1: trained on the fixture train split's (conversation, Chandler reply) pairs: 0 epochs" in card
    assert "Stage 2, continuing from it: trained on the fixture train split's (conversation, Chandler reply) pairs: 1.0 epochs" in card
    assert "rerank" not in card


def test_a_readers_preference_orders_the_lines_and_the_threshold_stays_on_their_fit(engine, selector_folder, lines_folder, tmp_path):
    lines = [[Line("I work in data processing, and no, nobody knows what that means.", 1, 2, 0.40), Line("Who's there?", 1, 1, 0.10)]]
    shorter = np.zeros(len(FEATURES) + 384)
    shorter[FEATURES.index("log words")] = -10.0
    preferred = LmRerank(1.0, Preference(shorter))
    preferred.bind(engine)
    first, second = preferred.rerank([JOB], lines)[0]
    plain = LmRerank(1.0)
    plain.bind(engine)
    assert first.text == "Who's there?" and plain.rerank([JOB], lines)[0][0].text != first.text
    pmi = plain.pmi([JOB, JOB], [first.text, second.text])
    assert first.score == pytest.approx(0.10 + pmi[0], abs=1e-4) and second.score == pytest.approx(0.40 + pmi[1], abs=1e-4)
    # Shipped in the selector's folder, the policy orders its lines by it.
    assert Preference.load(tmp_path) is None
    Preference(shorter).save(selector_folder)
    try:
        fitted = {"lm_weight": 1.0, "threshold": -100.0}
        quoted, = policy("blend", selector_folder, lines_folder, threshold=5.0, rerank=fitted).choose([JOB], [["Banana."]], engine)
        default, = policy("blend", selector_folder, lines_folder, threshold=5.0, rerank=fitted, switch=False).choose([JOB], [[]])
        assert len(quoted.text.split()) < len(default.text.split())
    finally:
        (selector_folder / WEIGHTS).unlink()
        set_settings(selector_folder, rerank={})


def write_round(folder, picks, second=None):
    """A labelled round: each item's options, the readers' picks (1-based) and a second reader's."""
    folder.mkdir()
    options = [["Who's there?", "I have been thinking about knocking for a very long time now, Joey.", "Knock knock yourself, my friend, and good night."],
               ["It's data processing.", "Do you know, I'm not entirely sure what the company even does with its data.", "Something with numbers and a lot of very long meetings."]]
    key = {f"r{n}": {"turns": KNOCK if n % 2 else JOB, "options": options[n % 2], "top": [0, 1, 2]} for n in range(len(picks))}
    (folder / "key.json").write_text(json.dumps(key))
    for name, chosen in (("labels.jsonl", picks), ("second-reader.jsonl", second)):
        if chosen:
            (folder / name).write_text("".join(json.dumps({"id": f"r{n}", "choice": str(c)}) + "\n" for n, c in enumerate(chosen)))


def test_the_preference_fit_learns_the_readers_picks(engine, tmp_path):
    folder = make_selector(tmp_path / "selector")
    write_round(tmp_path / "round1", [1] * 10, second=[1, 1, 2])  # the readers always pick the shortest line
    report = fit_preference([tmp_path / "round1"], folder, engine)
    assert report["labelled"] == 10 and report["chance"] == pytest.approx(1 / 3, abs=1e-3)
    assert report["cross_validated_accuracy"] == 1.0 and report["weights"]["log words"] < 0
    assert report["second_reader_agreement"] == [pytest.approx(2 / 3, abs=1e-3)]
    assert json.loads((folder / SETTINGS).read_text())["preference"]["labelled"] == 10
    learned = Preference.load(folder)
    assert learned.weights.shape == (len(FEATURES) + 384,)


def test_a_bad_label_is_one_clear_error(tmp_path, selector_folder):
    write_round(tmp_path / "round1", [1, 4])
    with pytest.raises(TrainDataError, match="bad label"):
        fit_preference([tmp_path / "round1"], selector_folder)
    with pytest.raises(TrainDataError, match="no readable key.json"):
        fit_preference([tmp_path / "missing"], selector_folder)


def test_preference_items_hold_the_policys_top_lines_of_unindexed_episodes(tmp_path, selector_folder, lines_folder):
    data = tmp_path / "data"
    data.mkdir()
    unseen = [{"context": [{"speaker": "Ross", "text": text}], "reply": "Sure.", "season": 9, "episode": 9}
              for text in ("So what is your job exactly?", "We should get a puppy.")]
    (data / "validation.jsonl").write_text("".join(json.dumps(record) + "\n" for record in unseen))
    assert make_items(data, selector_folder, lines_folder, tmp_path / "round", 5) == {"items": 2, "out": str(tmp_path / "round")}
    key = json.loads((tmp_path / "round" / "key.json").read_text())
    items = [json.loads(line) for line in (tmp_path / "round" / "items.jsonl").read_text().splitlines()]
    index = LineIndex(lines_folder, Selector(selector_folder))
    for item in items:
        entry = key[item["id"]]
        top = index.top(index.selector.conversations([entry["turns"]]), 5, [entry["turns"]])[0]
        assert sorted(item["options"].values()) == sorted(line.text for line in top) == sorted(entry["options"])
        assert item["context"] == [f"Ross: {entry['turns'][0]['text']}"] and entry["top"] == list(range(len(top)))
    indexed = {**unseen[0], "season": 1, "episode": 2}  # an episode the index holds: its true line could be an option
    (data / "validation.jsonl").write_text(json.dumps(indexed) + "\n")
    with pytest.raises(TrainDataError, match="--splits train`"):
        make_items(data, selector_folder, lines_folder, tmp_path / "leaky", 5)


def test_ceiling_items_show_each_blind_conversation_the_selectors_top_lines(tmp_path, selector_folder, lines_folder):
    from train.blind import EVERYDAY, HELD_OUT
    from train.ceiling import make_items

    data = tmp_path / "data"
    data.mkdir()
    test = [{"context": [{"speaker": "Ross", "text": f"Day {n}: so what is your job exactly?"}], "reply": "Sure.",
             "season": 9, "episode": 9} for n in range(HELD_OUT)]
    (data / "test.jsonl").write_text("".join(json.dumps(record) + "\n" for record in test))
    assert make_items(data, selector_folder, lines_folder, tmp_path / "top3", 3)["items"] == HELD_OUT + len(EVERYDAY)
    key = json.loads((tmp_path / "top3" / "key.json").read_text())
    index = LineIndex(lines_folder, Selector(selector_folder))
    job = key["r000"]
    assert sorted(job["options"]) == sorted(line.text for line in index.top(index.selector.conversations([job["turns"]]), 3, [job["turns"]])[0])
    assert key[f"r{HELD_OUT:03d}"]["turns"] == [{"speaker": "Alex", "text": EVERYDAY[0]}]
    with pytest.raises(TrainDataError, match="no draw 1"):  # a fresh round's draw: the fixture has one hundred
        make_items(data, selector_folder, lines_folder, tmp_path / "fresh", 3, draw=1)
    (data / "test.jsonl").write_text("".join(json.dumps({**record, "season": 1, "episode": 2}) + "\n" for record in test))
    with pytest.raises(TrainDataError, match="held-out episodes"):
        make_items(data, selector_folder, lines_folder, tmp_path / "leaky", 3)


def test_blind_draws_share_no_conversation_and_bring_their_own_everyday_messages(tmp_path):
    from train.blind import EVERYDAY, HELD_OUT, SENDER, blind_conversations, read_everyday

    data = tmp_path / "data"
    data.mkdir()
    test = [{"context": [{"speaker": "Ross", "text": f"Day {n}."}], "reply": "Sure.", "season": 9, "episode": n}
            for n in range(2 * HELD_OUT + 50)]
    (data / "test.jsonl").write_text("".join(json.dumps(record) + "\n" for record in test))
    first = blind_conversations(data)
    assert [c["turns"] for c in first[:HELD_OUT]] == [r["context"] for r in random.Random(0).sample(test, HELD_OUT)]
    assert [c["turns"][0]["text"] for c in first[HELD_OUT:]] == EVERYDAY
    (tmp_path / "everyday.txt").write_text("Hello there.\n\n  My cat left me.  \n")
    second = blind_conversations(data, draw=1, everyday=read_everyday(tmp_path / "everyday.txt"))
    held_out = [{c["turns"][0]["text"] for c in draw if c["kind"] == "held-out"} for draw in (first, second)]
    assert len(held_out[1]) == HELD_OUT and not held_out[0] & held_out[1]
    assert [c["turns"] for c in second[HELD_OUT:]] == [[{"speaker": SENDER, "text": "Hello there."}],
                                                       [{"speaker": SENDER, "text": "My cat left me."}]]
    with pytest.raises(TrainDataError, match="no draw 2"):
        blind_conversations(data, draw=2)
    (tmp_path / "blank.txt").write_text("\n  \n")
    run = subprocess.run([sys.executable, "-m", "train", "blind", "make", "--everyday", str(tmp_path / "blank.txt"),
                          "--data", str(data), "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0 and "no everyday messages" in run.stderr
    assert not (tmp_path / "out").exists()


def test_ceiling_pairs_put_the_readers_pick_against_each_blind_rival(tmp_path):
    from train.ceiling import make_pairs

    turns = [JOB, [{"speaker": "Alex", "text": "Do you like kids?"}]]
    options = [["It's data processing.", "Statistical analysis, and reconfiguration."], ["Kids? Love them. From afar.", "Yeah."]]
    readers = tmp_path / "top2"
    readers.mkdir()
    (readers / "key.json").write_text(json.dumps({f"r{n:03d}": {"turns": t, "options": o, "top": [0, 1]}
                                                  for n, (t, o) in enumerate(zip(turns, options))}))
    (readers / "labels.jsonl").write_text('{"id": "r000", "choice": "2"}\n{"id": "r001", "choice": "1"}\n')
    examples = [{"kind": "held-out", "context": ["Alex: So what is your job exactly?"], "generate": "Why?", "naive quote": "No.",
                 "real line": "Transponster."},
                {"kind": "everyday", "context": ["Alex: Do you like kids?"], "generate": "Oh my God!", "naive quote": "Sure."}]
    (tmp_path / "blind").mkdir()
    (tmp_path / "blind" / "examples.json").write_text(json.dumps(examples))
    blend = {"id": "p000", "context": examples[0]["context"], "A": "Statistics.", "B": "Why?"}
    (tmp_path / "blind" / "pairs.jsonl").write_text(json.dumps(blend) + "\n")
    (tmp_path / "blind" / "key.json").write_text(json.dumps({"p000": {"conversation": 0, "kind": "held-out", "rival": "generate", "blend": "A"}}))
    assert make_pairs([readers], tmp_path / "blind", tmp_path / "out")["pairs"] == 6
    key = json.loads((tmp_path / "out" / "key.json").read_text())
    for line in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines():
        pair = json.loads(line)
        entry = key[pair["id"]]
        if "system" not in entry:  # the blind round's own pair, judged by the same panel
            assert pair[entry["blend"]] == "Statistics." and {pair["A"], pair["B"]} == {"Statistics.", "Why?"}
            continue
        pick = options[entry["conversation"]][1 - entry["conversation"]]
        rival = examples[entry["conversation"]][entry["rival"]]
        assert entry["system"] == "reader's pick of the top 2" and pair[entry["blend"]] == pick
        assert pair["B" if entry["blend"] == "A" else "A"] == rival
    (readers / "labels.jsonl").write_text('{"id": "r000", "choice": "2"}\n')
    with pytest.raises(TrainDataError, match="no pick for 1 items"):
        make_pairs([readers], tmp_path / "blind", tmp_path / "out")
    (readers / "labels.jsonl").write_text('{"id": "r000", "choice": "2"}\n{"id": "r001", "choice": "1"}\n')
    examples[1]["context"] = ["Alex: Do you hate kids?"]
    (tmp_path / "blind" / "examples.json").write_text(json.dumps(examples))
    with pytest.raises(TrainDataError, match="not those of"):
        make_pairs([readers], tmp_path / "blind", tmp_path / "out")
    run = subprocess.run([sys.executable, "-m", "train", "ceiling", "pairs", "--readers", str(tmp_path / "none"),
                          "--blind", str(tmp_path / "blind"), "--out", str(tmp_path / "cli")], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0 and "no readable key.json" in run.stderr
    assert not (tmp_path / "cli").exists()
