"""Result save/load round trips and the baseline job."""

import json

import torch
from typer.testing import CliRunner

from mechlens.baseline import BaselineResult, baseline
from mechlens.cli import app
from mechlens.data import toy_movie_review


def test_baseline_on_tiny_model_roundtrips(tiny_gpt2, tmp_path):
    ds = toy_movie_review(tiny_gpt2, "test")
    res = baseline(tiny_gpt2, [ds], progress=False)
    # corrupt prompts scored with the clean answers: for the tiny model the two runs
    # are each other's partners, so the LDs are a permutation with the sign flipped
    c, k = res.clean[ds.name], res.corrupt[ds.name]
    assert torch.allclose(k, -c.roll(-1), atol=1e-5)
    res.save(tmp_path / "r")
    back = BaselineResult.load(tmp_path / "r")
    assert back.datasets == res.datasets and back.model_name == res.model_name
    assert all(torch.equal(back.clean[n], res.clean[n]) for n in res.datasets)
    assert back.meta == res.meta
    assert back.to_dataframe().equals(res.to_dataframe())
    assert res.plot().axes


def test_cli_help_and_baseline(shared_smollm2, tmp_path, monkeypatch):
    # the command line is tested here, not the model load: --model smollm2-135m is the session's model
    runner = CliRunner()
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0 and "baseline" in out.output
    out = runner.invoke(app, ["baseline", "--help"])
    assert out.exit_code == 0 and "--model" in out.output
    out = runner.invoke(app, ["baseline", "--model", "smollm2-135m", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    doc = json.loads((tmp_path / "baseline.json").read_text())
    rows = {r["dataset"]: r for r in doc["datasets"]}
    assert rows["toy_movie_review/test"]["clean_ld"] > 1
    assert rows["toy_movie_review/test"]["clean_acc_centred"] >= 0.9
    assert "toy_mood_story" in rows
    assert "| toy_movie_review/train" in (tmp_path / "baseline.md").read_text()
    bad = runner.invoke(app, ["baseline", "--model", "gpt2-small", "--out", str(tmp_path)])
    # checked while parsing, before any model loads (main() turns it into exit code 2)
    assert isinstance(bad.exception, ValueError) and "--model smollm2-135m" in str(bad.exception)


def test_markdown_table_keeps_integer_columns_integer():
    import pandas as pd

    from mechlens.results import markdown_table

    df = pd.DataFrame({"layer": [21, 3], "head": [1, 0], "value": [0.12345, -1.0]})
    text = markdown_table(df)
    assert "|      21 |" in text and "21.000" not in text
    assert "0.123" in text and "-1.000" in text
    assert df.to_markdown(index=False, floatfmt=".3f").count("21.000") == 1  # what it avoids
