"""`python -m serve chat` as a user runs it (subprocesses on the real embedded model)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--adapter", "none", "--temperature", "0", "--max-new-tokens", "6"]


def chat(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serve", "chat", *args],
        cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for word in words:
        assert word in lines[0]


def test_message_prints_one_reply():
    result = chat("--message", "How you doin'?", *FAST)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].strip()
    assert "<|" not in lines[0] and "Traceback" not in result.stderr


def test_interactive_keeps_history_resets_and_quits():
    result = chat(*FAST, stdin="Hi Chandler!\n/reset\n/nonsense\nStill there?\n/quit\nnever read\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("Chandler> ") == 2
    assert "(conversation forgotten)" in out and "unknown command /nonsense" in out


def test_missing_adapter_folder(tmp_path):
    assert_one_line_error(chat("--message", "hi", "--adapter", str(tmp_path / "nowhere")), "nowhere", "adapter")


def test_adapter_for_another_base_model(tiny_adapter):
    assert_one_line_error(chat("--message", "hi", "--adapter", str(tiny_adapter)), "adapter made for")


def test_model_not_available_offline():
    assert_one_line_error(chat("--message", "hi", "--base-model", "nobody/no-such-model-anywhere"), "cannot load base model")


@pytest.mark.parametrize("flags", [["--message", "  "], ["--message", "hi", "--max-new-tokens", "0"]])
def test_bad_flags(flags):
    assert_one_line_error(chat(*flags))


def test_rerank_switch_reads_on_or_off_only():
    result = chat("--message", "hi", "--rerank", "maybe")
    assert result.returncode == 2 and "--rerank: 'maybe': use on or off" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    result = chat("--message", "hi", CHANDLER_RERANK="nah")
    assert result.returncode == 2 and "'nah': use on or off" in result.stderr
