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
