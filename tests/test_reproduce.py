"""The staged `reproduce sentiment` pipeline, every stage, on a tiny model (fast settings)."""

import re

import pytest

from mechlens.models import tiny
from mechlens.reproduce import STAGES, reproduce_sentiment


@pytest.fixture(scope="module")
def model():
    # n_ctx 256: the CAA stage's A/B prompts are longer than the default 128
    return tiny("gpt2", n_layers=2, seed=1, n_ctx=256)


@pytest.fixture(scope="module")
def report(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    # the tiny tokenizer has no single-token " negative": the motif stage skips mini-SST, saying so
    with pytest.warns(UserWarning, match="mini-SST skipped"):
        path = reproduce_sentiment(model, out, fast=True, progress=False)
    return path


def test_every_stage_is_in_the_report_with_its_figures(report):
    out, text = report.parent, report.read_text()
    for title, _ in STAGES.values():
        assert f"\n## {title}\n" in text, title
    links = re.findall(r"\]\(([^)]+\.(?:png|html))\)", text)
    assert len(links) >= 9
    for rel in links:
        assert (out / rel).is_file(), rel
    for name in STAGES:
        assert (out / name / "done.json").is_file(), name
    assert "cdn" not in (out / "attention/attention.html").read_text().lower()[:2000]
    assert "Directional ablation on mini-SST skipped" in text
    # whole-prompt noising is the corrupt run: -100% by construction
    assert re.search(r"\| whole prompt\s+\|\s+-1\.000 \|", text)
    assert "Faithfulness" in text and "| ADJ+VRB+END " in text


def test_done_stages_are_skipped_unless_forced(model, report):
    out = report.parent
    marker = out / "baseline" / "done.json"
    before = marker.stat().st_mtime_ns
    reproduce_sentiment(model, out, fast=True, stages=["baseline"], progress=False)
    assert marker.stat().st_mtime_ns == before
    reproduce_sentiment(model, out, fast=True, force=True, stages=["baseline"], progress=False)
    assert marker.stat().st_mtime_ns != before
    assert "## Summarization motif" in report.read_text()  # the other stages' sections stay


def test_unknown_stage(model, tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        reproduce_sentiment(model, tmp_path / "out", stages=["nope"])
    assert not (tmp_path / "out").exists()  # a typo leaves no empty folder behind
    assert list(STAGES)[:3] == ["baseline", "patching", "directions"]


def test_cli_stage_help_names_every_stage():
    import typer.main

    from mechlens.cli import app

    group = typer.main.get_command(app)
    sentiment = group.commands["reproduce"].commands["sentiment"]
    (opt,) = [p for p in sentiment.params if p.name == "stage"]
    assert all(name in opt.help for name in STAGES)


def test_run_prints_its_plan_and_estimate_first(tmp_path, capsys):
    """Before the first bar: the stages to run with a rough time each, and those skipped."""
    from mechlens.models import tiny
    from mechlens.reproduce import FAST_TOTAL_MINUTES, FULL_MINUTES, plan, reproduce_sentiment

    model = tiny("gpt2", n_layers=2, seed=1)
    reproduce_sentiment(model, tmp_path, fast=True, stages=["baseline"], progress=True)
    err = capsys.readouterr().err
    assert err.index("1 stage(s) to run") < err.index("Baseline logit differences")
    reproduce_sentiment(model, tmp_path, fast=True, stages=["baseline", "attention"], progress=True)
    err = capsys.readouterr().err
    assert "1 stage(s) to run" in err and "already done in the output folder (skipped; --force reruns them): baseline" in err
    # smollm2-135m's shape: the full run's estimate is the sum of the stage times
    model.cfg.n_layers, model.cfg.d_model = 30, 576
    text = plan(model, list(FULL_MINUTES), [], fast=False)
    assert f"~{sum(FULL_MINUTES.values()):.0f} min on 2 CPU cores" in text and f"--fast runs a small version: ~{FAST_TOTAL_MINUTES:.0f} min" in text
