"""The command line checks every argument before a model loads (or a folder is made), names
the flag in its messages, suggests close matches, and fails fast when the hub is unreachable.

Every test here replaces ``load_model`` with one that fails the test if called, except where
a load is the point."""

from __future__ import annotations

import os
import re
import socket
import threading
import time

import pytest

import mechlens.models
from mechlens import cli
from mechlens.cli import main


@pytest.fixture
def no_load(monkeypatch):
    def load_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(mechlens.models, "load_model", load_model)
    monkeypatch.delenv("MECHLENS_DEBUG", raising=False)


def _fails(capsys, *args) -> str:
    """Run ``mechlens ARGS``: it must exit with status 2 and print one ``error:`` line."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.removeprefix("error: ").strip()


def test_a_misspelt_stage_is_rejected_before_the_model_loads(no_load, capsys, tmp_path):
    out = tmp_path / "out"
    t = time.perf_counter()
    msg = _fails(capsys, "reproduce", "sentiment", "--stage", "circut", "--out", str(out))
    assert msg == (
        "--stage circut is not a stage. Did you mean --stage circuit? Stages: baseline, "
        "patching, directions, circuit, motif, caa, attention"
    )
    assert not out.exists()  # no empty output folder
    assert time.perf_counter() - t < 30  # imports only, no model


def test_a_misspelt_model_gets_the_closest_known_name(no_load, capsys, tmp_path):
    msg = _fails(capsys, "baseline", "--model", "gpt2-smal", "--out", str(tmp_path / "o"))
    assert msg.startswith("--model gpt2-smal is not a model mechlens knows. Did you mean --model gpt2-small? ")
    assert "--model takes smollm2-135m (bundled, offline)" in msg
    assert "load_model" not in msg  # the CLI's words, not Python's
    msg = _fails(capsys, "baseline", "--model", "smollm2-135", "--out", str(tmp_path / "o"))
    assert "Did you mean --model smollm2-135m?" in msg
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nonexistent/dir"], "--model /nonexistent/dir: no such folder. --model takes"),
        (["--device", "tpu9"], "--device tpu9 is not a torch device; use --device cpu, cuda, cuda:1 or mps"),
        (["--batch-size", "0"], "--batch-size 0: give a positive number of sequences per forward pass"),
    ],
)
def test_bad_arguments_name_their_flag(no_load, capsys, tmp_path, args, message):
    msg = _fails(capsys, "baseline", *args, "--out", str(tmp_path / "o"))
    assert msg.startswith(message)
    assert not (tmp_path / "o").exists()


def test_out_must_be_a_folder(no_load, capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert _fails(capsys, "baseline", "--out", str(f)) == f"--out {f} is a file; give a folder (it is made if missing)"


def test_a_model_folder_without_config(no_load, capsys, tmp_path):
    msg = _fails(capsys, "baseline", "--model", str(tmp_path), "--out", str(tmp_path / "o"))
    assert msg.startswith(f"--model {tmp_path}: the folder holds no config.json")


def test_cuda_on_a_machine_without_it(no_load, capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    msg = _fails(capsys, "baseline", "--device", "cuda", "--out", str(tmp_path / "o"))
    assert msg == "--device cuda: this machine has no CUDA GPU torch can use; use --device cpu"


def test_valid_arguments_pass_the_checks():
    assert cli.check_model("smollm2-135m") == "smollm2-135m"
    assert cli.check_model("GPT2-Small") == "GPT2-Small"  # TransformerLens names ignore case
    assert cli.check_model("EleutherAI/pythia-160m") == "EleutherAI/pythia-160m"
    assert cli.check_model("someone/some-model") == "someone/some-model"  # any hub repository
    assert cli.check_stages(["circuit", "motif"]) == ["circuit", "motif"]
    assert cli.check_stages(None) is None
    assert cli.check_device("cpu") == "cpu"


def test_unreachable_hub_fails_fast_without_loading(no_load, capsys, tmp_path, monkeypatch):
    # a port nothing listens on: the probe is refused at once
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(cli, "_hub_cached", lambda name: False)
    t = time.perf_counter()
    msg = _fails(capsys, "baseline", "--model", "gpt2-small", "--out", str(tmp_path / "o"))
    assert time.perf_counter() - t < 30
    assert msg.startswith(f"--model gpt2-small needs the Hugging Face hub (http://127.0.0.1:{port} does not answer: ConnectError")
    assert msg.endswith("is not in the local cache; run with --model smollm2-135m (bundled, offline)")
    assert not (tmp_path / "o").exists()


def test_hub_probe_gives_up_after_its_timeout(monkeypatch):
    # a server that accepts the connection and never answers
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()
    threading.Thread(target=lambda: (server.accept(), stop.wait(10)), daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    try:
        t = time.perf_counter()
        why = cli._hub_problem(timeout=0.5)
        took = time.perf_counter() - t
    finally:
        stop.set()
        server.close()
    assert "does not answer: ReadTimeout" in why
    assert took < 5


def test_unreachable_hub_loads_a_cached_model_offline(capsys, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(cli, "_hub_problem", lambda timeout=3.0: "https://huggingface.co does not answer: ConnectError")
    monkeypatch.setattr(cli, "_hub_cached", lambda name: True)
    seen = {}

    def load_model(name, device=None):
        seen.update(name=name, env=os.environ.get("HF_HUB_OFFLINE"), constant=constants.HF_HUB_OFFLINE)
        raise mechlens.models.ModelNotAvailableError("stop here")

    monkeypatch.setattr(mechlens.models, "load_model", load_model)
    with pytest.raises(SystemExit):
        main(["baseline", "--model", "gpt2-small", "--out", str(tmp_path / "o")])
    assert seen == {"name": "gpt2-small", "env": "1", "constant": True}
    err = capsys.readouterr().err
    assert "note: the hub is unreachable (https://huggingface.co does not answer: ConnectError); loading gpt2-small from the local cache" in err


def test_a_hub_load_failure_names_the_flag(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_hub_problem", lambda timeout=3.0: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def load_model(name, device=None):
        try:
            raise OSError("someone/some-model is not a local folder and is not a valid model identifier\nmore")
        except OSError as exc:
            raise mechlens.models.ModelNotAvailableError("needs the hub ... load_model('smollm2-135m')") from exc

    monkeypatch.setattr(mechlens.models, "load_model", load_model)
    msg = _fails(capsys, "baseline", "--model", "someone/some-model", "--out", str(tmp_path / "o"))
    assert msg == (
        "--model someone/some-model did not load from the Hugging Face hub (someone/some-model is "
        "not a local folder and is not a valid model identifier); run with --model smollm2-135m "
        "(bundled, offline)"
    )


def _help(capsys, *args) -> str:
    with pytest.raises(SystemExit) as info:
        main([*args, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_help_is_wrapped_by_paragraph_and_flags_have_no_type(capsys):
    text = _help(capsys, "reproduce", "sentiment")
    # the docstring's paragraph is re-wrapped: no line ends after a word or two
    paragraph = text.split("\n\n")[2]
    assert paragraph.lstrip().startswith("Stages:")
    lines = paragraph.splitlines()
    assert len(lines) >= 3 and all(len(line) > 60 for line in lines[:-1]), paragraph
    assert re.search(r"^\s+--fast\s+A small version", text, re.M)
    assert re.search(r"^\s+--force\s+Re-run", text, re.M)
    assert "<bool>" not in text and "<str>" not in text
    assert re.search(r"--stage NAME\s+Run only this stage", text)
    top = _help(capsys)
    assert "..." not in top.split("Commands:")[1]  # no command summary cut short
