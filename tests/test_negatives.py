"""`python -m data negatives`: other friends' lines and movie sentences, split like the pairs."""
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from data.build import build
from data.negatives import build_negatives, is_english, movie_sentences

ROOT = Path(__file__).resolve().parents[1]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_movie_text_is_cleaned_and_split():
    raw = (
        "<font color=green>MAN:</font>\n1957 was a big year.The Russians put that Sputnik\ninto space."
        "[OPERA MUSIC]<i>Hello, Mr. Smith.</i>- Who's there?\n- Nobody.ROCKY BALBOA: l don't know."
        "lt was McDonald's.Somebody told me the world is gonna roll meI am not sharp."
    )
    assert movie_sentences(raw) == [
        "1957 was a big year.",
        "The Russians put that Sputnik into space.",
        "Hello, Mr. Smith.",
        "Who's there?",
        "Nobody.",
        "I don't know.",
        "It was McDonald's.",
        "Somebody told me the world is gonna roll me",
        "I am not sharp.",
    ]


def test_credits_garbled_and_non_english_text_left_out():
    assert movie_sentences("Subtitles by someone@example.com.Hi there.") == ["Hi there."]
    assert is_english(["I don't know what you mean, it is the one."])
    assert not is_english(["¿Dónde está el dinero?", "No está aquí, imbécil.", "Lou tiene que pagarte a mí."])


@pytest.fixture(scope="module")
def built(tmp_path_factory, fixtures):
    out = tmp_path_factory.mktemp("negatives")
    pairs = tmp_path_factory.mktemp("pairs")
    transcripts = fixtures / "negatives_friends.tsv"
    build(transcripts, pairs, "Chandler Bing", 4, 0)
    result = subprocess.run(
        [sys.executable, "-m", "data", "negatives", "--transcripts", str(transcripts),
         "--movies", str(fixtures / "negatives_movies"), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    return out, pairs


def test_negatives_hold_other_friends_and_movie_sentences(built):
    out, _ = built
    rows = [row for split in ("train", "validation", "test") for row in read_jsonl(out / f"{split}.jsonl")]
    friends = [row for row in rows if row["source"] == "friends"]
    movies = [row for row in rows if row["source"] == "movie"]
    assert {row["speaker"] for row in friends} == {"Ross", "Rachel", "Joey", "Phoebe", "Monica"}
    texts = {row["text"] for row in rows}
    assert not any("BE" in text for text in texts), "Chandler's lines are the positive class"
    assert "Rachel, your shift started an hour ago." not in texts, "Gunther is not a main character"
    assert "The dinosaur exhibit at the museum opens on Tuesday." in texts, "(to Chandler) is stripped"
    assert all(row["context"] and row["context"][-1]["speaker"] == "Chandler" for row in friends)
    assert "We need a bigger harpoon." in texts and "Make him an offer he cannot refuse." in texts
    assert not any("<" in t or "[" in t or "MAN:" in t or "CAPTAIN" in t or "@" in t for t in texts)
    assert {row["movie"] for row in movies} == {"Shark_Story", "Mafia_Night", "Space_Voyage", "Cowboy_Trail", "Knight_Quest"}
    stats = json.loads((out / "stats.json").read_text())
    assert sum(s["friends"] for s in stats["lines"].values()) == len(friends)
    assert sum(s["movie"] for s in stats["lines"].values()) == len(movies)


def test_splits_follow_the_pairs_episodes_and_keep_films_whole(built):
    out, pairs = built
    episode_split, film_split = defaultdict(set), defaultdict(set)
    for split in ("train", "validation", "test"):
        pair_episodes = {(r["season"], r["episode"]) for r in read_jsonl(pairs / f"{split}.jsonl")}
        rows = read_jsonl(out / f"{split}.jsonl")
        assert rows, f"{split} is empty"
        for row in rows:
            if row["source"] == "friends":
                episode_split[(row["season"], row["episode"])].add(split)
                assert (row["season"], row["episode"]) in pair_episodes, "same episode split as the pairs"
            else:
                film_split[row["movie"]].add(split)
    assert all(len(splits) == 1 for splits in episode_split.values())
    assert all(len(splits) == 1 for splits in film_split.values())
    assert {s for splits in film_split.values() for s in splits} == {"train", "validation", "test"}


def test_bad_input_is_one_line_and_exit_2(tmp_path, fixtures):
    for transcripts, movies, message in (
        (fixtures / "negatives_friends.tsv", tmp_path / "nowhere", "no such folder"),
        (fixtures / "paired.csv", fixtures / "negatives_movies", "scene-level transcripts"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "data", "negatives", "--transcripts", str(transcripts),
             "--movies", str(movies), "--out", str(tmp_path / "out")],
            cwd=ROOT, capture_output=True, text=True,
        )
        assert result.returncode == 2
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_seed_changes_the_split_consistently(tmp_path, fixtures):
    stats = build_negatives(fixtures / "negatives_friends.tsv", fixtures / "negatives_movies", tmp_path, seed=3)
    pairs = build(fixtures / "negatives_friends.tsv", tmp_path / "pairs", "Chandler Bing", 4, 3)
    assert stats["episodes"] == pairs["episodes"]
