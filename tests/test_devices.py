"""load_model(device_map=..., n_devices=...): the arguments reach Hugging Face's loader (the
bridge then takes the placed model), bad values fail clearly. Two real devices cannot be
tested on a CPU machine; docs/scale.md has the GPU recipe."""

import pytest
import torch

from mechlens.models import load_model, placement, tiny, tiny_tokenizer


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("m") / "m"
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2))
    hf.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def spy(monkeypatch):
    """Records the keyword arguments of every AutoModelForCausalLM.from_pretrained call."""
    from transformers import AutoModelForCausalLM

    calls = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def record(cls, *args, **kwargs):
        calls.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(record))
    return calls


def test_device_map_reaches_the_loader_and_the_model_runs(saved_dir, spy):
    plain = load_model(saved_dir)
    split = load_model(saved_dir, device_map={"": "cpu"})
    assert "device_map" not in spy[0]
    assert spy[1]["device_map"] == {"": "cpu"}
    assert split.cfg.device in ("cpu", torch.device("cpu"))
    toks = plain.to_tokens("I thought this movie was great")
    with torch.no_grad():
        assert torch.equal(plain(toks), split(toks))
    load_model(saved_dir, device_map="auto")
    assert spy[2]["device_map"] == "auto"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_devices": 0}, ValueError, "n_devices=0"),
        ({"n_devices": True}, ValueError, "n_devices=True"),
        ({"n_devices": "2"}, ValueError, "positive int"),
        ({"device_map": "everywhere"}, ValueError, "device_map='everywhere'"),
        ({"device_map": ["cpu"]}, TypeError, "device_map="),
        ({"device_map": {"": "cpu"}, "device": "cpu"}, ValueError, "cannot be combined"),
        ({"n_devices": 2, "device": "cuda"}, ValueError, "cannot be combined"),
        ({"n_devices": 2, "device_map": "auto"}, ValueError, "pass one of them"),
    ],
)
def test_bad_placement_arguments_fail_before_loading(saved_dir, spy, kwargs, error, match):
    with pytest.raises(error, match=match):
        load_model(saved_dir, **kwargs)
    assert spy == []  # nothing was loaded


def test_n_devices_without_gpus_is_a_clear_error(saved_dir, spy, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="n_devices=2.*CUDA is not available"):
        load_model(saved_dir, n_devices=2)
    with pytest.raises(ValueError, match="n_devices=2.*CUDA is not available"):
        load_model("smollm2-135m", n_devices=2)
    assert spy == []
    assert placement(None, None, 1) == {} and placement(None, None, None) == {}


def test_n_devices_becomes_a_balanced_map_over_that_many_gpus(monkeypatch):
    import transformer_lens.utilities.multi_gpu as mg

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(mg, "_get_available_cuda_memory_for_device", lambda i: 1000 + i)
    assert placement(None, None, 2) == {"device_map": "balanced", "max_memory": {0: 1000, 1: 1001}}
    with pytest.raises(ValueError, match="only 2 CUDA GPU"):
        placement(None, None, 3)


def test_a_loaded_model_cannot_be_split_afterwards():
    m = tiny("gpt2", n_layers=1)
    assert load_model(m) is m
    with pytest.raises(ValueError, match="already loaded"):
        load_model(m, device_map="auto")
