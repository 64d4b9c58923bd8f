"""The Chandler style classifier: training on a fixture, loading, scoring, and best-of-n."""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from data.build import build
from data.negatives import build_negatives
from serve.character.style import RELEVANCE_WEIGHT, StyleScorer, cross_encoder, cross_probabilities, save_cross_encoder
from serve.engine import Sampling
from train.style import StyleConfig, train_style

CHANDLER_LIKE = "Could this meeting BE any more boring? I'll just make a sarcastic joke."
MOVIE_LINE = "The shark is circling the boat, load the harpoon."


@pytest.fixture(scope="module")
def style_model(tmp_path_factory, fixtures) -> Path:
    """The classifier trained on the fixture: the whole pipeline, data build → negatives → train."""
    root = tmp_path_factory.mktemp("style")
    transcripts = fixtures / "negatives_friends.tsv"
    build(transcripts, root / "pairs", "Chandler Bing", 4, 0)
    build_negatives(transcripts, fixtures / "negatives_movies", root / "negatives")
    config = StyleConfig(
        data=str(root / "pairs"), negatives=str(root / "negatives"), out=str(root / "model"),
        curve_sizes=(20, 40), cross_train=24, cross_max_length=32, cross_eval_steps=1, cross_eval_examples=8,
    )
    metrics = train_style(config)
    assert metrics["chosen"] in ("bi-encoder", "cross-encoder")
    return root / "model"


def test_training_writes_a_model_with_card_curves_and_metrics(style_model):
    for name in ("config.json", "metrics.json", "README.md", "bi_encoder_curve.png", "cross_encoder_curve.png"):
        assert (style_model / name).is_file(), name
    metrics = json.loads((style_model / "metrics.json").read_text())
    bi = metrics["results"]["bi-encoder"]
    assert [point["train_lines"] for point in bi["curve"]] == [20, 40, bi["train_lines"]]
    assert bi["test"]["lines_chandler"] > 0 and bi["test"]["lines_movie"] > 0
    assert "AUC vs friends" in (style_model / "README.md").read_text()
    # The fixture is separable: on held-out episodes and films the bi-encoder ranks Chandler first.
    assert bi["test"]["roc_auc_vs_movie"] == 1.0
    assert bi["test"]["same_message_win_vs_movie"] == 1.0
    assert bi["test"]["mean_p_chandler_chandler"] > bi["test"]["mean_p_chandler_movie"]


def test_trained_model_loads_and_scores_chandler_above_a_movie_line(style_model):
    scorer = StyleScorer(style_model)
    chandler, movie = scorer.score([CHANDLER_LIKE, MOVIE_LINE])
    assert 0.0 <= movie < chandler <= 1.0
    assert scorer.score([]) == []
    related, unrelated = scorer.relevance(["Do you want some pizza?"] * 2, ["Sure, I love pizza.", "The rocket exploded."])
    assert related > unrelated


def test_cross_encoder_weights_round_trip_in_fp16_without_the_embedding_table(tmp_path):
    model, tokenizer = cross_encoder()
    with __import__("torch").no_grad():
        model.classifier.weight.normal_(0, 0.5)  # a head that says something
    save_cross_encoder(model, tmp_path)
    assert (tmp_path / "model.safetensors").stat().st_size < 25e6
    loaded, _ = cross_encoder(tmp_path)
    messages, replies = ["How was work?", ""], [CHANDLER_LIKE, MOVIE_LINE]
    before = cross_probabilities(model.eval(), tokenizer, messages, replies)
    after = cross_probabilities(loaded, tokenizer, messages, replies)
    assert np.allclose(before, after, atol=2e-2)
    assert not np.allclose(before[0], 0.5, atol=1e-3)


def test_best_of_returns_the_best_scored_of_its_candidates(engine, style_model, monkeypatch):
    """The real engine (embedded model) and the scorer trained above."""
    scorer = StyleScorer(style_model)
    monkeypatch.setattr(engine, "scorer", scorer)
    n = 4
    conversations = [
        [{"speaker": "Joey", "text": "How was work today?"}],
        [{"speaker": "Monica", "text": "Did you eat my sandwich?"}],
    ]
    sampling = Sampling(temperature=1.3, top_p=1.0, max_new_tokens=12, seed=7, best_of=n)
    chosen = engine.generate(conversations, sampling)
    assert len(chosen) == len(conversations)
    # The same batch without the choice: each request's n candidates, in order.
    candidates = engine.generate([turns for turns in conversations for _ in range(n)], replace(sampling, best_of=1))
    for index, (turns, reply) in enumerate(zip(conversations, chosen)):
        group = candidates[index * n : (index + 1) * n]
        texts = [candidate.text for candidate in group]
        assert reply in group
        assert len(set(texts)) > 1, "sampling should give a real choice"
        message = [turns[-1]["text"]] * n
        totals = np.array(scorer.score(texts)) + RELEVANCE_WEIGHT * np.array(scorer.relevance(message, texts))
        assert reply.text == texts[int(np.argmax(totals))]
    # Streaming (the chat, the backend's SSE) honours best_of: the chosen reply, in one piece.
    alone = engine.generate(conversations[:1], sampling)[0].text
    assert list(engine.stream(conversations[0], sampling)) == [alone]


def test_best_of_is_off_by_default_and_never_picks_an_empty_reply(style_model):
    assert Sampling().best_of == 1
    # Greedy decoding would give n identical candidates: one is generated, and streaming stays word by word.
    assert Sampling(temperature=0, best_of=4).candidates == 1 and Sampling(best_of=4).candidates == 4
    scorer = StyleScorer(style_model)
    assert scorer.choose(["How was work?"], [["", CHANDLER_LIKE, MOVIE_LINE]]) == [1]
    assert scorer.choose(["How was work?"], [[MOVIE_LINE, CHANDLER_LIKE]], relevance_weight=0) == [1]
