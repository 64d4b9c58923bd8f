"""`python -m train export --gguf`: the merged model as GGUF, loaded back by transformers' GGUF loader."""
import threading

import gguf
import pytest
import torch

from serve.engine import Engine, Sampling
from train.__main__ import main
from train.export import export_gguf

CONVERSATIONS = [
    [{"speaker": "Joey", "text": "How you doin'?"}],
    [{"speaker": "Ross", "text": "We were on a break!"}],
    [{"speaker": "Monica", "text": "Who ate the last cookie?"}],
    [{"speaker": "Rachel", "text": "Do you think I should go to Paris?"}],
]


@pytest.fixture(scope="module")
def torch_adapter_engine():
    return Engine(device="cpu")  # the shipped adapter


def reloaded_engine(engine: Engine, path) -> Engine:
    """The torch engine's prompts, stops and clean-up around the model read back from `path`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    reloaded = Engine.__new__(Engine)
    reloaded.__dict__.update(engine.__dict__, model=model, _lock=threading.Lock())
    return reloaded


def test_f16_export_gives_the_torch_engines_greedy_replies(torch_adapter_engine, tmp_path):
    path = export_gguf(tmp_path / "chandler-f16.gguf")
    types = {tensor.tensor_type for tensor in gguf.GGUFReader(path).tensors}
    assert types == {gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32}
    sampling = Sampling(temperature=0, max_new_tokens=8)
    assert reloaded_engine(torch_adapter_engine, path).generate(CONVERSATIONS, sampling) == torch_adapter_engine.generate(CONVERSATIONS, sampling)


def test_q8_0_export_through_the_cli_loads_and_replies(torch_adapter_engine, tmp_path):
    path = tmp_path / "chandler-q8_0.gguf"
    assert main(["export", "--gguf", str(path), "--type", "q8_0"]) == 0
    assert gguf.GGMLQuantizationType.Q8_0 in {tensor.tensor_type for tensor in gguf.GGUFReader(path).tensors}
    assert path.stat().st_size < 200 * 2**20  # about half of f16
    reply = reloaded_engine(torch_adapter_engine, path).generate(CONVERSATIONS[:1], Sampling(temperature=0, max_new_tokens=6))[0]
    assert reply.text.strip() and reply.completion_tokens >= 1


def test_export_of_a_missing_adapter_is_one_line(tmp_path, capsys):
    assert main(["export", "--gguf", str(tmp_path / "x.gguf"), "--adapter", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "not a LoRA adapter folder" in error and error.count("\n") == 1
    assert not (tmp_path / "x.gguf").exists()
