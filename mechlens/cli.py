"""The ``mechlens`` command line."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from mechlens.models import OFFLINE_MODEL

app = typer.Typer(
    help="mechlens: mechanistic interpretability on TransformerLens (patching, sentiment "
    "directions, circuits, steering). Every command runs offline on the bundled "
    f"{OFFLINE_MODEL!r} model.",
    no_args_is_help=True,
    add_completion=False,
)

ModelOpt = typer.Option(
    OFFLINE_MODEL, "--model", "-m",
    help=f"Model: {OFFLINE_MODEL!r} (bundled, offline), a hub name such as 'gpt2-small' "
    "(needs the Hugging Face hub), or a local Hugging Face model directory.",
)
DeviceOpt = typer.Option(None, "--device", help="Torch device (default: cpu).")


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback when a command fails."),
) -> None:
    """mechlens: mechanistic interpretability on TransformerLens."""
    if debug:
        os.environ["MECHLENS_DEBUG"] = "1"


def _debug() -> bool:
    return os.environ.get("MECHLENS_DEBUG", "") not in ("", "0")


def _load(model: str, device: str | None):
    from mechlens.models import ModelNotAvailableError, load_model

    try:
        return load_model(model, device=device)
    except ModelNotAvailableError as exc:
        if _debug():
            raise
        typer.echo(f"error: {_one_line(exc)}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def baseline(
    model: str = ModelOpt,
    out: Path = typer.Option(..., "--out", "-o", help="Directory for baseline.json and baseline.md."),
    device: str | None = DeviceOpt,
    batch_size: int = typer.Option(32, help="Prompts per forward pass."),
) -> None:
    """Baseline logit differences and accuracies (ToyMovieReview, ToyMoodStory).

    Clean and corrupt logit differences, bias and (centred) accuracy on ToyMovieReview train
    and test and on ToyMoodStory: the check that the model does the task before any analysis.
    Writes OUT/baseline.json and OUT/baseline.md."""
    from mechlens.baseline import baseline as run_baseline
    from mechlens.fileio import write_json, write_text

    m = _load(model, device)
    res = run_baseline(m, batch_size=batch_size)
    df = res.to_dataframe()
    write_json(out / "baseline.json", {"model": res.model_name, "datasets": df.to_dict(orient="records"), "meta": res.meta})
    write_text(out / "baseline.md", res.to_markdown())
    typer.echo(res.to_markdown())
    typer.echo(f"wrote {out / 'baseline.json'} and {out / 'baseline.md'}")


reproduce_app = typer.Typer(help="Reproduce a published study end to end.", no_args_is_help=True)
app.add_typer(reproduce_app, name="reproduce")


@reproduce_app.command("sentiment")
def reproduce_sentiment(
    model: str = ModelOpt,
    out: Path = typer.Option(..., "--out", "-o", help="Directory for report.md, figures and JSON."),
    fast: bool = typer.Option(False, "--fast", help="A small version (fewer layers, prompts, draws): minutes on 2 cores."),
    force: bool = typer.Option(False, "--force", help="Re-run stages whose results are already in OUT."),
    stage: list[str] = typer.Option(None, "--stage", help="Run only this stage (repeatable): baseline, patching, directions, circuit, motif, caa, attention."),
    device: str | None = DeviceOpt,
) -> None:
    """Reproduce Tigges et al. 2023 (sentiment) on one model; writes OUT/report.md.

    Stages: baseline logit differences, activation patching heatmaps, sentiment directions
    (table, cosines, directional patching), the sentiment circuit, the summarization motif,
    the CAA view and an offline attention render. Each stage writes OUT/<stage>/ (figures,
    CSV, saved results) and is skipped next time unless --force. --fast takes about 5
    minutes on 2 CPU cores; the full run about 35."""
    from mechlens.reproduce import reproduce_sentiment as run

    m = _load(model, device)
    try:
        report = run(m, out, fast=fast, force=force, stages=stage or None)
    except ValueError as exc:
        if _debug():
            raise
        typer.echo(f"error: {_one_line(exc)}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"wrote {report}")


def _set_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with a TOML value (a bare word is a string): ``dataset.n_prompts=8``."""
    import re

    from mechlens.study import tomllib

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"{text!r}: write KEY=VALUE, e.g. dataset.n_prompts=8 or model=tiny-gpt2")
    value = value.strip()
    if re.fullmatch(r"[A-Za-z_][\w\-./]*", value) and value not in ("true", "false"):
        return key.strip(), value
    try:
        return key.strip(), tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError as exc:
        raise typer.BadParameter(f"{text!r}: the value is not a TOML value ({exc}); quote strings") from None


@app.command()
def study(
    file: Path = typer.Argument(..., help="The study file (TOML; see docs/studies.md and examples/)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for report.md, figures, tables and JSON."),
    model: str | None = typer.Option(None, "--model", "-m", help="Use this model instead of the file's "
                                      "(a load_model name, a directory, or tiny-gpt2 / tiny-neox / tiny-llama)."),
    set_: list[str] = typer.Option(None, "--set", help="Replace a value of the file: KEY=VALUE with a TOML value "
                                   "(repeatable), e.g. --set dataset.n_prompts=8 --set 'analysis[2].how=\"zero\"'."),
    force: bool = typer.Option(False, "--force", help="Re-run analyses whose results are already in OUT."),
    only: list[str] = typer.Option(None, "--only", help="Run only this analysis (by name; repeatable)."),
    check: bool = typer.Option(False, "--check", help="Only check the file (no model is loaded)."),
    device: str | None = DeviceOpt,
) -> None:
    """Run a circuit-analysis study written in a TOML file; writes OUT/report.md.

    The file names a model, a dataset (ioi, toy_movie_review, toy_mood_story, or a JSONL/CSV
    file of prompt pairs) and a list of analyses (baseline, activation_patching, ablation,
    knockout_curve, logit_lens, direct_logit_attribution, attribution_patching,
    edge_attribution_patching, path_patching, directions). The file is checked before the
    model loads; analyses already done in OUT are skipped unless --force; report.md is
    rewritten after every finished analysis."""
    from mechlens.study import load_study, run_study

    overrides: dict[str, object] = dict(_set_value(s) for s in (set_ or []))
    if model is not None:
        overrides["model"] = model
    if check:
        s = load_study(file, overrides)
        typer.echo(f"{file}: ok ({len(s.names)} analyses: {', '.join(s.names)})")
        return
    report = run_study(file, out, overrides=overrides, force=force, only=only or None, device=device)
    typer.echo(f"wrote {report}")


def _user_error(exc: BaseException) -> bool:
    """A failure the user caused and mechlens explained (a bad argument, a missing or damaged
    file, a model that is not there), as opposed to a bug: exit 2 and no --debug hint."""
    return isinstance(exc, (ValueError, TypeError, OSError)) or type(exc).__module__.startswith("mechlens")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    plain = (ValueError, TypeError, FileNotFoundError, NotADirectoryError)
    if type(exc) not in plain and not type(exc).__module__.startswith("mechlens"):
        text = f"{type(exc).__name__}: {text}"
    return text


def main(argv: list[str] | None = None) -> None:
    """The ``mechlens`` command: on failure one ``error: ...`` line on stderr and a non-zero exit
    (2 for a bad input, 1 otherwise, 130 when interrupted); ``--debug`` shows the traceback."""
    import sys

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = list(sys.argv[1:] if argv is None else argv)
    saved = os.environ.get("MECHLENS_DEBUG")
    if "--debug" in args:  # accepted anywhere on the command line; restored on return
        os.environ["MECHLENS_DEBUG"] = "1"
    debug = _debug()
    args = [a for a in args if a != "--debug"]
    try:
        app(args=args, prog_name="mechlens")
    except SystemExit:
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        user = _user_error(exc)
        hint = "" if user else " (run with --debug for the traceback)"
        typer.echo(f"error: {_one_line(exc)}{hint}", err=True)
        sys.exit(2 if user else 1)
    finally:
        if saved is None:
            os.environ.pop("MECHLENS_DEBUG", None)
        else:
            os.environ["MECHLENS_DEBUG"] = saved


if __name__ == "__main__":  # pragma: no cover
    main()
