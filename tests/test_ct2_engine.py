"""The ct2 engine on the real embedded model with the shipped adapter (small max_new_tokens), the
conversion cache on a tiny random Llama, and the engine choice (`load_engine`)."""
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from data.dialogue import CHARACTER
from serve.engine import Engine, ModelLoadError, Sampling, load_engine
from serve.engine.cleanup import FALLBACKS, turn_end
from serve.engine.ct2_convert import ConversionError
from serve.engine.ct2_engine import Ct2Engine

OPENERS = [
    ("Joey", "How you doin'?"), ("Monica", "Who ate the last cookie?"), ("Ross", "We were on a break!"),
    ("Rachel", "Do you think I should go to Paris?"), ("Phoebe", "Do you believe in ghosts?"),
    ("Joey", "What's your job again, exactly?"), ("Monica", "Why is the apartment such a mess?"),
]
CONVERSATIONS = [[{"speaker": name, "text": text}] for name, text in OPENERS] + [[
    {"speaker": "Monica", "text": "Did you eat the last cookie?"},
    {"speaker": CHARACTER, "text": "Define 'eat'."},
    {"speaker": "Monica", "text": "Chandler!"},
]]
# CTranslate2 applies the repetition penalty to the reply's tokens only, transformers to the
# prompt's too (see ct2_engine.py), so the model is compared without one.
GREEDY = Sampling(temperature=0, max_new_tokens=12, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def torch_adapter_engine():
    return Engine(device="cpu")  # the shipped adapter


@pytest.fixture(scope="module")
def ct2_float32():
    return Ct2Engine(compute_type="float32")


@pytest.fixture(scope="module")
def ct2_int8():
    return Ct2Engine(compute_type="int8")


def test_greedy_float32_gives_the_torch_engines_tokens(torch_adapter_engine, ct2_float32):
    assert len(CONVERSATIONS) == 8 and ct2_float32.adapter == torch_adapter_engine.adapter is not None
    expected = torch_adapter_engine.generate(CONVERSATIONS, GREEDY)
    assert ct2_float32.generate(CONVERSATIONS, GREEDY) == expected  # text, prompt and completion token counts
    assert [ct2_float32.generate([turns], GREEDY)[0] for turns in CONVERSATIONS] == expected
    assert len({reply.text for reply in expected}) > 3


def test_reply_log_probs_are_the_torch_models_own(torch_adapter_engine, ct2_float32):
    conversations, replies = [CONVERSATIONS[-1], CONVERSATIONS[0]], ["I was framed by the cookie.", "Fine. You?"]
    tokenizer = torch_adapter_engine.tokenizer
    reply_ids = tokenizer(replies[0], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([torch_adapter_engine.prompt_ids(conversations[0]) + reply_ids])
    with torch.no_grad():
        logits = torch_adapter_engine.model(input_ids=ids).logits[0, -len(reply_ids) - 1 : -1]
    expected = torch.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(reply_ids)[:, None])[:, 0]
    # a batch of two prompts of different lengths: the torch engine pads, ct2 does not
    for engine in (torch_adapter_engine, ct2_float32):
        cookie, fine = engine.reply_log_probs(conversations, replies)
        assert len(cookie) == len(reply_ids) and len(fine) == len(engine.scored_ids(conversations[1], replies[1])[0]) - len(engine.prompt_ids(conversations[1]))
        assert torch.allclose(torch.tensor(cookie), expected, atol=1e-2)
        assert fine == pytest.approx(engine.reply_log_probs(conversations[1:], replies[1:])[0], abs=1e-2)


def test_int8_replies_are_clean(ct2_int8):
    # int8 activations are quantized per batch, so a reply may differ a little from the one-by-one reply.
    sampling = Sampling(temperature=0, max_new_tokens=16)
    batch = ct2_int8.generate(CONVERSATIONS, sampling)
    for reply, turns in zip(batch, CONVERSATIONS):
        assert reply.text.strip() and "<|" not in reply.text and turn_end(reply.text) is None
        assert reply.text not in FALLBACKS  # the model's own words, not the clean-up's stand-in
        assert 1 <= reply.completion_tokens <= sampling.max_new_tokens
        assert reply.prompt_tokens == len(ct2_int8.prompt_ids(turns))


def test_int8_stream_joins_to_generates_text(ct2_int8):
    sampling = Sampling(temperature=0, max_new_tokens=24)
    for turns in CONVERSATIONS[:3]:
        pieces = list(ct2_int8.stream(turns, sampling))
        assert all(pieces)
        assert "".join(pieces) == ct2_int8.generate([turns], sampling)[0].text


def test_a_stream_left_early_stops_generating(ct2_int8):
    stream = ct2_int8.stream(CONVERSATIONS[0], Sampling(temperature=0, max_new_tokens=200, repetition_penalty=1.0))
    assert next(stream)
    stream.close()  # the reader went away: generate_tokens is closed and the generator is free again
    assert ct2_int8.generate(CONVERSATIONS[:1], Sampling(temperature=0, max_new_tokens=4))[0].text


def test_a_seed_makes_sampling_reproducible(ct2_int8):
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=8, seed=1234)
    first = ct2_int8.generate(CONVERSATIONS[:3], sampling)
    assert ct2_int8.generate(CONVERSATIONS[:3], sampling) == first
    others = [ct2_int8.generate(CONVERSATIONS[:3], Sampling(temperature=1.0, top_p=1.0, max_new_tokens=8, seed=seed)) for seed in (1, 2)]
    assert any(replies != first for replies in others)


def _changed_adapter(adapter, folder):
    """A copy of `adapter` whose LoRA weights differ."""
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes((adapter / "adapter_config.json").read_bytes())
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({name: tensor + 0.01 for name, tensor in weights.items()}, folder / "adapter_model.safetensors")
    return folder


def test_the_conversion_is_cached_by_base_and_adapter(tiny_llama, tiny_adapter, tmp_path, monkeypatch):
    monkeypatch.setenv("CHANDLER_CACHE_DIR", str(tmp_path / "cache"))
    first = Ct2Engine(str(tiny_llama), tiny_adapter, compute_type="float32")
    again = Ct2Engine(str(tiny_llama), tiny_adapter, compute_type="float32")
    assert again.folder == first.folder and first.folder.is_relative_to(tmp_path / "cache")
    changed = Ct2Engine(str(tiny_llama), _changed_adapter(tiny_adapter, tmp_path / "changed"), compute_type="float32")
    bare = Ct2Engine(str(tiny_llama), None, compute_type="float32")
    assert len({first.folder, changed.folder, bare.folder}) == 3
    assert sorted(p.name for p in (tmp_path / "cache" / "ct2").iterdir()) == sorted(p.name for p in (first.folder, changed.folder, bare.folder))
    replies = changed.generate(CONVERSATIONS[:2], Sampling(temperature=0, max_new_tokens=4))
    assert all(reply.text for reply in replies)


@pytest.fixture(scope="module")
def tiny_gpt_neo(tmp_path_factory):
    """A Hugging Face folder of an architecture CTranslate2 does not convert (GPT-Neo)."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    from serve.engine.loading import load_tokenizer

    folder = tmp_path_factory.mktemp("tiny-gpt-neo")
    tokenizer = load_tokenizer("embedded")
    config = GPTNeoConfig(vocab_size=len(tokenizer), hidden_size=64, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                          max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPTNeoForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_an_unconvertible_base_is_one_line_under_ct2_and_torch_under_auto(tiny_gpt_neo, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CHANDLER_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ConversionError, match="CTranslate2 cannot convert base model .*gpt_neo") as refused:
        load_engine("ct2", str(tiny_gpt_neo), adapter=None, device="cpu")
    assert "\n" not in str(refused.value)
    with caplog.at_level(logging.WARNING, logger="serve.engine"):
        engine = load_engine("auto", str(tiny_gpt_neo), adapter=None, device="cpu")
    assert isinstance(engine, Engine)
    assert [r.getMessage() for r in caplog.records if "using the torch engine" in r.getMessage()] == [f"{refused.value}; using the torch engine"]
    assert engine.generate(CONVERSATIONS[:1], Sampling(temperature=0, max_new_tokens=3))[0].text


def test_load_engine_picks_by_name_and_refuses_unknown_ones(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("CHANDLER_CACHE_DIR", str(tmp_path / "cache"))
    assert isinstance(load_engine("auto", str(tiny_llama), None, device="cpu"), Ct2Engine)
    assert load_engine("ct2", str(tiny_llama), None, quantization="none", device="cpu").compute_type == "float32"
    assert isinstance(load_engine("torch", str(tiny_llama), None, device="cpu"), Engine)
    assert isinstance(load_engine("auto", str(tiny_llama), None, quantization="4bit", device="cpu"), Engine)  # bitsandbytes is torch's
    with pytest.raises(ModelLoadError, match="unknown engine"):
        load_engine("onnx", str(tiny_llama), None)
    with pytest.raises(ModelLoadError, match="the torch engine's"):
        load_engine("ct2", str(tiny_llama), None, quantization="4bit")
