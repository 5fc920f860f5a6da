"""Nothing silent, nothing stuck (issue #13): every bad input a user can make gets a clear
error that names the argument (or the file) and the fix, the model is left unhooked and
unchanged, and every file mechlens writes survives a crash.

Each test below is one class of failure from the issue, with its examples; the messages are
asserted, not only the exception types. ``guard`` checks after every test that no hook was
left on the tiny model and that its output is bit-for-bit what it was.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mechlens import validate
from mechlens.data import ContrastDataset, toy_movie_review
from mechlens.directions import (
    Direction,
    DirectionalPatchResult,
    ablate,
    add,
    directional_patch,
    fit,
)
from mechlens.fileio import DamagedFileError
from mechlens.models import ModelNotAvailableError, load_model, tiny
from mechlens.patching import activation_patch
from mechlens.steering import evaluate_steering, steer
from mechlens.viz import attention

REPO = Path(__file__).resolve().parents[1]


def _n_hooks(model) -> int:
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values())


@pytest.fixture(scope="module")
def model():
    return tiny("gpt2", n_layers=2, seed=0)


@pytest.fixture(scope="module")
def ds(model):
    return toy_movie_review(model, "test")[:6]


@pytest.fixture(scope="module")
def reference(model):
    toks = torch.tensor([[0, 5, 17, 42, 99, 3]])
    with torch.no_grad():
        return toks, model(toks).clone(), _n_hooks(model)


@pytest.fixture(autouse=True)
def guard(request, reference):
    """After every test: no hook left on the model and its output unchanged."""
    yield
    m = request.getfixturevalue("model")
    toks, logits, n = reference
    assert _n_hooks(m) == n, "a hook was left on the model"
    with torch.no_grad():
        assert torch.equal(m(toks), logits), "the model's output changed"


def raises(exc, match, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` raises ``exc`` whose message matches ``match``, fast."""
    t = time.perf_counter()
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    assert time.perf_counter() - t < 2.0, "a bad input should fail before any real work"
    return info.value


# --------------------------------------------------------------------------- silent wrong results


def test_dataset_records_its_tokenizer_and_keeps_it(model, ds):
    fp = validate.tokenizer_fingerprint(model)
    assert ds.tokenizer == fp and len(fp) == 16
    assert ds[:2].tokenizer == fp and ds.to("cpu").tokenizer == fp and ds.swapped().tokenizer == fp
    # same tokenizer, another architecture: accepted
    other = tiny("llama", n_layers=2, seed=0)
    assert validate.check_dataset(ds, other) is ds
    # a dataset built by hand from tensors records none and is not checked
    hand = ContrastDataset(ds.clean_tokens, ds.corrupt_tokens, ds.answers, positions={"ADJ": ds.positions["ADJ"]})
    assert hand.tokenizer is None
    assert activation_patch(model, hand, "resid_pre", layers=[0], positions="ADJ", progress=False).values.shape


def test_dataset_from_another_tokenizer_is_refused_by_every_method(model, ds):
    foreign = dataclasses.replace(ds, tokenizer="0123456789abcdef")
    msg = r"ds \('toy_movie_review/test'\) was built with a different tokenizer.*Build the dataset again with this model"
    raises(ValueError, msg, activation_patch, model, foreign, "resid_pre", layers=[0], positions="ADJ")
    raises(ValueError, msg, fit, model, foreign, "mean_diff", 1)
    d = Direction(vector=torch.ones(model.cfg.d_model), method="vector", layer=1, site="resid_pre", position=None)
    raises(ValueError, msg, directional_patch, model, foreign, d, progress=False)
    raises(ValueError, msg, ablate, model, foreign, d, progress=False)
    raises(ValueError, msg, evaluate_steering, model, foreign, torch.ones(model.cfg.d_model), [0.0], layers=1)
    from mechlens.baseline import baseline
    from mechlens.circuits import summarization_motif
    from mechlens.data.choices import polite_casual
    from mechlens.steering import answer_activations

    raises(ValueError, r"datasets\['x'\] \('toy_movie_review/test'\) was built with a different tokenizer", baseline,
           model, {"x": foreign})
    raises(ValueError, "ds .* was built with a different tokenizer", summarization_motif, model, foreign, direction=d)
    long_ctx = tiny("gpt2", n_layers=2, seed=0, n_ctx=256)  # the A/B prompts are longer than 128 tokens
    ab = polite_casual(long_ctx, "all", seed=0)
    assert ab.tokenizer == ds.tokenizer and ab.subset([0]).tokenizer == ds.tokenizer
    raises(ValueError, r"ds \('.*'\) was built with a different tokenizer", answer_activations, long_ctx,
           dataclasses.replace(ab, tokenizer="0123456789abcdef"), 1)


@pytest.mark.slow
def test_tiny_dataset_on_smollm2_is_refused(smollm2, model):
    # the issue's example: ids of the tiny tokenizer all fall inside smollm2's vocabulary
    ds = toy_movie_review(model, "test")[:4]
    assert int(ds.clean_tokens.max()) < smollm2.cfg.d_vocab
    raises(ValueError, "different tokenizer", activation_patch, smollm2, ds, "resid_pre", layers=[0], positions="ADJ")
    assert _n_hooks(smollm2) == 0


def test_sst_file_errors_name_the_file(tmp_path):
    from mechlens.data.sst import read_sst_tsv

    f = tmp_path / "sst.tsv"
    f.write_text("sentence\tlabel\ngood film\t1\nbad film\tpositive\n")
    raises(ValueError, r"sst.tsv, line 3: label 'positive' is not an integer", read_sst_tsv, f)
    raises(FileNotFoundError, r"missing.tsv does not exist", read_sst_tsv, tmp_path / "missing.tsv")
    f.write_bytes(b"\xff\xfe\x00bad")
    raises(ValueError, r"sst.tsv is not UTF-8 text", read_sst_tsv, f)


def test_non_finite_vectors_and_coefficients(model):
    nan = torch.full((model.cfg.d_model,), float("nan"))
    raises(ValueError, r"vector has 64 non-finite value\(s\) \(NaN\)", lambda: steer(model, nan, 1.0, layers=1).__enter__())
    raises(ValueError, r"coeff must be a finite number, got inf", lambda: steer(model, torch.ones(64), float("inf"), layers=1).__enter__())
    d = Direction(vector=torch.ones(64), method="vector", layer=1, site="resid_pre", position=None)
    raises(ValueError, r"coeff must be a finite number, got nan", lambda: add(model, d, float("nan")).__enter__())
    raises(TypeError, r"coeff must be a number, not str", lambda: add(model, d, "2").__enter__())
    raises(ValueError, r"direction has 64 non-finite value\(s\) \(NaN\)", lambda: add(model, nan, 1.0, layer=1).__enter__())
    raises(ValueError, r"Direction.vector has 64 non-finite value\(s\) \(NaN\)", dataclasses.replace, d, vector=nan)
    raises(ValueError, "non-zero .* got the zero vector", lambda: add(model, torch.zeros(64), 1.0, layer=1).__enter__())
    raises(ValueError, r"coeffs\[1\] must be a finite number", evaluate_steering, model,
           toy_movie_review(model, "test")[:2], torch.ones(64), [0.0, float("nan")], layers=1)
    from mechlens.steering import apply_weights

    name, p = next(iter(dict(model.named_parameters()).items()))
    w = {name.replace("._original_component", ""): torch.full_like(p, float("nan"))}
    raises(ValueError, "non-finite values", lambda: apply_weights(model, w, 1.0).__enter__())
    raises(ValueError, "coeff must be a finite number", lambda: apply_weights(model, {k: torch.zeros_like(p) for k in w}, float("inf")).__enter__())


def test_fit_checks_given_activations(model, ds):
    y = torch.tensor([0, 1] * 8)
    raises(ValueError, r"acts activations have width 66 but the model's d_model is 64", fit, model, ds, "pca", 1,
           acts=(torch.randn(16, 66), y))
    raises(ValueError, r"got \(16, 64\) and \(15,\)", fit, model, ds, "pca", 1, acts=(torch.randn(16, 64), y[:15]))
    X = torch.randn(16, 64)
    X[3, 5] = float("nan")
    e = raises(ValueError, r"acts activations has 1 non-finite value\(s\) \(NaN\)", fit, model, ds, "mean_diff", 1, acts=(X, y))
    assert "identical" not in str(e)


@pytest.mark.parametrize("bs", [0, -1, 2.5, True, "8"])
def test_batch_size_is_checked_everywhere(model, ds, bs):
    msg = rf"batch_size={bs!r} must be a positive int".replace("(", r"\(").replace(")", r"\)")
    d = Direction(vector=torch.ones(64), method="vector", layer=1, site="resid_pre", position=None)
    raises(ValueError, msg, fit, model, ds, "mean_diff", 1, batch_size=bs)
    raises(ValueError, msg, directional_patch, model, ds, d, batch_size=bs, progress=False)
    raises(ValueError, msg, ablate, model, ds, d, batch_size=bs, progress=False)
    raises(ValueError, msg, evaluate_steering, model, ds, torch.ones(64), [0.0], layers=1, batch_size=bs, progress=False)
    raises(ValueError, msg, activation_patch, model, ds, "resid_pre", batch_size=bs, progress=False)


def test_dataset_builder_counts(model):
    raises(ValueError, r"n_pairs=-1 must be an int >= 1 or None", toy_movie_review, model, "test", n_pairs=-1)
    raises(ValueError, r"n_pairs=0 must be an int >= 1", toy_movie_review, model, "test", n_pairs=0)
    raises(ValueError, r"filler=-5 must be an int >= 0", toy_movie_review, model, "test", filler=-5)
    raises(ValueError, r"filler=2.5 must be an int >= 0", toy_movie_review, model, "test", filler=2.5)
    assert toy_movie_review(model, "test", n_pairs=1).n_pairs == 1


def test_layers_must_be_ints(model, ds):
    for bad in ([True], [1.0], True, "1"):
        e = raises(ValueError, r"layers=.* (must be an int layer index|give an int)", activation_patch, model, ds,
                   "resid_pre", layers=bad, progress=False)
        assert "layers" in str(e)
    d = Direction(vector=torch.ones(64), method="vector", layer=1, site="resid_pre", position=None)
    raises(ValueError, r"layers=True must be an int layer index", directional_patch, model, ds, d, layers=[True], progress=False)
    raises(ValueError, r"layer=True must be an int layer index", fit, model, ds, "mean_diff", True)
    raises(ValueError, r"head True is out of range", activation_patch, model, ds, "z", heads=[True], progress=False)
    # numpy / torch integers are fine
    assert validate.check_layers(model, [torch.tensor(1)]) == [1]


def test_token_ids_must_be_whole_numbers(model, ds):
    raises(TypeError, r"clean_tokens must hold integer token ids, got torch.float32 values \(e.g. \[0.5, 41.5",
           ContrastDataset, ds.clean_tokens.float() + 0.5, ds.corrupt_tokens, ds.answers)
    raises(TypeError, r"answers must hold integer token ids", ContrastDataset, ds.clean_tokens, ds.corrupt_tokens,
           ds.answers.double())
    raises(ValueError, r"attention\(text=...\) takes a string or the integer token ids", attention, model,
           torch.tensor([1.0, 2.0]))


# --------------------------------------------------------------------------- raw tracebacks


def test_token_ids_outside_the_vocabulary(model, ds):
    big = ds.clean_tokens.clone()
    big[0, 1] = model.cfg.d_vocab + 7
    bad = dataclasses.replace(ds, clean_tokens=big, tokenizer=None)
    msg = rf"ds.clean_tokens has token id {model.cfg.d_vocab + 7} but the model's vocabulary has {model.cfg.d_vocab} tokens"
    d = Direction(vector=torch.ones(64), method="vector", layer=1, site="resid_pre", position=None)
    raises(ValueError, msg, fit, model, bad, "mean_diff", 1)
    raises(ValueError, msg, directional_patch, model, bad, d, progress=False)
    raises(ValueError, msg, ablate, model, bad, d, progress=False)
    raises(ValueError, r"token id 99999 but the model's vocabulary", attention, model, torch.tensor([1, 99999]))


def test_negative_token_ids(model, ds):
    neg = ds.clean_tokens.clone()
    neg[0, 0] = -3
    raises(ValueError, r"clean_tokens has negative token id -3", ContrastDataset, neg, ds.corrupt_tokens, ds.answers)
    raises(ValueError, r"negative token id -1", attention, model, torch.tensor([5, -1]))


def test_direction_layer_outside_the_model(model, ds):
    d = Direction(vector=torch.ones(64), method="vector", layer=5, site="resid_pre", position=None)
    msg = r"direction.layer=5 is outside the model \(layers 0..1\)"
    raises(ValueError, msg, directional_patch, model, ds, d, progress=False)
    raises(ValueError, msg, ablate, model, ds, d, progress=False)
    raises(ValueError, msg, lambda: add(model, d, 1.0).__enter__())
    # at an explicit layer it is fine
    assert isinstance(directional_patch(model, ds, d, layers=1, progress=False), DirectionalPatchResult)
    raises(ValueError, "components but the model's d_model is 64",
           directional_patch, model, ds, dataclasses.replace(d, vector=torch.ones(32)), layers=1, progress=False)


def test_load_model_of_a_missing_directory():
    raises(ModelNotAvailableError, r"/nonexistent/dir does not exist; load_model takes", load_model, "/nonexistent/dir")
    raises(ModelNotAvailableError, r"neither a known model, a hub name", load_model, "not a valid name!")


def test_load_model_of_a_file(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    raises(ModelNotAvailableError, r"weights.bin is a file; load_model takes a directory", load_model, f)


def _saved(model, ds, tmp_path):
    d = Direction(vector=torch.ones(64), method="vector", layer=1, site="resid_pre", position=None)
    res = directional_patch(model, ds, d, progress=False)
    return res, res.save(tmp_path / "res")


def test_tampered_result_folder_names_the_file(model, ds, tmp_path):
    res, path = _saved(model, ds, tmp_path)
    back = DirectionalPatchResult.load(path)
    assert torch.equal(back.ld_patched, res.ld_patched)
    assert sorted(p.name for p in path.iterdir()) == ["result.json", "tensors.safetensors"]  # no temporary files

    t = path / "tensors.safetensors"
    t.write_bytes(t.read_bytes()[:40])
    raises(DamagedFileError, r"res/tensors.safetensors is damaged .*save the DirectionalPatchResult again",
           DirectionalPatchResult.load, path)
    _saved(model, ds, tmp_path)
    j = path / "result.json"
    j.write_text(j.read_text()[:50])
    raises(DamagedFileError, r"res/result.json is damaged \(not valid JSON", DirectionalPatchResult.load, path)
    j.write_text("")
    raises(DamagedFileError, r"res/result.json is damaged \(empty\)", DirectionalPatchResult.load, path)
    _saved(model, ds, tmp_path)
    doc = json.loads(j.read_text())
    doc["fields"]["no_such_field"] = 1
    j.write_text(json.dumps(doc))
    raises(DamagedFileError, r"res/result.json is damaged \(its fields do not make a DirectionalPatchResult",
           DirectionalPatchResult.load, path)
    raises(FileNotFoundError, r"nowhere is not a folder holding a saved mechlens result", DirectionalPatchResult.load,
           tmp_path / "nowhere")


def test_evaluate_steering_batch_size_zero(model, ds):
    raises(ValueError, r"batch_size=0 must be a positive int", evaluate_steering, model, ds, torch.ones(64), [0.0, 1.0],
           layers=1, batch_size=0)


def _cli(*args, env=None, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mechlens.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


@pytest.mark.subprocess  # runs the command line as its own process
def test_cli_prints_one_line_and_exits_non_zero(tmp_path):
    r = _cli("reproduce", "sentiment", "--model", "/nonexistent/dir", "--out", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: --model /nonexistent/dir: no such folder. --model takes smollm2-135m (bundled, "
        "offline), a hub name such as gpt2-small or owner/name (needs the Hugging Face hub), or "
        "the folder of a saved Hugging Face model"
    ]
    r = _cli("--debug", "reproduce", "sentiment", "--model", "/nonexistent/dir", "--out", str(tmp_path))
    assert r.returncode != 0 and "Traceback" in r.stderr and "ArgumentError" in r.stderr


# --------------------------------------------------------------------------- a cache that never heals


def test_cache_pointing_at_a_file_fails_at_once(tmp_path, monkeypatch):
    f = tmp_path / "cachefile"
    f.write_text("")
    monkeypatch.setenv("MECHLENS_CACHE", str(f))
    raises(ModelNotAvailableError, r"cachefile is a file, not a folder \(set by MECHLENS_CACHE\)", load_model,
           "smollm2-135m")


def _fake_cache(folder: Path) -> Path:
    from safetensors.torch import save_file

    from mechlens.models import _write_manifest

    folder.mkdir(parents=True)
    save_file({"w": torch.arange(3_000_000, dtype=torch.float32)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "tokenizer.json").write_text('{"b": 2}')
    (folder / "tokenizer_config.json").write_text("{}")
    _write_manifest(folder)
    return folder


FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def test_cache_damage_is_detected(tmp_path):
    from mechlens.models import _MANIFEST, _cache_problem

    f = _fake_cache(tmp_path / "c")
    assert _cache_problem(f, FILES) is None
    m = f / "model.safetensors"
    data = m.read_bytes()
    m.write_bytes(data[: len(data) // 2])
    assert "model.safetensors is 6000" in _cache_problem(f, FILES)
    m.write_bytes(b"")
    assert "model.safetensors is 0 bytes" in _cache_problem(f, FILES)
    m.write_bytes(data[:-8] + b"\x00" * 8)  # same size, changed bytes
    assert "hash mismatch" in _cache_problem(f, FILES)
    m.write_bytes(data)
    (f / "config.json").write_text("")
    assert "config.json is 0 bytes" in _cache_problem(f, FILES)
    (f / "config.json").unlink()
    assert _cache_problem(f, FILES) == "config.json missing"
    # a cache from before manifests: checked by structure, and gets a manifest when sound
    g = _fake_cache(tmp_path / "g")
    (g / _MANIFEST).unlink()
    (g / "tokenizer.json").write_text('{"b": ')
    assert "tokenizer.json is not valid JSON" in _cache_problem(g, FILES)
    (g / "tokenizer.json").write_text('{"b": 2}')
    m = g / "model.safetensors"
    m.write_bytes(m.read_bytes()[:-100])
    assert "its header describes" in _cache_problem(g, FILES)
    m.write_bytes(data)
    assert _cache_problem(g, FILES) is None and (g / _MANIFEST).is_file()


def test_damaged_tiny_tokenizer_cache_is_rebuilt(tmp_path, monkeypatch):
    from mechlens.models import tiny_tokenizer

    monkeypatch.setenv("MECHLENS_CACHE", str(tmp_path))
    tiny_tokenizer.cache_clear()
    try:
        vocab = tiny_tokenizer().get_vocab()
        (tmp_path / "tiny-tokenizer-v1" / "tokenizer.json").write_text('{"trunc')
        tiny_tokenizer.cache_clear()
        assert tiny_tokenizer().get_vocab() == vocab
    finally:
        tiny_tokenizer.cache_clear()


@pytest.mark.slow
def test_damaged_model_cache_is_rebuilt_once_then_loads(tmp_path, monkeypatch, smollm2):
    from mechlens.models import CacheRebuiltWarning, cache_dir

    src = cache_dir() / "smollm2-135m-instruct"  # filled by the smollm2 fixture
    shutil.copytree(src, tmp_path / "smollm2-135m-instruct")
    monkeypatch.setenv("MECHLENS_CACHE", str(tmp_path))
    weights = tmp_path / "smollm2-135m-instruct" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 3)
    with pytest.warns(CacheRebuiltWarning, match=r"smollm2-135m-instruct is damaged \(model.safetensors is .* bytes"):
        m = load_model("smollm2-135m")
    toks = smollm2.to_tokens("I thought this movie was")
    with torch.no_grad():
        assert torch.allclose(m(toks), smollm2(toks), atol=1e-4)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheRebuiltWarning)
        load_model("smollm2-135m")  # rebuilt once: the second load is quiet


# --------------------------------------------------------------------------- a run that can never recover


@pytest.fixture(scope="module")
def repro_model():
    return tiny("gpt2", n_layers=2, seed=1, n_ctx=256)


def test_reproduce_recovers_from_a_damaged_marker_and_a_missing_figure(repro_model, tmp_path):
    from mechlens.reproduce import reproduce_sentiment

    out = tmp_path / "out"
    reproduce_sentiment(repro_model, out, fast=True, stages=["baseline", "attention"], progress=False)
    marker = out / "baseline" / "done.json"
    marker.write_text(marker.read_text()[:30])  # truncated, as by a crash with in-place writes
    # other stages, and --force, still run; the damaged stage is not done (not in the report)
    with pytest.warns(UserWarning, match=r"baseline/done.json is damaged \(not valid JSON.*the stage runs again"):
        report = reproduce_sentiment(repro_model, out, fast=True, force=True, stages=["attention"], progress=False)
    assert "## Attention patterns" in report.read_text() and "## Baseline" not in report.read_text()
    with pytest.warns(UserWarning, match="done.json is damaged"):
        reproduce_sentiment(repro_model, out, fast=True, stages=["baseline"], progress=False)
    assert isinstance(json.loads(marker.read_text())["numbers"]["test_clean_ld"], float)
    assert "## Baseline" in report.read_text()
    # a stage whose figure was deleted is not done: it runs again and the report links only real files
    (out / "attention" / "attention.png").unlink()
    with pytest.warns(UserWarning, match=r"stage 'attention' was done but 1 of its files are missing .*attention.png"):
        reproduce_sentiment(repro_model, out, fast=True, stages=["baseline", "attention"], progress=False)
    assert (out / "attention" / "attention.png").is_file()
    _assert_complete(out, ["baseline", "attention"])


def _assert_complete(out: Path, stages):
    import re

    from mechlens.reproduce import STAGES

    text = (out / "report.md").read_text()
    for name in stages:
        assert f"\n## {STAGES[name][0]}\n" in text, name
        json.loads((out / name / "done.json").read_text())
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert links and all((out / rel).is_file() for rel in links), links


def _tiny_model_dir(folder: Path) -> Path:
    """A tiny GPT-2 saved as a Hugging Face folder, so the CLI can load it by path."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from mechlens.models import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(1)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=64, n_layer=2, n_head=4, n_inner=256,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _stable(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("_stage time"))


@pytest.mark.subprocess  # runs the command line as its own process
def test_reproduce_survives_kills_at_random_points(tmp_path):
    """Kill ``mechlens reproduce sentiment`` (tiny model) at seeded random points, damage a
    marker and a figure, rerun: the report is complete and equal to an uninterrupted run's."""
    import random
    import signal

    model_dir = _tiny_model_dir(tmp_path / "tinymodel")
    stages = ["--stage", "baseline", "--stage", "patching", "--stage", "attention"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}

    def cmd(out):
        return [sys.executable, "-m", "mechlens.cli", "reproduce", "sentiment", "-m", str(model_dir), "-o", str(out),
                "--fast", *stages]

    def n_files(out):
        return sum(1 for p in out.rglob("*") if p.is_file()) if out.exists() else 0

    # an uninterrupted run to compare with, alongside
    ref = tmp_path / "ref"
    log = open(tmp_path / "ref.log", "w")  # noqa: SIM115 - closed below
    clean = subprocess.Popen(cmd(ref), env=env, stdout=log, stderr=log, cwd=REPO)
    out, rng, killed = tmp_path / "out", random.Random(13), 0
    for _ in range(3):
        p = subprocess.Popen(cmd(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        n0, t0 = n_files(out), time.time()
        while n_files(out) <= n0 and p.poll() is None and time.time() - t0 < 60:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.5))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed += 1
        p.wait()
    assert killed >= 2
    markers = sorted(out.glob("*/done.json"))
    if markers:
        markers[0].write_text(markers[0].read_text()[:20])
    else:
        (out / "baseline").mkdir(parents=True, exist_ok=True)
        (out / "baseline" / "done.json").write_text('{"fast": tr')
    figures = sorted(f for m in out.glob("*/done.json") for f in m.parent.glob("*.png"))
    if figures:
        figures[-1].unlink()
    done = subprocess.run(cmd(out), env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_complete(out, ["baseline", "patching", "attention"])

    assert clean.wait(timeout=120) == 0, (tmp_path / "ref.log").read_text()[-2000:]
    log.close()
    assert _stable((out / "report.md").read_text()) == _stable((ref / "report.md").read_text())


def test_cli_main_one_line_for_any_failure(monkeypatch, capsys, tmp_path):
    import mechlens.models
    from mechlens.cli import main

    def broken(*a, **k):
        raise KeyError("blocks.5.hook_resid_pre")

    monkeypatch.setattr(mechlens.models, "load_model", broken)
    monkeypatch.delenv("MECHLENS_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["baseline", "--out", str(tmp_path)])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err == "error: KeyError: 'blocks.5.hook_resid_pre' (run with --debug for the traceback)\n"

    def bad_arg(*a, **k):
        raise ValueError("batch_size=0 must be a positive int (sequences per forward pass) or None")

    monkeypatch.setattr(mechlens.models, "load_model", bad_arg)
    with pytest.raises(SystemExit) as info:
        main(["baseline", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: batch_size=0 must be a positive int (sequences per forward pass) or None\n"
    monkeypatch.delenv("MECHLENS_DEBUG", raising=False)
    with pytest.raises(ValueError, match="batch_size=0"):
        main(["baseline", "--out", str(tmp_path), "--debug"])
    assert "MECHLENS_DEBUG" not in os.environ  # --debug lasts one call, not the process


# --------------------------------------------------------------------------- nothing silently wrong (#26)
# prompts meet the model's context in one place; NaN / inf metric values; odd resume markers and
# damage in place; dataset rows named by file and line; saved results' dtypes; Ray addresses;
# everything a study file alone decides checked before the model loads


def _words(model, n: int) -> str:
    """A prompt of exactly ``n`` tokens after BOS (the tiny tokenizer makes ' the' one token)."""
    assert model.to_tokens(" the" * 3, prepend_bos=False).shape[-1] == 3
    return " the" * n


def test_prompts_longer_than_the_context_are_refused_not_cut(model):
    n_ctx = model.cfg.n_ctx
    ok = ContrastDataset.from_prompts(model, [_words(model, n_ctx - 1)], [_words(model, n_ctx - 1)], [(" good", " bad")])
    assert ok.seq_len == n_ctx  # BOS + n_ctx - 1 words: exactly the context, accepted
    long = _words(model, n_ctx)
    raises(ValueError, rf"pair 1: clean prompt ' the the.*' is {n_ctx + 1} tokens, longer than the model's context "
           rf"\(model.cfg.n_ctx = {n_ctx}\); it would be cut", ContrastDataset.from_prompts, model, [long],
           [long], [(" good", " bad")])
    raises(ValueError, rf"pair 2: corrupt prompt .* is 421 tokens, longer than the model's context \(model.cfg.n_ctx = "
           rf"{n_ctx}\)", ContrastDataset.from_prompts, model, ["I loved it", "I hated it"],
           ["I hated it", _words(model, 420)], [(" good", " bad")])
    # the other places prompt strings meet the model go through the same check
    from mechlens.directions import project

    d = Direction(vector=torch.ones(64), method="vector", layer=1, site="resid_pre", position=None)
    raises(ValueError, rf"texts\[1\] .* is {n_ctx + 1} tokens, longer than the model's context", project, model, d,
           ["fine", long], progress=False)
    raises(ValueError, rf"attention\(text=...\) .* is {n_ctx + 1} tokens, longer than", attention, model, long)
    assert validate.prompt_tokens(model, "I loved it").tolist() == model.to_tokens("I loved it")[0].tolist()


def test_a_long_prompt_in_a_study_file_names_the_file_and_row(model, tmp_path):
    from mechlens.study import build_dataset

    rows = [{"clean": "I loved it", "corrupt": "I hated it", "correct": " good", "incorrect": " bad"}] * 3
    rows[1] = {**rows[1], "clean": _words(model, 419), "corrupt": _words(model, 419)}  # the 420 tokens
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    raises(ValueError, r"pairs.jsonl, line 2 \(pair 2\): clean prompt .* is 420 tokens, longer than the model's "
           r"context \(model.cfg.n_ctx = 128\)", build_dataset, model, {"file": "pairs.jsonl"}, tmp_path / "s.toml")
    c = tmp_path / "pairs.csv"
    c.write_text("clean,corrupt,correct,incorrect\nI loved it,I hated it, good, bad\n"
                 f"I loved it,{_words(model, 200)}, good, bad\n")
    raises(ValueError, r"pairs.csv, line 3 \(pair 2\): corrupt prompt .* is 201 tokens, longer",
           build_dataset, model, {"file": "pairs.csv"}, tmp_path / "s.toml")


def test_empty_and_non_string_prompts_are_refused(model):
    ans = [(" good", " bad")]
    raises(ValueError, r"pair 2: clean prompt is empty \(''\): a prompt needs at least one token besides BOS",
           ContrastDataset.from_prompts, model, ["I loved it", ""], ["I hated it", "I loved it"], ans)
    raises(ValueError, r"pair 1: corrupt prompt is empty \('   '\)", ContrastDataset.from_prompts, model, ["I loved it"],
           ["   "], ans)
    raises(TypeError, r"pair 1: clean prompt must be a string, not NoneType", ContrastDataset.from_prompts, model,
           [None], ["I loved it"], ans)
    raises(ValueError, r"where has 1 entries for 2 prompt pairs", ContrastDataset.from_prompts, model, ["a", "b"],
           ["a", "b"], ans, where=["x.jsonl, line 1"])


def test_from_prompts_errors_name_the_pair_from_1(model):
    f = ContrastDataset.from_prompts
    raises(ValueError, r"pair 2: clean prompt 'I loved it' is 4 tokens but corrupt prompt 'I hated it a lot' is",
           f, model, ["I hated it", "I loved it"], ["I loved it", "I hated it a lot"], [(" good", " bad")])
    raises(TypeError, r"pair 1: answer 5 must be a string", f, model, ["I loved it"], ["I hated it"], [(" good", 5)])
    raises(ValueError, r"pair 2: answer ' xqzv' is \d+ tokens for this tokenizer", f, model, ["I loved it"] * 2,
           ["I hated it"] * 2, [[(" good", " bad")], [(" good", " xqzv")]])
    raises(ValueError, r"pair 2: positions\['ADJ'\]: position word 'great' is not a token of the prompt 'I hated it'",
           f, model, ["I loved it", "I hated it"], ["I hated it", "I loved it"], [(" good", " bad")],
           positions={"ADJ": [" loved", "great"]})
    raises(ValueError, r"pair 1: positions\['X'\]=9 is outside the prompt's 4 tokens", f, model, ["I loved it"],
           ["I hated it"], [(" good", " bad")], positions={"X": 9})
    raises(ValueError, r"different token lengths \[4, \d+\] \(e.g. 4 tokens at pair 1, \d+ tokens at pair 2\)", f, model,
           ["I loved it", "I loved it a"], ["I hated it", "I hated it a"], [(" good", " bad")])


def _rows_file(tmp_path, name, text):
    from mechlens.study import build_dataset

    (tmp_path / name).write_text(text)
    return lambda m: build_dataset(m, {"file": name}, tmp_path / "s.toml")


def test_dataset_file_rows_are_named_by_file_and_line(model, tmp_path):
    good = {"clean": "I loved it", "corrupt": "I hated it", "correct": " good", "incorrect": " bad"}

    def jl(*rows):
        return "\n".join(json.dumps(r) for r in rows) + "\n"

    cases = [
        ("a.jsonl", jl(good, {**good, "label": "positive"}),
         r"a.jsonl, line 2 \(pair 2\): label 'positive' is not an integer"),
        ("b.jsonl", jl(good, {**good, "label": 1.5}), r"b.jsonl, line 2 \(pair 2\): label 1.5 is not an integer"),
        ("c.csv", "clean,corrupt,correct,incorrect,label\nI loved it,I hated it, good, bad,1\n"
                  "I hated it,I loved it, bad, good,yes\n", r"c.csv, line 3 \(pair 2\): label 'yes' is not an integer"),
        ("d.jsonl", jl(good, {**good, "correct": 7}), r"d.jsonl, line 2 \(pair 2\): answer 7 must be a string"),
        ("e.jsonl", jl({**good, "answers": [[" good", None]]}), r"e.jsonl, line 1 \(pair 1\): answer None must be"),
        ("f.jsonl", jl(good, good, {**good, "incorrect": " xqzv"}),
         r"f.jsonl, line 3 \(pair 3\): answer ' xqzv' is \d+ tokens"),
        ("g.jsonl", "\n" + jl(good, {**good, "corrupt": "I hated it a lot"}),
         r"g.jsonl, line 3 \(pair 2\): clean prompt 'I loved it' is 4 tokens but corrupt prompt"),
        ("h.jsonl", jl({**good, "positions": {"ADJ": " loved"}}, {**good, "positions": {"ADJ": " great"}}),
         r"h.jsonl, line 2 \(pair 2\): positions\['ADJ'\]: position word ' great' is not a token"),
        ("i.jsonl", jl({**good, "positions": {"ADJ": " loved"}}, good),
         r"i.jsonl, line 2 \(pair 2\): position 'ADJ' is missing \(other rows give it\)"),
        ("j.csv", "clean,corrupt,correct,incorrect,pos_ADJ\nI loved it,I hated it, good, bad,2\n"
                  "I loved it,I hated it, good, bad,\n", r"j.csv, line 3 \(pair 2\): position 'ADJ' is missing"),
        ("k.jsonl", jl(good, {**good, "clean": ""}), r"k.jsonl, line 2 \(pair 2\): needs a non-empty 'clean' prompt"),
        ("l.jsonl", jl({**good, "corrupt": 3}), r"l.jsonl, line 1 \(pair 1\): needs a non-empty 'corrupt' prompt .* got 3"),
        ("m.csv", "clean,corrupt,correct,incorrect\nI loved it,I hated it, good, bad,extra\n",
         r"m.csv, line 2: 4 columns in the header but more fields here"),
        ("n.jsonl", jl({**good, "positions": {"ADJ": [1]}}), r"n.jsonl, line 1 \(pair 1\): position 'ADJ' must be a word"),
    ]
    for name, text, msg in cases:
        raises(ValueError, msg, _rows_file(tmp_path, name, text), model)
    # integer labels as text (CSV) or numbers (JSONL) are fine
    ds = _rows_file(tmp_path, "ok.jsonl", jl({**good, "label": 0}, {**good, "label": "1"}))(model)
    assert ds.labels.tolist() == [0, 1]


def test_nan_metric_values_raise_naming_the_cells(model, ds, tmp_path):
    import warnings

    from mechlens.results import Measurement, NonFiniteWarning, nan_policy

    def all_nan(logits, d):
        return torch.full((logits.shape[0],), float("nan"))

    def last_logit(logits, d):
        return logits[:, -1, 0].float()

    raises(ValueError, r"PatchResult: the metric 'all_nan' gave non-finite values \(NaN\) in 2 of 2 cells "
           r"\(\(layer=0\), \(layer=1\)\).*nan_policy\('warn'\)",
           activation_patch, model, ds, "resid_pre", metric=all_nan, positions="all", progress=False)
    with nan_policy("warn"), pytest.warns(NonFiniteWarning, match=r"gave non-finite values \(NaN\) in 2 of 2 cells"):
        res = activation_patch(model, ds, "resid_pre", metric=all_nan, positions="all", progress=False)
    assert torch.isnan(res.values).all()
    with warnings.catch_warnings(), nan_policy("ignore"):
        warnings.simplefilter("error")
        res = activation_patch(model, ds, "resid_pre", metric=all_nan, positions="all", progress=False)
        assert torch.isnan(res.values).all()
    # a finite metric is untouched by the check
    ok = activation_patch(model, ds, "resid_pre", metric=last_logit, positions="all", progress=False)
    assert torch.isfinite(ok.per_example).all()
    # inf; a measurement with no axes; one bad cell among six; a bad policy
    raises(ValueError, r"Measurement: the metric 'm' gave non-finite values \(inf\) in its value \(1 of 3 examples\)",
           Measurement, per_example=torch.tensor([1.0, float("inf"), 2.0]), metric="m")
    pe = torch.zeros(2, 3, 4)
    pe[1, 2, 0] = float("nan")
    labels = {"layer": [0, 1], "head": ["h0", "h1", "h2"]}
    raises(ValueError, r"in 1 of 6 cells \(\(layer=1, head='h2'\)\)", Measurement, per_example=pe,
           axes=("layer", "head"), labels=labels, metric="m")
    raises(ValueError, r"nan_policy='sometimes': choose one of \['raise', 'warn', 'ignore'\]",
           lambda: nan_policy("sometimes").__enter__())
    # a result kept with NaN loads back as it was saved (its values were checked when measured)
    with nan_policy("ignore"):
        kept = Measurement(per_example=pe, axes=("layer", "head"), labels=labels, metric="m")
    back = Measurement.load(kept.save(tmp_path / "m"))
    assert torch.equal(back.per_example.isnan(), pe.isnan())


def test_saved_result_tensors_are_checked_by_dtype(model, ds, tmp_path):
    from safetensors.torch import load_file, save_file

    res, path = _saved(model, ds, tmp_path)
    t = path / "tensors.safetensors"
    good = load_file(str(t))

    def rewrite(**changed):
        save_file({**good, **changed}, str(t))

    # int64 where floats belong (the example): named by file and field
    rewrite(per_example=good["per_example"].long())
    raises(DamagedFileError, r"res/tensors.safetensors is damaged \(field 'per_example' is int64 but was saved as "
           r"float32\); save the DirectionalPatchResult again", DirectionalPatchResult.load, path)
    # float64 for float32: still floats, but not what was saved
    rewrite(ld_clean=good["ld_clean"].double())
    raises(DamagedFileError, r"field 'ld_clean' is float64 but was saved as float32", DirectionalPatchResult.load, path)
    # a folder saved before dtypes were recorded: the kind of each field is still checked
    rewrite()
    doc = json.loads((path / "result.json").read_text())
    del doc["dtypes"]
    (path / "result.json").write_text(json.dumps(doc))
    assert torch.equal(DirectionalPatchResult.load(path).per_example, res.per_example)
    rewrite(per_example=good["per_example"].long())
    raises(DamagedFileError, r"field 'per_example' holds int64 values where floats belong", DirectionalPatchResult.load,
           path)
    rewrite(class_labels=good["class_labels"].float())
    raises(DamagedFileError, r"field 'class_labels' holds float32 values where ints belong",
           DirectionalPatchResult.load, path)
    # a tensor inside a dict field (a PatchResult's baselines)
    pr = activation_patch(model, ds, "resid_pre", layers=[0], positions="ADJ", progress=False).save(tmp_path / "pr")
    tensors = load_file(str(pr / "tensors.safetensors"))
    tensors["baselines::clean"] = tensors["baselines::clean"].to(torch.int32)
    save_file(tensors, str(pr / "tensors.safetensors"))
    from mechlens.patching import PatchResult

    raises(DamagedFileError, r"field \"baselines\['clean'\]\" is int32 but was saved as float32", PatchResult.load, pr)
    # a folder where a file belongs
    (pr / "result.json").unlink()
    (pr / "result.json").mkdir()
    raises(DamagedFileError, r"pr/result.json is damaged \(it is a folder, not a file\); save the PatchResult again",
           PatchResult.load, pr)


def _study_file(tmp_path, extra: str = "", dataset: str = 'builtin = "toy_movie_review"\nsplit = "test"\n'):
    p = tmp_path / "s.toml"
    p.write_text('model = {name = "tiny-gpt2", n_layers = 2}\n[dataset]\n' + dataset +
                 '[[analysis]]\nkind = "baseline"\n[[analysis]]\nkind = "logit_lens"\n' + extra)
    return p


def test_study_resume_treats_odd_markers_as_run_again(tmp_path):
    """A marker that parses but is odd, a marker that is a folder, an analysis folder that is a
    file, and a result damaged in place (same size): each analysis runs again, nothing raises."""
    import warnings

    from mechlens.study import run_study

    p = _study_file(tmp_path)
    out = tmp_path / "out"
    m = tiny("gpt2", n_layers=2, seed=0)
    run_study(p, out, model=m, progress=False)

    def stable():  # the report less its timings
        return [line for line in (out / "report.md").read_text().splitlines() if not line.startswith("_time")]

    ref = stable()

    def rerun(match):
        with pytest.warns(UserWarning, match=match):
            run_study(p, out, model=m, progress=False)
        assert stable() == ref
        json.loads((out / "baseline" / "done.json").read_text())

    marker = out / "baseline" / "done.json"
    doc = json.loads(marker.read_text())
    marker.write_text(json.dumps({**doc, "numbers": {**doc["numbers"], "summary": 3.5}}))  # a number where text is
    rerun(r"baseline/done.json is damaged \(its summary is float, not text\); the stage runs again")
    doc = json.loads(marker.read_text())
    marker.write_text(json.dumps({**doc, "numbers": {**doc["numbers"], "clean_ld": "high"}}))  # still parses and types
    rerun(r"baseline/done.json is damaged \(its content does not match its checksum")
    doc = json.loads(marker.read_text())
    marker.write_text(json.dumps({**doc, "files": {"baseline.csv": "big"}}))
    rerun(r"its record of 'baseline.csv' is not a size and hash")
    marker.write_text("[1, 2]")
    rerun(r"done.json is damaged \(it holds list, not an object\)")
    marker.unlink()
    marker.mkdir()
    (marker / "x").write_text("")
    rerun(r"baseline/done.json is damaged \(it is a folder, not a file\)")
    shutil.rmtree(out / "logit_lens")
    (out / "logit_lens").write_text("not a folder")
    rerun(r"logit_lens is a file, not a stage folder; the stage runs again")
    # damage in place: same size, other bytes
    csv = out / "baseline" / "baseline.csv"
    data = csv.read_bytes()
    csv.write_bytes(data[:-2] + (b"0" if data[-2:-1] != b"0" else b"1") + data[-1:])
    assert csv.stat().st_size == len(data)
    rerun(r"stage 'baseline' was done but 1 of its files are missing or changed \(e.g. .*baseline.csv\)")
    assert csv.read_bytes() == data
    # a result's tensors damaged in place are noticed too
    t = out / "logit_lens" / "logit_lens" / "tensors.safetensors"
    raw = bytearray(t.read_bytes())
    raw[-1] ^= 0xFF
    t.write_bytes(bytes(raw))
    rerun(r"stage 'logit_lens' was done but 1 of its files are missing or changed")
    with warnings.catch_warnings():  # and now everything is done: quiet, nothing reruns
        warnings.simplefilter("error")
        run_study(p, out, model=m, progress=False)


def test_everything_a_study_file_decides_is_checked_before_the_model_loads(tmp_path, monkeypatch):
    import mechlens.models
    from mechlens.study import StudyError, run_study

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the file was checked")

    monkeypatch.setattr(mechlens.models, "load_model", no_model)
    monkeypatch.setattr(mechlens.models, "tiny", no_model)
    ds_limit = 'builtin = "toy_movie_review"\nlimit = 0\n'
    cases = [
        (dict(dataset=ds_limit), r"s.toml, line 4: dataset.limit: 0 must be >= 1"),
        (dict(dataset='builtin = "toy_movie_review"\nfiller = -1\n'), r"line 4: dataset.filler: -1 must be >= 0"),
        (dict(extra='[[analysis]]\nkind = "directions"\ntest_fraction = 1.5\n'),
         r"line 11: analysis\[2\].test_fraction: 1.5 must be strictly between 0 and 1"),
        (dict(extra='[[analysis]]\nkind = "directions"\ntest_fraction = 0\n'),
         r"analysis\[2\].test_fraction: 0 must be strictly between 0 and 1"),
        (dict(extra='[[analysis]]\nkind = "ablation"\nbatch_size = 0\n'), r"analysis\[2\].batch_size: 0 must be >= 1"),
        (dict(extra='[[analysis]]\nkind = "ablation"\ntop = -3\n'), r"analysis\[2\].top: -3 must be >= 1"),
        (dict(extra='[[analysis]]\nkind = "edge_attribution_patching"\nfaithfulness = [0, 5, -1]\n'),
         r"analysis\[2\].faithfulness: -1 must be >= 0"),
        (dict(extra='[[analysis]]\nkind = "knockout_curve"\nmax_k = 0\n'), r"analysis\[2\].max_k: 0 must be >= 1"),
    ]
    for kw, msg in cases:
        p = _study_file(tmp_path, **kw)
        raises(StudyError, msg, run_study, p, tmp_path / "out")
    p = _study_file(tmp_path)
    p.write_text(p.read_text().replace("n_layers = 2", "n_layers = 0"))
    raises(StudyError, r"model.n_layers: 0 must be >= 1", run_study, p, tmp_path / "out")
    p.write_text("batch_size = -2\n" + _study_file(tmp_path).read_text())
    raises(StudyError, r"s.toml, line 1: batch_size: -2 must be >= 1", run_study, p, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing made


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_addresses_fail_fast_naming_address_and_fix(monkeypatch):
    pytest.importorskip("ray")
    import ray

    from mechlens.scale import ADDRESS_ENV, Workers, check_address

    assert not ray.is_initialized()
    port = _free_port()  # nothing listens there
    t = time.perf_counter()
    with pytest.raises(ConnectionError, match=rf"address='127.0.0.1:{port}': no Ray cluster answers at 127.0.0.1:{port} "
                       r"\(.*\).*fix address= or \$MECHLENS_RAY_ADDRESS"):
        Workers("tiny", workers=1, address=f"127.0.0.1:{port}")
    assert time.perf_counter() - t < 15 and not ray.is_initialized()
    monkeypatch.setenv(ADDRESS_ENV, f"127.0.0.1:{port}")
    with pytest.raises(ConnectionError, match=rf"\$MECHLENS_RAY_ADDRESS='127.0.0.1:{port}': no Ray cluster answers"):
        Workers("tiny", workers=1)
    monkeypatch.delenv(ADDRESS_ENV)
    raises(ValueError, r"address='127.0.0.1:x': give host:port", check_address, "127.0.0.1:x")
    # ray:// without the client extra (grpc): the argument and the pip extra, before any connection
    monkeypatch.setitem(sys.modules, "grpc", None)
    raises(ImportError, r"address='ray://127.0.0.1:10001' is a Ray Client address \(ray://...\), which needs the client "
           r'extra: pip install "ray\[client\]"', Workers, "tiny", workers=1, address="ray://127.0.0.1:10001")
    assert not ray.is_initialized()


def test_sst_sentences_longer_than_the_context_are_not_cut_into_a_group(model, tmp_path):
    from mechlens.data.sst import sst

    mini = (REPO / "mechlens" / "data" / "mini_sst.tsv").read_text()
    f = tmp_path / "sst.tsv"
    f.write_text(mini + f"{'the ' * 300}film.\t1\n{'the ' * 300}film.\t0\n")
    ans = [(" good", " bad")]  # one token each for the tiny tokenizer
    ds = sst(model, f, answers=ans)
    assert ds.seq_len <= model.cfg.n_ctx
    # cut to the context, the two long sentences would make a pair of length n_ctx
    raises(ValueError, r"no positive/negative pair of equal token length 128", sst, model, f, length=128, answers=ans)
    n = model.to_tokens(f"Review: {'the ' * 300}film.\nSentiment:", truncate=False).shape[-1]
    raises(ValueError, rf"is {n} tokens, longer than the model's context", sst, model, f, length=n, answers=ans)
