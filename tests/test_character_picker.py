"""The optional LLM picker (`serve/character/picker.py`): his top lines go to an OpenAI-compatible
chat API, and the line its model names is sent. The API stands in for a hosted or self-run LLM
(the internet is out of reach here): a real HTTP server on loopback (`train/chat_api.py`) that
records each request and gives the answers a test queues."""
from __future__ import annotations

import json
import logging
from collections import deque

import pytest
from test_character_policy import JOB, lines_folder, policy, selector_folder, write_round  # noqa: F401 (fixtures)
from test_chat_cli import assert_one_line_error, chat

from serve.character.picker import LlmPicker, configured_picker
from serve.settings import SettingsError, load
from train.chat_api import Answer, ChatApi

KEY = "sk-test-picker-key"


@pytest.fixture
def chat_api():
    """The stand-in API; tests queue its answers as (status, content, delay); unqueued: "1"."""
    queued: deque[Answer] = deque()
    api = ChatApi(lambda body: queued.popleft() if queued else (200, "1", 0.0))
    api.answers = queued
    yield api
    api.close()


def top_lines(selector_folder, lines_folder, turns):  # noqa: F811
    """The fixtures' top lines for `turns`, in the policy's own order (no picker)."""
    quoting = policy("quote", selector_folder, lines_folder, threshold=-5.0)
    return quoting.index.top(quoting.selector.conversations([turns]), quoting.top_k, [turns])[0]


def shown_options(body: dict) -> list[str]:
    """The numbered options of a picker request, one "N. text" a line."""
    return body["messages"][1]["content"].split("Options:\n")[1].splitlines()


def test_the_line_the_model_names_is_sent_and_only_the_selectors_turns_leave(chat_api, selector_folder, lines_folder):  # noqa: F811
    turns = [{"speaker": "Monica", "text": f"Old news number {n}."} for n in range(4)] + JOB
    own = top_lines(selector_folder, lines_folder, turns)
    chat_api.answers.append((200, " 3.", 0.0))
    quoting = policy("quote", selector_folder, lines_folder, threshold=-5.0)
    quoting.picker = LlmPicker(chat_api.url, "judge-7b", KEY)
    chosen, = quoting.choose([turns], [[]])
    assert chosen.text == own[2].text != own[0].text
    assert chosen.source == {"kind": "quote", "season": own[2].season, "episode": own[2].episode}
    (headers, body), = chat_api.requests
    assert headers["Authorization"] == f"Bearer {KEY}" and body["model"] == "judge-7b" and body["temperature"] == 0
    system, user = body["messages"]
    assert "most in character" in system["content"]
    assert "Old news number 0." not in user["content"] and "Monica: Old news number 1." in user["content"]  # the last 4 turns
    assert user["content"].rstrip().endswith(f"{len(own)}. {own[-1].text}")
    assert all(f"{n}. {line.text}" in user["content"] for n, line in enumerate(own, 1))


def test_blends_threshold_applies_to_the_picked_line(chat_api, selector_folder, lines_folder):  # noqa: F811
    own = top_lines(selector_folder, lines_folder, JOB)
    weakest = min(range(len(own)), key=lambda i: own[i].score)
    assert own[0].score > own[weakest].score
    blend = policy("blend", selector_folder, lines_folder, threshold=(own[0].score + own[weakest].score) / 2)
    generated = ["Accounting, sort of."]
    assert blend.choose([JOB], [generated])[0].source["kind"] == "quote"  # its own first line clears the threshold
    blend.picker = LlmPicker(chat_api.url, "judge-7b")
    chat_api.answers.append((200, str(weakest + 1), 0.0))
    chosen, = blend.choose([JOB], [generated])
    assert chosen.text == generated[0] and chosen.source == {"kind": "generated"}
    assert "Authorization" not in chat_api.requests[0][0]  # no key, no header


def test_the_picker_reads_its_own_number_of_lines_beyond_the_policys(chat_api, selector_folder, lines_folder):  # noqa: F811
    own = top_lines(selector_folder, lines_folder, JOB)
    assert len(own) == 4  # all the fixtures' lines that may answer JOB
    quoting = policy("quote", selector_folder, lines_folder, threshold=-5.0)
    quoting.top_k = 2
    assert quoting.choose([JOB], [[]])[0].text == own[0].text  # no picker: the best of its own 2
    quoting.picker = LlmPicker(chat_api.url, "judge-7b", lines=4)
    chat_api.answers.append((200, "4", 0.0))
    chosen, = quoting.choose([JOB], [[]])
    options = shown_options(chat_api.requests[0][1])
    assert len(options) == 4 and chosen.text == options[3].removeprefix("4. ")
    assert chosen.text in {line.text for line in own[2:]}  # a line the policy's own top 2 does not hold


@pytest.mark.parametrize("answer", [(500, "overloaded", 0.0), (200, "I would go with the one about data.", 0.0),
                                    (200, "9", 0.0), (200, "2", 1.5)], ids=["error", "no number", "no such option", "too slow"])
def test_a_picker_without_a_usable_answer_leaves_the_policys_own_line(answer, chat_api, selector_folder, lines_folder, caplog):  # noqa: F811
    own = top_lines(selector_folder, lines_folder, JOB)
    quoting = policy("quote", selector_folder, lines_folder, threshold=-5.0)
    quoting.picker = LlmPicker(chat_api.url, "judge-7b", KEY, timeout_s=0.5)
    chat_api.answers.append(answer)
    with caplog.at_level(logging.WARNING, logger="serve.character.picker"):
        chosen, = quoting.choose([JOB], [[]])
    assert chosen.text == own[0].text
    warning, = [record.getMessage() for record in caplog.records]
    assert "the policy's own line stands" in warning and KEY not in warning and JOB[0]["text"] not in warning


def test_picker_settings_need_a_model_and_keep_the_key_secret(monkeypatch):
    for name, value in {"CHANDLER_PICKER_URL": "http://ollama:11434/v1", "CHANDLER_PICKER_API_KEY": KEY}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=r"^picker_url \(CHANDLER_PICKER_URL\) needs picker_model") as refused:
        load({})
    assert KEY not in str(refused.value)
    settings = load({"picker_model": "llama3.1:8b", "picker_timeout_s": 2, "picker_lines": 10})
    assert KEY not in repr(settings) and KEY not in repr(settings.args())
    picker = configured_picker(settings)
    assert picker.model == "llama3.1:8b" and picker.client.timeout.read == 2 and picker.lines == 10
    monkeypatch.delenv("CHANDLER_PICKER_URL")
    assert configured_picker(load({})) is None
    with pytest.raises(SettingsError, match="^picker_url: .*pattern"):
        load({"picker_url": "ollama:11434", "picker_model": "m"})
    with pytest.raises(SettingsError, match="^picker_lines: .*less than or equal to 20"):
        load({"picker_lines": 50})


def test_the_terminal_chat_sends_the_line_the_picker_names(chat_api):
    chat_api.answers.append((200, "2", 0.0))
    result = chat("--message", "I finally went back to the gym today.", "--reply-mode", "quote",
                  CHANDLER_PICKER_URL=chat_api.url, CHANDLER_PICKER_MODEL="judge-7b")
    assert result.returncode == 0, result.stderr
    (_, body), = chat_api.requests
    options = shown_options(body)
    assert result.stdout.split("  [S")[0].strip() == options[1].removeprefix("2. ")
    assert_one_line_error(chat("--message", "hi", CHANDLER_PICKER_URL=chat_api.url, CHANDLER_PICKER_MODEL=""), "CHANDLER_PICKER_MODEL")


def test_a_blind_round_with_a_picker_sends_the_line_its_model_names(selector_folder, lines_folder, tmp_path):  # noqa: F811
    from train.blind import BLEND_GENERATIONS, EVERYDAY, HELD_OUT, make_pairs

    data, out = tmp_path / "data", tmp_path / "round"
    data.mkdir()
    out.mkdir()
    test = [{"context": [{"speaker": "Monica", "text": f"Day {n}: so what is your job exactly?"}], "reply": "Sure.",
             "season": 9, "episode": 9} for n in range(HELD_OUT)]
    (data / "test.jsonl").write_text("".join(json.dumps(record) + "\n" for record in test))
    cached = {"n": BLEND_GENERATIONS, "replies": [["Accounting, sort of."] * BLEND_GENERATIONS] * (HELD_OUT + len(EVERYDAY))}
    (out / "generations.json").write_text(json.dumps(cached))  # the engine's candidates, as a round caches them
    policy("blend", selector_folder, lines_folder, threshold=-5.0)  # every line clears the threshold
    api = ChatApi(lambda body: (200, "2", 0.0))
    try:
        made = make_pairs(data, selector_folder, lines_folder, out, picker=LlmPicker(api.url, "judge-7b", lines=8))
    finally:
        api.close()
    assert made["picker"] == "judge-7b" and made["picker_lines"] == 8 and made["blend_quotes"] == HELD_OUT + len(EVERYDAY)
    asked = {}
    for _, body in api.requests:
        conversation, options = body["messages"][1]["content"].removeprefix("Conversation:\n").split("\n\nOptions:\n")
        asked[conversation] = options.splitlines()[1].removeprefix("2. ")
    examples = json.loads((out / "examples.json").read_text())
    assert len(asked) == len(examples) and all(example["blend"] == asked["\n".join(example["context"])] for example in examples)


def test_a_picker_model_is_checked_against_the_readers_picks(chat_api, tmp_path):
    from train.preferences import picker_agreement

    write_round(tmp_path / "round", [2, 2, 1, 3], second=[2, 1])
    chat_api.answers.extend([(200, "2", 0.0), (200, "Option 2.", 0.0), (200, "the first one", 0.0), (500, "overloaded", 0.0)])
    report = picker_agreement([tmp_path / "round"], LlmPicker(chat_api.url, "judge-7b"))
    assert report["readers_line"] == 0.5 and report["no_answer"] == 2 and report["positions"] == {2: 2}
    assert report["chance"] == pytest.approx(1 / 3, abs=1e-3) and report["second_reader_agreement"] == [0.5]
    key = json.loads((tmp_path / "round" / "key.json").read_text())
    for (_, body), item in zip(chat_api.requests, key.values()):  # the options in the order the readers saw them
        assert shown_options(body) == [f"{n}. {text}" for n, text in enumerate(item["options"], 1)]


def test_the_picker_check_asks_the_configured_model_or_says_what_is_missing(chat_api, tmp_path, monkeypatch, capsys):
    from train.__main__ import main

    write_round(tmp_path / "round", [1, 1, 3])
    monkeypatch.delenv("CHANDLER_PICKER_URL", raising=False)
    assert main(["preferences", "picker", "--rounds", str(tmp_path / "round")]) == 2
    error = capsys.readouterr().err.strip()
    assert "CHANDLER_PICKER_URL" in error and len(error.splitlines()) == 1
    monkeypatch.setenv("CHANDLER_PICKER_URL", chat_api.url)
    monkeypatch.setenv("CHANDLER_PICKER_MODEL", "judge-7b")
    assert main(["preferences", "picker", "--rounds", str(tmp_path / "round")]) == 0  # the stand-in always answers "1"
    assert "'readers_line': 0.667" in capsys.readouterr().out and len(chat_api.requests) == 3
