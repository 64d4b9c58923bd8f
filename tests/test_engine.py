"""The engine on the real embedded model (small max_new_tokens), and on a tiny random Llama folder."""
import threading

import pytest
import torch

from data.dialogue import CHARACTER
from serve.engine import Engine, Sampling, resolve_adapter
from serve.engine.loading import ModelLoadError, load_tokenizer

GREEDY = Sampling(temperature=0, max_new_tokens=6)
CONVERSATIONS = [
    [{"speaker": "Joey", "text": "How you doin'?"}],
    [
        {"speaker": "Monica", "text": "Did you eat the last cookie?"},
        {"speaker": CHARACTER, "text": "Define 'eat'."},
        {"speaker": "Monica", "text": "Chandler!"},
    ],
    [{"speaker": "Ross", "text": "We were on a break! A break, everyone, a real actual break from each other."}],
]


def test_a_batch_gives_one_reply_each_equal_to_one_by_one(engine):
    batch = engine.generate(CONVERSATIONS, GREEDY)
    single = [engine.generate([turns], GREEDY)[0] for turns in CONVERSATIONS]
    assert len(batch) == len(CONVERSATIONS)
    assert batch == single
    assert all(reply.text.strip() for reply in batch)
    assert all(1 <= reply.completion_tokens <= GREEDY.max_new_tokens for reply in batch)
    # Prompts of different lengths were left-padded to one width, yet each counts its own tokens.
    assert [r.prompt_tokens for r in batch] == [engine.count_tokens(engine.prompt(t)) for t in CONVERSATIONS]
    assert len({r.prompt_tokens for r in batch}) == len(CONVERSATIONS)


def test_a_seed_makes_sampling_reproducible_without_touching_the_global_rng(engine):
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=4, seed=1234)
    before = torch.get_rng_state()
    first = engine.generate(CONVERSATIONS[:2], sampling)
    assert torch.equal(torch.get_rng_state(), before)
    assert engine.generate(CONVERSATIONS[:2], sampling) == first


def test_stream_yields_pieces_of_the_reply(engine):
    pieces = list(engine.stream(CONVERSATIONS[0], Sampling(temperature=0, max_new_tokens=8)))
    streamed = "".join(pieces)
    assert len(pieces) > 1 and all(pieces)
    assert "<|" not in streamed
    # generate() may drop a sentence the token limit cut off; the stream cannot take text back.
    assert streamed.startswith(engine.generate([CONVERSATIONS[0]], Sampling(temperature=0, max_new_tokens=8))[0].text)


class ScriptedModel:
    """Stands in for the model in stream(): 'generates' a fixed text token by token, honouring
    the stopping criteria, and records how many tokens it produced."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, text: str) -> None:
        self.tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        self.produced = 0

    def generate(self, input_ids, streamer, stopping_criteria, **kwargs):
        ids = input_ids
        streamer.put(ids)
        for token in self.tokens:
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            self.produced += 1
            streamer.put(torch.tensor([token]))
            if any(bool(criterion(ids, None).all()) for criterion in stopping_criteria):
                break
        streamer.end()


def scripted_engine(engine, text: str) -> tuple[Engine, ScriptedModel]:
    fake = Engine.__new__(Engine)
    fake.__dict__.update(engine.__dict__)
    fake._lock = threading.Lock()
    fake.model = ScriptedModel(engine.tokenizer, text)
    return fake, fake.model


def test_stream_stops_at_another_speakers_line_and_cleans_as_it_goes(engine):
    script = "Chandler: Oh, (sighs) I'd love to, @everyone. Really.\nJoey: Great, then you're paying for the pizza and the beer and everything else tonight."
    fake, model = scripted_engine(engine, script)
    pieces = list(fake.stream(CONVERSATIONS[0], GREEDY))
    assert "".join(pieces) == "Oh, I'd love to, @\u200beveryone. Really."
    assert len(pieces) > 2
    assert model.produced < len(model.tokens) - 10  # stopped at `Joey:`, not at the end of his line


def test_stream_of_nothing_but_stage_directions_still_says_something(engine):
    fake, _ = scripted_engine(engine, "(stares at the ceiling)")
    assert "".join(fake.stream(CONVERSATIONS[0], GREEDY)).strip()


def test_serving_builds_the_prompt_training_builds(engine):
    from train.examples import encode

    long_ago = {"speaker": "Phoebe", "text": "This turn is so old and so long that it falls out of the context budget. " * 3}
    turns = [long_ago, *CONVERSATIONS[1]]
    training_tokenizer = load_tokenizer("embedded")  # a fresh one, as train/ loads it
    example = encode({"context": turns, "reply": "Could I BE any more guilty?"}, training_tokenizer)
    prompt_ids = engine.tokenizer(engine.prompt(turns), add_special_tokens=False)["input_ids"]
    assert example["input_ids"][: len(prompt_ids)] == prompt_ids
    assert set(example["labels"][: len(prompt_ids)]) == {-100}
    assert example["labels"][len(prompt_ids)] != -100  # the reply starts right where the prompt ends
    assert "Phoebe" not in engine.prompt(turns) and "Define 'eat'." in engine.prompt(turns)


def test_hugging_face_folder_tiny_llama(tiny_llama):
    tiny = Engine(base_model=str(tiny_llama), adapter="default", device="cpu")
    assert tiny.adapter is None  # "default" means the shipped adapter only for the embedded base
    replies = tiny.generate(CONVERSATIONS[:2], Sampling(temperature=0, max_new_tokens=4))
    assert len(replies) == 2 and all(reply.text for reply in replies)
    assert all(1 <= reply.completion_tokens <= 4 for reply in replies)
    assert replies == [tiny.generate([turns], Sampling(temperature=0, max_new_tokens=4))[0] for turns in CONVERSATIONS[:2]]


def test_tiny_llama_with_its_adapter_and_4bit(tiny_llama, tiny_adapter):
    from peft import PeftModel

    tiny = Engine(base_model=str(tiny_llama), adapter=tiny_adapter, quantization="4bit", device="cpu")
    assert isinstance(tiny.model, PeftModel) and tiny.adapter == tiny_adapter
    assert tiny.quantized
    assert any(type(module).__name__ == "Linear4bit" for module in tiny.model.modules())
    assert tiny.generate(CONVERSATIONS[:1], Sampling(temperature=0, max_new_tokens=2))[0].text


def test_resolve_adapter(tmp_path, monkeypatch):
    shipped = tmp_path / "chandler"
    monkeypatch.setattr("serve.engine.loading.DEFAULT_ADAPTER", shipped)
    assert resolve_adapter("default", "embedded") is None  # not trained yet
    shipped.mkdir()
    (shipped / "adapter_config.json").write_text("{}")
    assert resolve_adapter("default", "embedded") == shipped
    assert resolve_adapter("default", "unsloth/Llama-3.2-1B-Instruct") is None
    assert resolve_adapter("none", "embedded") is None and resolve_adapter(None, "embedded") is None
    assert resolve_adapter(str(tmp_path / "x"), "embedded") == tmp_path / "x"


def test_bad_adapter_and_model_raise_one_line_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="not a LoRA adapter folder") as missing:
        Engine(adapter=tmp_path / "no-such-adapter")
    with pytest.raises(ModelLoadError, match="cannot load base model") as offline:
        Engine(base_model="nobody/no-such-model-anywhere", adapter=None)
    with pytest.raises(ModelLoadError, match="unknown quantization"):
        Engine(base_model="embedded", adapter=None, quantization="8bit")
    assert "\n" not in str(missing.value) and "\n" not in str(offline.value)


def test_an_empty_conversation_is_refused(engine):
    with pytest.raises(ValueError):
        engine.prompt([])
    assert engine.generate([], GREEDY) == []
