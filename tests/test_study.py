"""`mechlens study FILE.toml`: the example studies run on a tiny model, resume, errors with
key and line, file datasets, and study results equal the direct Python calls."""

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from mechlens import study as study_mod
from mechlens.study import StudyError, build_dataset, load_study, load_study_model, run_study

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY_NAMES = ["John", "Mary", "Anna", "Tom", "Question"]  # one-token words of the tiny tokenizer
# the examples name layers up to 29 and heads up to 8 (smollm2-135m's shape): a tiny model of
# that shape, small everywhere else
TINY = {"name": "tiny-gpt2", "n_layers": 30, "n_heads": 9, "d_model": 36}
OVERRIDES = {
    # fewer prompts, faithfulness points and random draws: the examples run as written, in seconds
    "ioi.toml": {
        "model": TINY, "dataset.names": TINY_NAMES, "dataset.n_prompts": 4,
        "analysis[7].faithfulness": [0, 100, 10000], "analysis[7].n_random": 1,
    },
    "sentiment_ablation.toml": {"model": TINY, "dataset.limit": 10},
    # EAP-IG's activations variant runs once per layer, and the faithfulness curves and the
    # stability resamples multiply that: a 4-layer model and fewer draws keep it to seconds
    "circuit_compare.toml": {
        "model": {**TINY, "n_layers": 4}, "dataset.names": TINY_NAMES, "dataset.n_prompts": 4,
        "analysis[2].n_random": 2, "analysis[3].n_resamples": 3,
    },
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Every example study, run once on the tiny model: {file name: out dir}."""
    outs = {}
    for name, over in OVERRIDES.items():
        out = tmp_path_factory.mktemp(name.replace(".", "_"))
        with warnings.catch_warnings():  # the tiny tokenizer drops IOI templates of other lengths
            warnings.simplefilter("ignore")
            run_study(EXAMPLES / name, out, overrides=over, progress=False)
        outs[name] = out
    return outs


def test_every_example_is_covered():
    assert sorted(p.name for p in EXAMPLES.glob("*.toml")) == sorted(OVERRIDES)


@pytest.mark.parametrize("name", sorted(OVERRIDES))
def test_example_runs_on_a_tiny_model(ran, name):
    out = ran[name]
    study = load_study(EXAMPLES / name, OVERRIDES[name])
    model = f"tiny-gpt2-{OVERRIDES[name]['model']['n_layers']}l"
    text = (out / "report.md").read_text()
    assert f"Analyses done: {len(study.names)} of {len(study.names)}." in text
    for n, a in zip(study.names, study.analyses):
        assert re.search(rf"^## {re.escape(n)}\b", text, re.M), n
        marker = json.loads((out / n / "done.json").read_text())
        assert marker["analysis"]["kind"] == a["kind"] and marker["model"] == model
    links = re.findall(r"\]\(([^)]+\.(?:png|csv))\)", text)
    assert len(links) >= len(study.names)
    for rel in links:
        assert (out / rel).is_file(), rel


def test_ioi_example_contents(ran):
    out = ran["ioi.toml"]
    text = (out / "report.md").read_text()
    assert "Faithfulness" in text and "random edge sets" in text
    faith = json.loads((out / "edges" / "done.json").read_text())["numbers"]["faithfulness"]
    assert faith["k"] == OVERRIDES["ioi.toml"]["analysis[7].faithfulness"] and len(faith["random_ld_mean"]) == 3
    # no edge kept = the corrupt run, for the ranking and for every random draw
    edges = json.loads((out / "edges" / "done.json").read_text())["numbers"]
    # (exactly the corrupt run up to float rounding, summed over 30 layers of patched edges and
    # divided by the tiny model's small clean-corrupt gap; the rounding depends on the thread count)
    assert faith["top_recovered"][0] == pytest.approx(0.0, abs=1e-2)
    assert faith["random_recovered"][0] == pytest.approx(0.0, abs=1e-2)
    assert edges["n_edges"] > 10000


def test_study_result_equals_the_direct_call(ran):
    from mechlens.ablation import ablate_sweep
    from mechlens.circuits import edge_attribution_patch
    from mechlens.lens import direct_logit_attribution
    from mechlens.results import load_result

    out = ran["ioi.toml"]
    study = load_study(EXAMPLES / "ioi.toml", OVERRIDES["ioi.toml"])
    model = load_study_model(study.model_spec)
    with pytest.warns(UserWarning, match="dropped"):
        ds = build_dataset(model, study.doc["dataset"], study.path)
    dla = load_result(out / "direct_logit_attribution" / "dla")
    direct = direct_logit_attribution(model, ds, group="heads", batch_size=64, progress=False)
    torch.testing.assert_close(dla.per_example, direct.per_example, atol=1e-5, rtol=0)
    assert dla.labels == direct.labels and dla.fingerprint == direct.fingerprint
    abl = load_result(out / "head_ablation" / "ablation")
    layers = list(range(18, 30))
    direct = ablate_sweep(model, ds, "heads", how="mean", layers=layers, seed=0, batch_size=64, progress=False)
    torch.testing.assert_close(abl.per_example, direct.per_example, atol=1e-5, rtol=0)
    edges = load_result(out / "edges" / "edges")
    direct = edge_attribution_patch(model, ds, batch_size=8, progress=False)
    torch.testing.assert_close(edges.per_example, direct.per_example, atol=1e-5, rtol=0)


def test_resume_skips_finished_analyses(ran, tmp_path, monkeypatch):
    out = tmp_path / "ioi"
    shutil.copytree(ran["ioi.toml"], out)
    before = (out / "report.md").read_text()
    called = []

    def boom(*a, **k):
        called.append(1)
        raise AssertionError("a finished analysis ran again")

    monkeypatch.setattr(study_mod, "_runners", lambda: {k: boom for k in study_mod.ANALYSES})
    run_study(EXAMPLES / "ioi.toml", out, overrides=OVERRIDES["ioi.toml"], progress=False)
    assert not called and (out / "report.md").read_text() == before
    # a changed argument reruns that analysis only; a deleted figure reruns its analysis
    over = {**OVERRIDES["ioi.toml"], "analysis[1].top_tokens": 2}
    with pytest.raises(AssertionError, match="ran again"):
        run_study(EXAMPLES / "ioi.toml", out, overrides=over, progress=False)
    assert len(called) == 1
    (out / "baseline" / "baseline.csv").unlink()
    with pytest.warns(UserWarning, match="missing or changed"), pytest.raises(AssertionError, match="ran again"):
        run_study(EXAMPLES / "ioi.toml", out, overrides=OVERRIDES["ioi.toml"], progress=False)


def test_interrupted_run_has_a_report_of_what_finished(tmp_path, monkeypatch):
    real = study_mod._runners()

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(study_mod, "_runners", lambda: {**real, "direct_logit_attribution": crash})
    out = tmp_path / "partial"
    with pytest.warns(UserWarning), pytest.raises(KeyboardInterrupt):
        run_study(EXAMPLES / "ioi.toml", out, overrides=OVERRIDES["ioi.toml"], progress=False)
    text = (out / "report.md").read_text()
    assert "Analyses done: 2 of 8 (not yet: direct_logit_attribution," in text
    assert "## baseline" in text and "## logit_lens" in text and "## direct_logit" not in text
    assert not (out / "direct_logit_attribution" / "done.json").exists()


def test_reproduce_writes_its_report_after_every_stage(tmp_path, monkeypatch):
    from mechlens import reproduce
    from mechlens.models import tiny

    def crash(ctx, d):
        raise KeyboardInterrupt

    monkeypatch.setitem(reproduce.STAGES, "attention", ("Attention patterns", crash))
    out = tmp_path / "rep"
    with pytest.raises(KeyboardInterrupt):
        reproduce.reproduce_sentiment(tiny("gpt2", n_layers=2, seed=1), out, fast=True,
                                      stages=["baseline", "attention"], progress=False)
    text = (out / "report.md").read_text()
    assert "## Baseline logit differences" in text and "## Attention" not in text


# ----------------------------------------------------------------------------- malformed files

GOOD = """\
title = "t"
model = "tiny-gpt2"

[dataset]
builtin = "toy_movie_review"
split = "test"

[[analysis]]
kind = "baseline"

[[analysis]]
kind = "ablation"
component = "heads"
how = "mean"
"""


def _write(tmp_path, text):
    p = tmp_path / "s.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "old, new, line, pattern",
    [
        ('how = "mean"', 'hwo = "mean"', 14, r"analysis\[1\]\.hwo: unknown key 'hwo'; did you mean 'how'\?"),
        ('how = "mean"', 'how = "average"', 14, r"analysis\[1\]\.how: 'average' is not one of"),
        ('kind = "ablation"', 'kind = "ablaton"', 12, r"analysis\[1\]\.kind: unknown analysis 'ablaton'; did you mean 'ablation'\?"),
        ('split = "test"', 'split = 3', 6, r"dataset\.split: must be a string, not 3"),
        ('split = "test"', 'n_prompts = 8', 6, r"dataset\.n_prompts: the 'toy_movie_review' dataset does not take"),
        ('title = "t"', 'titel = "t"', 1, r"titel: unknown key 'titel'; did you mean 'title'\?"),
        ('model = "tiny-gpt2"', 'model = "tiny-bert"', 2, r"model: tiny model 'tiny-bert'"),
        ('component = "heads"', 'component = ["heads"]', 13, r"analysis\[1\]\.component: must be a string"),
    ],
)
def test_malformed_file_names_key_and_line(tmp_path, old, new, line, pattern):
    assert old in GOOD
    p = _write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(StudyError, match=rf"s\.toml, line {line}: {pattern}"):
        load_study(p)


def test_more_malformed_files(tmp_path):
    with pytest.raises(StudyError, match=r"not valid TOML: .*line 3"):
        load_study(_write(tmp_path, 'title = "t"\nmodel = "x"\n[dataset\n'))
    with pytest.raises(StudyError, match=r"dataset: missing"):
        load_study(_write(tmp_path, 'model = "x"\n[[analysis]]\nkind = "baseline"\n'))
    with pytest.raises(StudyError, match=r"line 4: dataset: give exactly one of builtin"):
        load_study(_write(tmp_path, GOOD.replace('builtin = "toy_movie_review"', 'file = "x.jsonl"\nbuiltin = "ioi"')
                          .replace('split = "test"', "")))
    two = GOOD + '\n[[analysis]]\nkind = "baseline"\nname = "baseline"\n'
    with pytest.raises(StudyError, match=r"line 18: analysis\[2\]\.name: two analyses are named 'baseline'"):
        load_study(_write(tmp_path, two))
    # an override is named as such
    with pytest.raises(StudyError, match=r"override analysis\[1\]\.how\): analysis\[1\]\.how: 'x' is not one of"):
        load_study(_write(tmp_path, GOOD), {"analysis[1].how": "x"})
    # nothing is loaded before the check: a bad file fails at once, even with an unloadable model
    with pytest.raises(StudyError, match="hwo"):
        run_study(_write(tmp_path, GOOD.replace("model = \"tiny-gpt2\"", "model = \"no/such/model\"")
                         .replace('how = "mean"', 'hwo = "mean"')), tmp_path / "o")


def test_cli_check_and_error_line(tmp_path, capsys):
    from mechlens.cli import main

    p = _write(tmp_path, GOOD)
    with pytest.raises(SystemExit) as exc:
        main(["study", str(p), "--out", str(tmp_path / "o"), "--check"])
    assert exc.value.code == 0
    assert "ok (2 analyses: baseline, ablation)" in capsys.readouterr().out
    bad = _write(tmp_path, GOOD.replace('how = "mean"', 'how = "mena"'))
    with pytest.raises(SystemExit) as exc:
        main(["study", str(bad), "--out", str(tmp_path / "o"), "--set", "dataset.split=train"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "line 14: analysis[1].how: 'mena' is not one of" in err and "did you mean 'mean'" in err


# ----------------------------------------------------------------------------- file datasets


def test_jsonl_and_csv_datasets_equal_from_prompts(tmp_path, tiny_gpt2):
    from mechlens.data import ContrastDataset

    rows = [("good", "bad", 1), ("bad", "good", 0), ("great", "dull", 1)]
    clean = [f"I thought this movie was {a}, I" for a, _, _ in rows]
    corrupt = [f"I thought this movie was {b}, I" for _, b, _ in rows]
    jl = tmp_path / "pairs.jsonl"
    jl.write_text("\n".join(json.dumps({"clean": c, "corrupt": k, "correct": " loved", "incorrect": " hated",
                                        "label": lab, "positions": {"ADJ": " " + a}})
                            for c, k, (a, _, lab) in zip(clean, corrupt, rows)) + "\n")
    cs = tmp_path / "pairs.csv"
    cs.write_text("clean,corrupt,correct,incorrect,label,pos_ADJ\n" + "".join(
        f'"{c}","{k}", loved, hated,{lab},6\n' for c, k, (_, _, lab) in zip(clean, corrupt, rows)))
    ref = ContrastDataset.from_prompts(tiny_gpt2, clean, corrupt, [(" loved", " hated")], positions={"ADJ": 6},
                                       labels=[r[2] for r in rows])
    for f in (jl, cs):
        ds = build_dataset(tiny_gpt2, {"file": f.name}, tmp_path / "study.toml")
        assert torch.equal(ds.clean_tokens, ref.clean_tokens) and torch.equal(ds.corrupt_tokens, ref.corrupt_tokens)
        assert torch.equal(ds.answers, ref.answers) and torch.equal(ds.labels, ref.labels)
        assert torch.equal(ds.positions["ADJ"], ref.positions["ADJ"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"clean": "a", "corrupt": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 1 \(pair 1\): needs 'correct' and 'incorrect'"):
        build_dataset(tiny_gpt2, {"file": "bad.jsonl"}, tmp_path / "s.toml")


def test_file_dataset_study_runs(tmp_path):
    rows = [("good", "bad"), ("bad", "good"), ("great", "dull"), ("dull", "great")]
    (tmp_path / "pairs.jsonl").write_text("\n".join(
        json.dumps({"clean": f"I thought this movie was {a}, I", "corrupt": f"I thought this movie was {b}, I",
                    "correct": " loved", "incorrect": " hated", "positions": {"ADJ": 6}}) for a, b in rows))
    p = tmp_path / "s.toml"
    p.write_text('model = {name = "tiny-llama", n_layers = 2}\n[dataset]\nfile = "pairs.jsonl"\n'
                 '[[analysis]]\nkind = "activation_patching"\nsite = ["resid_pre", "z"]\npositions = "ADJ"\n'
                 'metric = "logit_diff"\n[[analysis]]\nkind = "path_patching"\nsenders = ["L0H1", "MLP0"]\n'
                 'receivers = [[1, 0, "q"]]\nmetric = "logit_diff"\n')
    report = run_study(p, tmp_path / "out", progress=False)
    text = report.read_text()
    assert "`resid_pre`" in text and "`z`" in text and "## path_patching" in text
    assert (tmp_path / "out" / "activation_patching" / "z.png").is_file()


# ----------------------------------------------------------------------------- what the CLI takes


def test_run_study_takes_a_model_name_as_the_cli_does(tmp_path):
    """``run_study(..., model="NAME")`` loads the named model, as ``--model NAME`` does: same
    markers and numbers as the override, and as the model loaded by hand."""
    p = _write(tmp_path, GOOD)  # the file names tiny-gpt2
    by_name = run_study(p, tmp_path / "a", model="tiny-llama", only=["baseline"], progress=False)
    by_override = run_study(p, tmp_path / "b", overrides={"model": "tiny-llama"}, only=["baseline"], progress=False)
    loaded = run_study(p, tmp_path / "c", model=load_study_model({"name": "tiny-llama"}), only=["baseline"],
                       progress=False)
    markers = [json.loads((r.parent / "baseline" / "done.json").read_text()) for r in (by_name, by_override, loaded)]
    assert {m["model"] for m in markers} == {"tiny-llama-2l"}  # not the file's tiny-gpt2
    numbers = [{k: v for k, v in m["numbers"].items() if k != "seconds"} for m in markers]
    assert numbers[0] == numbers[1] == numbers[2]


@pytest.mark.slow
def test_run_study_loads_smollm2_by_name(tmp_path):
    report = run_study(EXAMPLES / "ioi.toml", tmp_path / "o", model="smollm2-135m",
                       overrides={"dataset.n_prompts": 4}, only=["baseline"], progress=False)
    marker = json.loads((report.parent / "baseline" / "done.json").read_text())
    assert marker["model"] == "smollm2-135m" and marker["model_spec"] == {"name": "smollm2-135m"}


def test_docs_tiny_model_override_runs_as_written(tmp_path):
    """The ``--set 'model={...}'`` command of docs/studies.md, as written (only its first two
    analyses, for time): the model and dataset build and the analyses run."""
    import shlex

    from mechlens.cli import main

    text = (Path(__file__).resolve().parent.parent / "docs" / "studies.md").read_text()
    (command,) = [b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "tiny-gpt2" in b]
    args = shlex.split(command.replace("\\\n", " "))
    assert args[:2] == ["mechlens", "study"]
    args = args[2:]
    args[args.index("--out") + 1] = str(tmp_path / "tiny")
    args[0] = str(EXAMPLES.parent / args[0])
    with pytest.raises(SystemExit) as exc:
        main(["study", *args, "--only", "baseline", "--only", "mlp_zero_ablation"])
    assert exc.value.code == 0
    marker = json.loads((tmp_path / "tiny" / "mlp_zero_ablation" / "done.json").read_text())
    assert marker["model"] == "tiny-gpt2-30l"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["study", "x.toml", "--out", "o", "--fast"],
         ["No such option: --fast", "--fast is an option of `mechlens reproduce sentiment`"]),
        (["study", "x.toml", "--out", "o", "--forse"], ["The closest option of `mechlens study` is --force"]),
        (["reproduce", "sentiment", "--out", "o", "--only", "x"],
         ["--only is an option of `mechlens study`", "`mechlens reproduce sentiment` has --address"]),
    ],
)
def test_unknown_flag_names_the_closest_and_its_command(argv, expected, capsys):
    from mechlens.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    for part in expected:
        assert part in err, err
