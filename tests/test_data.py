import json
import subprocess
import sys
from pathlib import Path

import pytest

from data.build import build, load_pairs
from data.pairs import Skipped, clean_text, split_episodes

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data", *args], cwd=ROOT, capture_output=True, text=True)


def pairs_of(path: Path, **options) -> list:
    return [(p.season, p.episode, p.scene, p.context, p.reply) for p in load_pairs(path, "Chandler Bing", options.get("k", 4), Skipped())]


def test_clean_text_strips_directions_and_normalises():
    assert clean_text("Hi!  (to Ross)  You  there? [Time Lapse]") == "Hi! You there?"
    assert clean_text("It’s “fine”…") == "It's \"fine\"..."
    capped = clean_text("word " * 200, max_chars=50)
    assert len(capped) <= 53 and capped.endswith("...")


def test_pairs_follow_the_rules(fixtures):
    pairs = pairs_of(fixtures / "friends_mini.tsv", k=4)
    replies = [reply for *_, reply in pairs]
    # Chandler answering Joey is a pair; his follow-up line (preceded by himself) is not.
    assert "All right Joey, be nice. So does he have a hump? A hump and a hairpiece?" in replies
    assert "Could this BE any more awkward?" not in replies
    # A line that is only a stage direction is dropped and breaks the context.
    assert "Oh, here we go." in replies
    # After a line said by several people, no pair (no single preceding speaker).
    assert not any(r.startswith("That one doesn't count") for r in replies)
    first = pairs[0]
    assert [turn["speaker"] for turn in first[3]] == ["Monica", "Joey"]
    assert first[3][1]["text"] == "C'mon, you're going out with the guy! Right?"
    assert all(turn["speaker"] != "Scene" for p in pairs for turn in p[3])
    everyone = [p for p in pairs if p[3][-1]["speaker"] == "Everyone"]
    assert everyone and all(len(p[4]) <= 403 for p in everyone)


def test_context_turns_limits_the_context(fixtures):
    single = pairs_of(fixtures / "friends_mini.tsv", k=1)
    assert single and all(len(context) == 1 for *_, context, _ in single)
    assert len(single) == len(pairs_of(fixtures / "friends_mini.tsv", k=4))


def test_tsv_and_emory_json_give_the_same_pairs(fixtures):
    from_tsv = pairs_of(fixtures / "friends_mini.tsv")
    assert from_tsv == pairs_of(fixtures / "emory")
    season_one = pairs_of(fixtures / "emory" / "friends_season_01.json")
    assert season_one == [p for p in from_tsv if p[0] == 1]


def test_paired_csv(fixtures):
    pairs = pairs_of(fixtures / "paired.csv")
    assert [p[4] for p in pairs] == ["Oh, you know, I crunched numbers. Then the numbers crunched me.", "I'm fine. Totally fine."]


def test_split_is_by_episode_and_seeded():
    episodes = [(s, e) for s in range(1, 4) for e in range(1, 11)]
    first = split_episodes(episodes, seed=1)
    assert first == split_episodes(episodes, seed=1) != split_episodes(episodes, seed=2)
    sizes = {name: sum(1 for v in first.values() if v == name) for name in ("train", "validation", "test")}
    assert sizes == {"train": 24, "validation": 3, "test": 3}


def test_build_writes_splits_stats_and_plot(fixtures, tmp_path):
    stats = build(fixtures / "friends_mini.tsv", tmp_path, "Chandler Bing", 4, seed=0)
    episodes_in = {}
    for split in ("train", "validation", "test"):
        lines = (tmp_path / f"{split}.jsonl").read_text().splitlines()
        assert len(lines) == stats["pairs"][split] > 0
        records = [json.loads(line) for line in lines]
        assert set(records[0]) == {"season", "episode", "scene", "context", "reply"}
        episodes_in[split] = {(r["season"], r["episode"]) for r in records}
    assert not episodes_in["train"] & episodes_in["test"]
    assert not episodes_in["train"] & episodes_in["validation"]
    assert not episodes_in["validation"] & episodes_in["test"]
    assert stats["skipped"]["stage direction row"] == 10
    assert stats["skipped"]["no single speaker"] == 10
    assert stats["skipped"]["empty after removing stage directions"] == 10
    assert (tmp_path / "reply_lengths.png").stat().st_size > 1000
    from datasets import load_from_disk

    assert load_from_disk(str(tmp_path / "hf"))["test"].num_rows == stats["pairs"]["test"]


def test_any_character_works(fixtures, tmp_path):
    stats = build(fixtures / "friends_mini.tsv", tmp_path, "Joey Tribbiani", 4, seed=0)
    assert sum(stats["pairs"].values()) == 10


def test_cli_builds(fixtures, tmp_path):
    result = run_cli("build", "--transcripts", str(fixtures / "emory"), "--out", str(tmp_path), "--context-turns", "1")
    assert result.returncode == 0, result.stderr
    assert sum(json.loads(result.stdout)["pairs"].values()) == 30


@pytest.mark.parametrize(
    "content, suffix, message",
    [
        (None, ".tsv", "no such file"),
        ("season\tepisode\tscene\tspeaker\ttext\n1\t1\t1\tChandler Bing\thi\n", ".tsv", "missing column(s) utterance"),
        ('{"episodes": [{"scenes": [{"lines": []}]}]}', ".json", "not an Emory NLP season file"),
        ("", ".csv", "empty CSV"),
        ("character,q,a\n", ".csv", "empty CSV"),
        ("season\tepisode\tscene\tutterance\tspeaker\ttext\n1\t1\t1\t1\tJoey Tribbiani\thi\n", ".tsv", "no pairs"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, content, suffix, message):
    path = tmp_path / f"input{suffix}"
    if content is not None:
        path.write_text(content)
    result = run_cli("build", "--transcripts", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_malformed_rows_are_counted(tmp_path):
    path = tmp_path / "rows.tsv"
    path.write_text(
        "season\tepisode\tscene\tutterance\tspeaker\ttext\n"
        "1\t1\t1\t1\tJoey Tribbiani\tHow you doin'?\n"
        "1\t1\t1\t2\tChandler Bing\tFine.\n"
        "x\t1\t1\t3\tChandler Bing\tBroken row.\n"
        "1\t2\t1\t1\tRoss Geller\tHi.\n1\t2\t1\t2\tChandler Bing\tHey.\n"
        "1\t3\t1\t1\tRoss Geller\tHi.\n1\t3\t1\t2\tChandler Bing\tHey.\n"
    )
    stats = build(path, tmp_path / "out", "Chandler Bing", 4, seed=0)
    assert stats["skipped"]["malformed row (non-numeric ids)"] == 1
    assert sum(stats["pairs"].values()) == 3
