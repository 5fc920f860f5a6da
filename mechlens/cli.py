"""The ``mechlens`` command line.

Every argument is checked while the command line is parsed (the option callbacks under
"argument checks"), so a typo fails at once: before a model loads and before any folder is
made. Messages name the flag (``--model smollm2-135m``) and suggest close matches. A hub model
is loaded only after a quick check that the hub answers (see ``_hub_problem``).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import typer
from typer.core import TyperCommand

from mechlens.models import OFFLINE_MODEL

# rich_markup_mode=None: click's plain help, which re-wraps each paragraph (typer's rich help
# keeps the docstrings' line breaks) and shows no type metavar on flags (`--fast <bool>`).
app = typer.Typer(
    help="mechlens: mechanistic interpretability on TransformerLens (patching, sentiment "
    "directions, circuits, steering). Every command runs offline on the bundled "
    f"{OFFLINE_MODEL!r} model.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


# --------------------------------------------------------------------------- argument checks


class ArgumentError(ValueError):
    """A command-line argument that cannot work; the message names the flag."""


def _options(command: typer.core.TyperCommand) -> list[str]:
    return [o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")]


def _commands(command: typer.core.TyperCommand, path: str) -> list[tuple[str, typer.core.TyperCommand]]:
    """(``mechlens reproduce sentiment``, command) for every command under ``command``."""
    subcommands = getattr(command, "commands", None)  # a group
    if subcommands is None:
        return [(path, command)]
    return [found for name, sub in subcommands.items() for found in _commands(sub, f"{path} {name}")]


def _unknown_option(ctx: typer.Context, given: str) -> str:
    """The message for an option ``ctx.command`` does not have: the command it belongs to, if
    another has it, and the closest option of this command."""
    flag = given.split("=", 1)[0]
    root = ctx.find_root()
    elsewhere = [path for path, cmd in _commands(root.command, root.info_name or "mechlens")
                 if cmd is not ctx.command and flag in _options(cmd)]
    mine = sorted(set(_options(ctx.command)) - {"--help"})
    close = difflib.get_close_matches(flag, mine, n=1, cutoff=0.6)
    text = f"No such option: {flag} (`{ctx.command_path}` has {', '.join(o for o in mine if o.startswith('--'))})."
    if elsewhere:
        text += f" {flag} is an option of `{'`, `'.join(elsewhere)}`."
    if close:
        text += f" The closest option of `{ctx.command_path}` is {close[0]}."
    return text


class _Command(TyperCommand):
    """A command whose "no such option" error names the closest option it has, and the other
    command an option belongs to (``mechlens study x.toml --fast``: ``--fast`` is an option of
    ``mechlens reproduce sentiment``)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except Exception as e:
            # the NoSuchOption of the click that typer runs on (typer vendors its own click)
            if type(e).__name__ != "NoSuchOption":
                raise
            raise type(e)(e.option_name, message=_unknown_option(ctx, e.option_name), ctx=ctx) from None


def _did_you_mean(value: str, choices: list[str], flag: str) -> str:
    """' Did you mean --flag X?' for the closest choice (case-insensitive), or ''."""
    spelled = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(value.lower(), list(spelled), n=1, cutoff=0.6)
    return f" Did you mean {flag} {spelled[close[0]]}?" if close else ""


def _hub_names() -> dict[str, str]:
    """TransformerLens' known hub models: each name and alias, as spelled -> official name."""
    try:
        from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES
    except ImportError:  # TransformerLens 3.x
        from transformer_lens.loading_from_pretrained import MODEL_ALIASES, OFFICIAL_MODEL_NAMES
    names = {n: n for n in OFFICIAL_MODEL_NAMES}
    for official, aliases in MODEL_ALIASES.items():
        names.update(dict.fromkeys(aliases, official))
    return names


_MODEL_FORMS = (
    f"--model takes {OFFLINE_MODEL} (bundled, offline), a hub name such as gpt2-small or "
    "owner/name (needs the Hugging Face hub), or the folder of a saved Hugging Face model"
)


def _is_offline_model(name: str) -> bool:
    from mechlens.models import SMOLLM2_ALIASES

    return name.lower() in SMOLLM2_ALIASES


def _is_folder_name(name: str) -> bool:
    return (
        Path(name).expanduser().exists()
        or name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or "\\" in name
    )


def check_model(name: str) -> str:
    """``--model``: the bundled model, a saved model folder, or a hub name mechlens can load."""
    if _is_offline_model(name):
        return name
    if _is_folder_name(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise ArgumentError(f"--model {name}: no such folder. {_MODEL_FORMS}")
        if not path.is_dir():
            raise ArgumentError(f"--model {name} is a file, not a folder. {_MODEL_FORMS}")
        if not (path / "config.json").exists():
            raise ArgumentError(
                f"--model {name}: the folder holds no config.json; save a Hugging Face model "
                "there with model.save_pretrained(dir) and tokenizer.save_pretrained(dir)"
            )
        return name
    known = _hub_names()
    if name.lower() in {n.lower() for n in known}:
        return name
    if name.count("/") == 1:  # any hub repository, owner/name
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(name)
        except HFValidationError as exc:
            raise ArgumentError(f"--model {name} is not a valid hub name. {_MODEL_FORMS}") from exc
        return name
    hint = _did_you_mean(name, [OFFLINE_MODEL, *known], "--model")
    raise ArgumentError(f"--model {name} is not a model mechlens knows.{hint} {_MODEL_FORMS}")


def check_device(device: str | None) -> str | None:
    """``--device``: a torch device that exists on this machine."""
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ArgumentError(
            f"--device {device} is not a torch device; use --device cpu, cuda, cuda:1 or mps"
        ) from exc
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ArgumentError(f"--device {device}: this machine has no CUDA GPU torch can use; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ArgumentError(f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 .. cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ArgumentError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ArgumentError(f"--device {device}: mechlens runs on cpu, cuda or mps")
    return device


def check_out(out: Path) -> Path:
    """``--out``: a folder (made later, once the model has loaded), not a file."""
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {out} is a file; give a folder (it is made if missing)")
    return out


def check_stages(stages: list[str] | None) -> list[str] | None:
    """``--stage``: names of ``mechlens reproduce sentiment`` stages."""
    from mechlens.reproduce import STAGES

    for name in stages or []:
        if name not in STAGES:
            hint = _did_you_mean(name, list(STAGES), "--stage")
            raise ArgumentError(
                f"--stage {name} is not a stage.{hint} Stages: {', '.join(STAGES)}"
            )
    return stages


def check_positive(value: int) -> int:
    if value < 1:
        raise ArgumentError(f"--batch-size {value}: give a positive number of sequences per forward pass")
    return value


ModelOpt = typer.Option(
    OFFLINE_MODEL, "--model", "-m", metavar="NAME", callback=check_model,
    help=f"{OFFLINE_MODEL} (bundled, offline), a hub name such as gpt2-small or owner/name "
    "(needs the Hugging Face hub), or the folder of a saved Hugging Face model.",
)
DeviceOpt = typer.Option(
    None, "--device", metavar="DEVICE", callback=check_device,
    help="Torch device: cpu (default), cuda, cuda:1, mps.",
)


# --------------------------------------------------------------------------- loading


def _hub_problem(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (None when it answers within ``timeout``).

    One HEAD request to the hub's endpoint (``HF_ENDPOINT``, proxies honoured): without it, an
    unreachable hub costs about a minute of retries inside the download code before failing.
    """
    import httpx
    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    try:
        httpx.head(endpoint, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{endpoint} does not answer: {type(exc).__name__}{f': {exc}' if str(exc) else ''}"
    return None


def _go_offline() -> None:
    """Hub downloads read the local cache only, for the rest of this process."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True  # read at import; the download code checks this attribute


def _hub_cached(name: str) -> bool:
    """Whether the local Hugging Face cache holds the model's config (TransformerLens names
    are case-insensitive)."""
    from huggingface_hub import try_to_load_from_cache

    official = {k.lower(): v for k, v in _hub_names().items()}.get(name.lower(), name)
    return isinstance(try_to_load_from_cache(official, "config.json"), str)


def _load(model: str, device: str | None):
    """Load an already checked ``--model``; a hub model only if the hub (or the cache) has it."""
    from mechlens.models import ModelNotAvailableError, hub_offline, load_model

    hub = not _is_offline_model(model) and not _is_folder_name(model)
    if hub:
        offline = hub_offline()
        why = "HF_HUB_OFFLINE is set" if offline else _hub_problem()
        if why is not None:
            if not _hub_cached(model):
                raise ArgumentError(
                    f"--model {model} needs the Hugging Face hub ({why}) and is not in the local "
                    f"cache; run with --model {OFFLINE_MODEL} (bundled, offline)"
                )
            if not offline:
                typer.echo(f"note: the hub is unreachable ({why}); loading {model} from the local cache", err=True)
                _go_offline()
    from mechlens.engine.threads import threads

    try:
        loaded = load_model(model, device=device)
    except ModelNotAvailableError as exc:
        if not hub:
            raise
        cause = exc.__cause__ or exc
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ArgumentError(
            f"--model {model} did not load from the Hugging Face hub ({first}); "
            f"run with --model {OFFLINE_MODEL} (bundled, offline)"
        ) from exc
    typer.echo(f"loaded {model} ({threads()} CPU threads; mechlens --threads N to change)", err=True)
    return loaded


# --------------------------------------------------------------------------- commands


def check_threads(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise ArgumentError(f"--threads {value}: give a positive number of CPU threads")
    return value


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback when a command fails."),
    threads: int | None = typer.Option(
        None, "--threads", metavar="N", callback=check_threads,
        help="CPU threads torch may use (default: MECHLENS_THREADS, else one per core). With two jobs on "
        "one machine, give each half the cores.",
    ),
) -> None:
    """mechlens: mechanistic interpretability on TransformerLens."""
    if debug:
        os.environ["MECHLENS_DEBUG"] = "1"
    if threads is not None:
        from mechlens.engine.threads import set_threads

        set_threads(threads)


def _debug() -> bool:
    return os.environ.get("MECHLENS_DEBUG", "") not in ("", "0")


@app.command(cls=_Command, short_help="Baseline logit differences and accuracies: the task check.")
def baseline(
    model: str = ModelOpt,
    out: Path = typer.Option(
        ..., "--out", "-o", metavar="DIR", callback=check_out,
        help="Folder for baseline.json and baseline.md.",
    ),
    device: str | None = DeviceOpt,
    batch_size: int = typer.Option(32, metavar="N", callback=check_positive, help="Sequences per forward pass."),
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


reproduce_app = typer.Typer(
    help="Reproduce a published study end to end.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(reproduce_app, name="reproduce")


@reproduce_app.command("sentiment", cls=_Command)
def reproduce_sentiment(
    model: str = ModelOpt,
    out: Path = typer.Option(
        ..., "--out", "-o", metavar="DIR", callback=check_out,
        help="Folder for report.md, figures and JSON.",
    ),
    fast: bool = typer.Option(False, "--fast", help="A small version (fewer layers, prompts, draws): minutes on 2 cores."),
    force: bool = typer.Option(False, "--force", help="Re-run stages whose results are already in OUT."),
    stage: list[str] = typer.Option(
        None, "--stage", metavar="NAME", callback=check_stages,
        help="Run only this stage (repeatable): baseline, patching, directions, circuit, motif, caa, attention.",
    ),
    device: str | None = DeviceOpt,
    workers: int = typer.Option(
        1, "--workers", min=1, metavar="N",
        help="Run the patching stage's sweeps on N Ray workers (pip install 'mechlens[ray]').",
    ),
    address: str | None = typer.Option(
        None, "--address", metavar="HOST:PORT",
        help="Ray cluster for --workers (default: $MECHLENS_RAY_ADDRESS, else this machine).",
    ),
) -> None:
    """Reproduce Tigges et al. 2023 (sentiment) on one model; writes OUT/report.md.

    Stages: baseline logit differences, activation patching heatmaps, sentiment directions
    (table, cosines, directional patching), the sentiment circuit, the summarization motif,
    the CAA view and an offline attention render. Each stage writes OUT/<stage>/ (figures,
    CSV, saved results) and is skipped next time unless --force. --fast takes about 5
    minutes on 2 CPU cores; the full run about 35. --workers N splits the patching sweeps
    over N Ray workers (docs/scale.md)."""
    from mechlens.reproduce import reproduce_sentiment as run

    m = _load(model, device)
    # workers may start in another folder: give them a local model directory's full path
    name = str(Path(model).resolve()) if Path(model).is_dir() else model
    spec = {"name": name, "device": device} if device else name
    report = run(m, out, fast=fast, force=force, stages=stage or None, workers=workers, model_spec=spec,
                 address=address)
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


@app.command(cls=_Command, short_help="Run a circuit-analysis study written in a TOML file.")
def study(
    file: Path = typer.Argument(..., metavar="FILE", help="The study file (TOML; see docs/studies.md and examples/)."),
    out: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="Folder for report.md, figures, tables and JSON."),
    model: str | None = typer.Option(None, "--model", "-m", metavar="NAME", help="Use this model instead of the file's "
                                      "(a load_model name, a directory, or tiny-gpt2 / tiny-neox / tiny-llama)."),
    set_: list[str] = typer.Option(None, "--set", metavar="KEY=VALUE", help="Replace a value of the file: KEY=VALUE with a TOML value "
                                   "(repeatable), e.g. --set dataset.n_prompts=8 --set 'analysis[2].how=\"zero\"'."),
    force: bool = typer.Option(False, "--force", help="Re-run analyses whose results are already in OUT."),
    only: list[str] = typer.Option(None, "--only", metavar="NAME", help="Run only this analysis (by name; repeatable)."),
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


# --------------------------------------------------------------------------- errors


def _user_error(exc: BaseException) -> bool:
    """A failure the user caused and mechlens explained (a bad argument, a missing or damaged
    file, a model that is not there), as opposed to a bug: exit 2 and no --debug hint."""
    return isinstance(exc, (ValueError, TypeError, OSError)) or type(exc).__module__.startswith("mechlens")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    plain = (ValueError, TypeError, FileNotFoundError, NotADirectoryError)
    if isinstance(exc, ArgumentError):
        return text
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
