"""The ``mechlens`` command line."""

from __future__ import annotations

import json
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
def _root() -> None:
    """mechlens: mechanistic interpretability on TransformerLens."""


def _load(model: str, device: str | None):
    from mechlens.models import ModelNotAvailableError, load_model

    try:
        return load_model(model, device=device)
    except ModelNotAvailableError as exc:
        typer.echo(f"error: {exc}", err=True)
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

    m = _load(model, device)
    res = run_baseline(m, batch_size=batch_size)
    out.mkdir(parents=True, exist_ok=True)
    df = res.to_dataframe()
    (out / "baseline.json").write_text(
        json.dumps({"model": res.model_name, "datasets": df.to_dict(orient="records"), "meta": res.meta}, indent=1)
    )
    (out / "baseline.md").write_text(res.to_markdown())
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
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"wrote {report}")


def main() -> None:  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
