"""``mechlens study FILE.toml --out DIR``: a circuit analysis written down in a file.

A study file names a model, a dataset and a list of analyses with their arguments; the run
writes ``DIR/report.md`` with figures (png), tables (csv, and markdown in the report) and
every result saved as JSON + safetensors (``result.save``), one folder per analysis. It is
resumable like ``mechlens reproduce``: an analysis already done in ``DIR`` with the same
model, dataset and arguments is skipped (``force=True`` reruns), and the report is rewritten
after every finished analysis, so an interrupted run has a report of what finished.

The whole file is checked before any model loads: an unknown key, a value of the wrong type
or out of its range (``limit = 0``, ``test_fraction = 1.5``) or an unknown analysis gets an
error naming the key and its line in the file (with a close-match suggestion for
misspellings). The schema is documented in ``docs/studies.md``;
``examples/ioi.toml`` and ``examples/sentiment_ablation.toml`` are complete studies.

Example::

    from mechlens.study import load_study, run_study

    study = load_study("examples/ioi.toml")            # checked; no model loaded yet
    report = run_study("examples/ioi.toml", "out/ioi")   # loads the model, runs, writes out/ioi/report.md
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from mechlens.ablation import COMPONENTS, HOWS, RANKED_COMPONENTS
from mechlens.circuits.eap import EAP_METHODS, INTERPOLATIONS
from mechlens.circuits.faithfulness import LEVELS
from mechlens.directions.fit import METHODS as DIRECTION_METHODS
from mechlens.engine import BACKENDS, METRICS, MODES
from mechlens.engine.sites import SITES
from mechlens.fileio import write_text
from mechlens.lens import GROUPS
from mechlens.results import markdown_table
from mechlens.stages import run_stages, save_csv, save_fig

__all__ = ["ANALYSES", "Study", "StudyError", "load_study", "run_study", "build_dataset", "load_study_model"]


class StudyError(ValueError):
    """A malformed study file: the message names the file, the line and the key."""


# ----------------------------------------------------------------------------- schema
# A type is a string: "int", "float", "bool", "str", "list[str]", "list[int]", "list[int|str]",
# "list", "table", or alternatives joined with "|" at the top level ("int|list[int]").

LAYERS = "int|list[int]"
POSITIONS = "str|int|list[int|str|list[int|str]]"
# Choices come from the methods' own registries: renaming a value there renames it here.
SITE_NAMES = ", ".join(SITES)


@dataclass(frozen=True)
class Arg:
    type: str
    choices: tuple[Any, ...] | None = None
    doc: str = ""
    #: bounds of a number (of each number of a list), checked with the file: ``lo <= x <= hi``,
    #: or ``lo < x < hi`` when ``open``
    lo: float | None = None
    hi: float | None = None
    open: bool = False

    def out_of_range(self, x: Any) -> str | None:
        """Why the number ``x`` is outside the bounds, or ``None``."""
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return None
        lo_bad = self.lo is not None and (x <= self.lo if self.open else x < self.lo)
        hi_bad = self.hi is not None and (x >= self.hi if self.open else x > self.hi)
        if not (lo_bad or hi_bad):
            return None
        if self.lo is not None and self.hi is not None:
            return f"{x!r} must be {'strictly ' if self.open else ''}between {self.lo:g} and {self.hi:g}"
        if self.lo is not None:
            return f"{x!r} must be {'>' if self.open else '>='} {self.lo:g}"
        return f"{x!r} must be {'<' if self.open else '<='} {self.hi:g}"


COMMON = {
    "kind": Arg("str", None, "the analysis (required)"),
    "name": Arg("str", None, "its folder and section name (default: kind, numbered when repeated)"),
    "batch_size": Arg("int", None, "sequences per forward pass (default: the study's batch_size)", lo=1),
    "top": Arg("int", None, "rows of the top-cells table in the report (default 10)", lo=1),
}

ANALYSES: dict[str, dict[str, Arg]] = {
    "baseline": {},
    "activation_patching": {
        "site": Arg("str|list[str]", None, SITE_NAMES),
        "metric": Arg("str", METRICS), "mode": Arg("str", MODES), "layers": Arg(LAYERS),
        "positions": Arg(POSITIONS), "heads": Arg("int|list[int]"), "backend": Arg("str", BACKENDS),
    },
    "attribution_patching": {
        "site": Arg("str|list[str]"), "metric": Arg("str", METRICS), "mode": Arg("str", MODES),
        "layers": Arg(LAYERS), "positions": Arg(POSITIONS), "heads": Arg("int|list[int]"),
    },
    "ablation": {
        "component": Arg("str", COMPONENTS),
        "how": Arg("str", HOWS), "layers": Arg(LAYERS), "heads": Arg("int|list[int]"),
        "neurons": Arg("int|list[int]"), "positions": Arg(POSITIONS), "metric": Arg("str", ("logit_diff",)),
        "seed": Arg("int"),
    },
    "knockout_curve": {
        "order": Arg("list[str]", None, "components to remove, first first ('L3H2', 'L3 mlp', 'L3')"),
        "component": Arg("str", RANKED_COMPONENTS), "how": Arg("str", HOWS),
        "max_k": Arg("int", lo=1), "metric": Arg("str", ("logit_diff",)), "seed": Arg("int"),
    },
    "logit_lens": {
        "positions": Arg("str|int|list[int|str]"), "layers": Arg(LAYERS),
        "top_tokens": Arg("int", None, "also list the top k tokens the lens reads (example 0, END)", lo=1),
    },
    "direct_logit_attribution": {
        "group": Arg("str", GROUPS), "layers": Arg(LAYERS),
    },
    "edge_attribution_patching": {
        "faithfulness": Arg("list[int]", None, "numbers of top edges to keep in the faithfulness curve", lo=0),
        "n_random": Arg("int", None, "random edge sets of the same size per k (default 0)", lo=0),
        "seed": Arg("int"),
    },
    "eap_ig": {
        "interpolate": Arg("str", INTERPOLATIONS, "interpolate the input embeddings or each edge's "
                           "sender activations (MIB's two EAP-IG variants)"),
        "ig_steps": Arg("int", None, "integration steps (default 5)"),
    },
    "faithfulness_curve": {
        "methods": Arg("list[str]", EAP_METHODS, "edge scorings compared"),
        "ig_steps": Arg("int", None, "integration steps of the EAP-IG scorings (default 5)"),
        "fractions": Arg("list", None, "circuit sizes as fractions of all edges (default: MIB's grid)"),
        "n_random": Arg("int", None, "random edge sets per size (default 5)"), "seed": Arg("int"),
        "level": Arg("str", LEVELS, "circuits of edges (default) or of nodes (heads, MLPs)"),
    },
    "circuit_stability": {
        "method": Arg("str", EAP_METHODS), "ig_steps": Arg("int"),
        "k": Arg("int", None, "top edges compared (default 20)"),
        "n_resamples": Arg("int", None, "bootstrap resamples of the prompts (default 10)"), "seed": Arg("int"),
        "faithfulness": Arg("bool", None, "also the CPR/CMD spread over resamples (default true)"),
        "by_template": Arg("bool", None, "also compare the circuits of each template (default true)"),
    },
    "path_patching": {
        "senders": Arg("str|list", None, "'all_heads', 'all_mlps' or a list of nodes ('L3H2', 'MLP3')"),
        "receivers": Arg("str|list", None, "'resid_final' or a list of [layer, head, 'q'|'k'|'v'|'qkv']"),
        "metric": Arg("str", METRICS), "mode": Arg("str", MODES), "position": Arg(POSITIONS),
        "receiver_position": Arg(POSITIONS), "layers": Arg(LAYERS), "freeze_mlps": Arg("bool"),
        "backend": Arg("str", BACKENDS),
    },
    "directions": {
        "methods": Arg("list[str]", None, ", ".join(DIRECTION_METHODS)), "layers": Arg(LAYERS),
        "position": Arg("str"), "site": Arg("str"), "n_random": Arg("int", lo=0), "seed": Arg("int"),
        "test_fraction": Arg("float", None, "share of examples held out for the test split (default 0.5)",
                             lo=0, hi=1, open=True),
    },
    "steering": {
        "method": Arg("str|list[str]", None, "caa (toy_movie_review only), mean_diff, kmeans, logistic, pca, das"),
        "layer": Arg("int", None, "where the unit vector is added (resid_pre; default: the middle layer)"),
        "coeffs": Arg("list[float]", None, "coefficients in residual-stream units, 0 included (default -16..16)"),
        "target": Arg("float", None, "mean logit-difference shift to compare the methods at (default 1.0)"),
        "instruction": Arg("str", None, "prompting baseline: the behaviour asked for (default 'Answer positively.')"),
        "position": Arg("str"), "seed": Arg("int"),
        "test_fraction": Arg("float", None, "share of examples held out for the test split (default 0.5)"),
    },
}

TOP = {
    "title": Arg("str"), "description": Arg("str"), "seed": Arg("int"), "batch_size": Arg("int", lo=1),
    "model": Arg("str|table"), "dataset": Arg("table"), "analysis": Arg("list"),
}
MODEL = {
    "name": Arg("str", None, "a load_model name, a directory, or tiny-gpt2 / tiny-neox / tiny-llama"),
    "device": Arg("str"), "n_layers": Arg("int", lo=1), "d_model": Arg("int", lo=1), "n_heads": Arg("int", lo=1),
    "n_ctx": Arg("int", lo=1), "seed": Arg("int"),
}
TINY_ARCHS = ("gpt2", "neox", "llama")
BUILTINS: dict[str, dict[str, Arg]] = {
    "ioi": {"n_prompts": Arg("int", lo=1), "seed": Arg("int"), "templates": Arg("list[str]"), "names": Arg("list[str]"),
            "orders": Arg("list[str]")},
    "toy_movie_review": {"split": Arg("str", ("train", "test", "all")), "filler": Arg("int", lo=0)},
    "toy_mood_story": {"names": Arg("list[str]")},
}
DATASET_COMMON = {
    "builtin": Arg("str", tuple(BUILTINS)), "file": Arg("str", None, "a .jsonl or .csv file (relative to the study file)"),
    "limit": Arg("int", None, "keep the first n examples", lo=1), "name": Arg("str"),
}


# ----------------------------------------------------------------------------- locating keys


class _Lines:
    """Finds the line of a key in a TOML text (tomllib gives no positions)."""

    HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.sections: list[tuple[str, int, int]] = []  # (path like "analysis#2" or "model", start, end)
        counts: dict[str, int] = {}
        current, start = "", 0
        for i, line in enumerate(self.lines):
            m = self.HEADER.match(line)
            if m and not line.lstrip().startswith("#"):
                self.sections.append((current, start, i))
                name = m.group(2).replace('"', "").replace("'", "").replace(" ", "")
                if m.group(1) == "[[":
                    counts[name] = counts.get(name, -1) + 1
                    name = f"{name}#{counts[name]}"
                current, start = name, i
        self.sections.append((current, start, len(self.lines)))

    def find(self, path: tuple[Any, ...]) -> int | None:
        """1-based line of ``path`` (e.g. ``("analysis", 2, "how")``), or of its nearest parent."""
        for n in range(len(path), 0, -1):
            line = self._find(path[:n])
            if line is not None:
                return line
        return None

    def _find(self, path: tuple[Any, ...]) -> int | None:
        # the section the path lives in: the longest header that is a prefix of it
        parts = [f"{p}" for p in path]
        names = []
        i = 0
        while i < len(parts):
            if i + 1 < len(parts) and parts[i + 1].isdigit():
                names.append((f"{parts[i]}#{parts[i + 1]}", i + 2))
                i += 2
            else:
                names.append((parts[i], i + 1))
                i += 1
        for depth in range(len(names), -1, -1):
            sec = ".".join(n for n, _ in names[:depth])
            used = names[depth - 1][1] if depth else 0
            rest = parts[used:]
            for name, start, end in self.sections:
                if name != sec:
                    continue
                if not rest:
                    return start + 1
                key = re.escape(rest[0])
                pat = re.compile(rf"""^\s*["']?{key}["']?\s*(=|\.)""")
                for j in range(start, end):
                    if pat.match(self.lines[j]):
                        return j + 1
        return None


@dataclass
class Study:
    """A checked study file: its parsed content, where it came from, and each analysis's name."""

    path: Path
    doc: dict[str, Any]
    analyses: list[dict[str, Any]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @property
    def model_spec(self) -> dict[str, Any]:
        m = self.doc["model"]
        return {"name": m} if isinstance(m, str) else dict(m)

    @property
    def title(self) -> str:
        return self.doc.get("title") or self.path.stem


def _type_ok(value: Any, t: str) -> bool:
    for alt in _split_alts(t):
        if alt == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if alt == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if alt == "bool" and isinstance(value, bool):
            return True
        if alt == "str" and isinstance(value, str):
            return True
        if alt == "table" and isinstance(value, dict):
            return True
        if alt == "list" and isinstance(value, list):
            return True
        if alt.startswith("list[") and isinstance(value, list):
            inner = alt[5:-1]
            if all(_type_ok(v, inner) for v in value):
                return True
    return False


def _split_alts(t: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in t:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "|" and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [*out, cur]


def _type_words(t: str) -> str:
    words = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
             "table": "a table", "list": "an array"}
    return " or ".join(words.get(a, f"an array of {a[5:-1].replace('|', ' or ')}" if a.startswith("list[") else a)
                       for a in _split_alts(t))


class _Checker:
    def __init__(self, path: Path, text: str, overridden: set[str]) -> None:
        self.path, self.lines, self.overridden = path, _Lines(text), overridden

    def fail(self, keypath: tuple[Any, ...], problem: str) -> StudyError:
        dotted = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(keypath))
        if any(dotted == o or dotted.startswith(o + ".") for o in self.overridden):
            where = f"{self.path} (override {dotted})"
        else:
            line = self.lines.find(keypath)
            where = f"{self.path}, line {line}" if line else str(self.path)
        return StudyError(f"{where}: {dotted}: {problem}")

    def table(self, value: Mapping[str, Any], schema: Mapping[str, Arg], keypath: tuple[Any, ...], what: str) -> None:
        for key, v in value.items():
            if key not in schema:
                near = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.6)
                hint = f"; did you mean {near[0]!r}?" if near else f"; {what} takes {sorted(schema)}"
                raise self.fail((*keypath, key), f"unknown key {key!r}{hint}")
            arg = schema[key]
            if not _type_ok(v, arg.type):
                raise self.fail((*keypath, key), f"must be {_type_words(arg.type)}, not {v!r}")
            if arg.choices is not None:
                for item in v if isinstance(v, list) else [v]:
                    if item not in arg.choices:
                        near = difflib.get_close_matches(str(item), [str(c) for c in arg.choices], n=1, cutoff=0.6)
                        hint = f" (did you mean {near[0]!r}?)" if near else ""
                        raise self.fail((*keypath, key), f"{item!r} is not one of {list(arg.choices)}{hint}")
            for item in v if isinstance(v, list) else [v]:
                if (why := arg.out_of_range(item)) is not None:
                    raise self.fail((*keypath, key), why)


def _apply_overrides(doc: dict[str, Any], overrides: Mapping[str, Any]) -> set[str]:
    """Set dotted keys (``"model"``, ``"dataset.names"``, ``"analysis[2].how"``) in ``doc``."""
    done = set()
    for dotted, value in overrides.items():
        parts: list[Any] = []
        for piece in dotted.split("."):
            m = re.fullmatch(r"([A-Za-z_][\w-]*)((?:\[\d+\])*)", piece)
            if not m:
                raise StudyError(f"override {dotted!r}: write keys like 'model', 'dataset.n_prompts' or 'analysis[0].how'")
            parts.append(m.group(1))
            parts += [int(x) for x in re.findall(r"\[(\d+)\]", m.group(2))]
        node: Any = doc
        for p in parts[:-1]:
            if isinstance(p, int):
                if not isinstance(node, list) or p >= len(node):
                    raise StudyError(f"override {dotted!r}: there is no entry {p} in the file")
                node = node[p]
            else:
                if not isinstance(node, dict):
                    raise StudyError(f"override {dotted!r}: {p!r} is not inside a table")
                node = node.setdefault(p, {})
        last = parts[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise StudyError(f"override {dotted!r}: there is no entry {last} in the file")
        elif not isinstance(node, dict):
            raise StudyError(f"override {dotted!r}: its parent is not a table")
        if last == "model" and node is doc and isinstance(doc.get("model"), dict) and isinstance(value, str):
            value = {"name": value}  # --model NAME replaces the model, dropping the file's tiny options
        node[last] = value
        done.add(re.sub(r"\.(\d+)", r"[\1]", dotted))
    return done


def load_study(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Study:
    """Read and check a study file (no model is loaded).

    Args:
        path: the ``.toml`` file.
        overrides: dotted keys to replace before checking, e.g. ``{"model": "tiny-gpt2",
            "dataset.n_prompts": 8}`` (``mechlens study --model / --set``).

    Raises:
        StudyError: the file is not TOML, or a key is unknown, missing or of the wrong type;
            the message names the file, the line and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path}: not valid TOML: {exc}") from None
    overridden = _apply_overrides(doc, overrides or {})
    ck = _Checker(path, text, overridden)
    ck.table(doc, TOP, (), "a study file")
    for req in ("model", "dataset", "analysis"):
        if req not in doc:
            raise ck.fail((req,), "missing: a study needs 'model', 'dataset' and [[analysis]] entries (see docs/studies.md)")
    model = doc["model"]
    if isinstance(model, dict):
        ck.table(model, MODEL, ("model",), "[model]")
        if "name" not in model:
            raise ck.fail(("model",), "[model] needs name = '...' (a load_model name or tiny-gpt2 / tiny-llama / tiny-neox)")
        name = model["name"]
        tiny_keys = [k for k in model if k not in ("name", "device")]
        if tiny_keys and not name.startswith("tiny-"):
            raise ck.fail(("model", tiny_keys[0]), f"only tiny models take {tiny_keys[0]!r} (model {name!r} is loaded as it is)")
    else:
        name = model
    if name.startswith("tiny-") and name[5:] not in TINY_ARCHS:
        raise ck.fail(("model",), f"tiny model {name!r}: choose one of {[f'tiny-{a}' for a in TINY_ARCHS]}")
    ds = doc["dataset"]
    ck.table(ds, {**DATASET_COMMON, **{k: a for b in BUILTINS.values() for k, a in b.items()}}, ("dataset",), "[dataset]")
    if ("builtin" in ds) == ("file" in ds):
        raise ck.fail(("dataset",), "give exactly one of builtin = 'ioi' | 'toy_movie_review' | 'toy_mood_story' or file = 'pairs.jsonl'")
    allowed = set(DATASET_COMMON) | set(BUILTINS.get(ds.get("builtin", ""), {}))
    for k in ds:
        if k not in allowed:
            what = f"the {ds['builtin']!r} dataset" if "builtin" in ds else "a dataset file"
            raise ck.fail(("dataset", k), f"{what} does not take {k!r}; it takes {sorted(allowed - {'builtin', 'file'})}")
    if "file" in ds:
        f = _data_path(path, ds["file"])
        if f.suffix.lower() not in (".jsonl", ".csv"):
            raise ck.fail(("dataset", "file"), f"{ds['file']!r}: give a .jsonl or .csv file")
        if not f.is_file():
            raise ck.fail(("dataset", "file"), f"{f} does not exist")
    if not doc["analysis"]:
        raise ck.fail(("analysis",), "the list of analyses is empty")
    study = Study(path=path, doc=doc)
    seen: dict[str, int] = {}
    for i, a in enumerate(doc["analysis"]):
        if not isinstance(a, dict):
            raise ck.fail(("analysis", i), "each [[analysis]] must be a table")
        if "kind" not in a:
            raise ck.fail(("analysis", i), f"missing kind = '...' (one of {list(ANALYSES)})")
        kind = a["kind"]
        if not isinstance(kind, str) or kind not in ANALYSES:
            near = difflib.get_close_matches(str(kind), list(ANALYSES), n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else f"; analyses are {list(ANALYSES)}"
            raise ck.fail(("analysis", i, "kind"), f"unknown analysis {kind!r}{hint}")
        ck.table(a, {**COMMON, **ANALYSES[kind]}, ("analysis", i), f"analysis {kind!r}")
        name = a.get("name")
        if name is None:
            seen[kind] = seen.get(kind, 0) + 1
            name = kind if seen[kind] == 1 else f"{kind}_{seen[kind]}"
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name):
            raise ck.fail(("analysis", i, "name"), f"{name!r}: use letters, digits, '_', '-' or '.' (it names a folder)")
        if name in study.names:
            raise ck.fail(("analysis", i, "name"), f"two analyses are named {name!r}; give one a different name")
        study.analyses.append(a)
        study.names.append(name)
    return study


def _data_path(study_path: Path, file: str) -> Path:
    p = Path(file).expanduser()
    return p if p.is_absolute() else study_path.parent / p


# ----------------------------------------------------------------------------- model and data


def load_study_model(spec: Mapping[str, Any], device: str | None = None) -> Any:
    """The model of a study's ``[model]`` table (``{"name": ...}``)."""
    from mechlens.models import load_model, tiny

    name = spec["name"]
    device = device or spec.get("device")
    if name.startswith("tiny-"):
        kw = {k: spec[k] for k in ("n_layers", "d_model", "n_heads", "n_ctx", "seed") if k in spec}
        return tiny(name[5:], **{"n_layers": 2, **kw}, device=device)
    return load_model(name, device=device)


def build_dataset(model: Any, spec: Mapping[str, Any], study_path: Path | None = None) -> Any:
    """The :class:`~mechlens.data.ContrastDataset` of a study's ``[dataset]`` table."""
    from mechlens import data

    args = {k: v for k, v in spec.items() if k not in DATASET_COMMON}
    if "builtin" in spec:
        fn = {"ioi": data.ioi, "toy_movie_review": data.toy_movie_review, "toy_mood_story": data.toy_mood_story}
        ds = fn[spec["builtin"]](model, **args)
    else:
        ds = _read_pairs(model, _data_path(study_path or Path("."), spec["file"]))
    if "limit" in spec:
        if spec["limit"] < 1:
            raise ValueError(f"dataset.limit={spec['limit']} must be >= 1")
        ds = ds[: spec["limit"]]
    if "name" in spec:
        ds.name = spec["name"]
    return ds


def _read_pairs(model: Any, path: Path) -> Any:
    """Prompt pairs from a JSONL or CSV file (see docs/studies.md for the columns)."""
    from mechlens.data import ContrastDataset

    rows: list[dict[str, Any]] = []
    if path.suffix.lower() == ".jsonl":
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {i}: not JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {i}: each line must be a JSON object")
            rows.append({"_line": i, **row})
    else:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                if None in row:  # more fields than the header has columns
                    raise ValueError(f"{path}, line {reader.line_num}: {len(reader.fieldnames or [])} columns in the "
                                     f"header but more fields here (a comma inside a prompt needs quotes)")
                rows.append({"_line": reader.line_num, **row})
    if not rows:
        raise ValueError(f"{path} holds no prompt pairs")
    clean, corrupt, answers, labels, where = [], [], [], [], []
    positions: dict[str, list[Any]] = {}
    for n, row in enumerate(rows, 1):
        # every error about a row names the file, its line and the pair's number (from 1)
        loc = f"{path}, line {row['_line']} (pair {n})"
        where.append(loc)
        for k in ("clean", "corrupt"):
            if not isinstance(row.get(k), str) or not row[k].strip():
                got = "" if row.get(k) is None else f", got {row[k]!r}"
                raise ValueError(f"{loc}: needs a non-empty {k!r} prompt (a string){got}")
        clean.append(row["clean"])
        corrupt.append(row["corrupt"])
        if "answers" in row:  # JSONL: [[correct, incorrect], ...]
            pairs = row["answers"]
            if not (isinstance(pairs, list) and pairs and all(isinstance(p, list) and len(p) == 2 for p in pairs)):
                raise ValueError(f"{loc}: answers must be [[correct, incorrect], ...], got {pairs!r}")
            answers.append([tuple(p) for p in pairs])
        elif row.get("correct") not in (None, "") and row.get("incorrect") not in (None, ""):
            answers.append([(row["correct"], row["incorrect"])])
        else:
            raise ValueError(f"{loc}: needs 'correct' and 'incorrect' answer words (or 'answers')")
        for a in answers[-1]:
            for w in a:
                if not isinstance(w, str):
                    raise ValueError(f"{loc}: answer {w!r} must be a string (a word such as ' loved'), "
                                     f"not {type(w).__name__}")
        labels.append(_label(row.get("label"), loc))
        pos = row.get("positions") or {}
        if not isinstance(pos, dict):
            raise ValueError(f"{loc}: positions must be an object {{\"NAME\": word or index}}, got {pos!r}")
        pos = dict(pos)
        pos.update({k[4:]: v for k, v in row.items() if isinstance(k, str) and k.startswith("pos_") and v not in (None, "")})
        for k, v in pos.items():
            if isinstance(v, str) and re.fullmatch(r"-?\d+", v.strip()):
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                raise ValueError(f"{loc}: position {k!r} must be a word of the clean prompt or an int index, not {v!r}")
            positions.setdefault(k, []).append(v)
    for k, v in positions.items():
        if len(v) != len(clean):
            have = {i for i, r in enumerate(rows) if k in (r.get("positions") or {}) or r.get(f"pos_{k}") not in (None, "")}
            missing = next(i for i in range(len(rows)) if i not in have)
            raise ValueError(f"{where[missing]}: position {k!r} is missing (other rows give it); give it on every row")
    return ContrastDataset.from_prompts(model, clean, corrupt, answers, positions=positions or None, labels=labels,
                                        name=path.stem, where=where)


def _label(value: Any, loc: str) -> int:
    """A row's ``label`` (default 1): an integer, or a string of one (CSV)."""
    if value is None or value == "":
        return 1
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"{loc}: label {value!r} is not an integer; labels are class numbers (1 positive, 0 negative)")


# ----------------------------------------------------------------------------- analyses


# study figures are drawn a little smaller than the reproduction report's
def _save_fig(fig: Any, path: Path) -> str:
    return save_fig(fig, path, dpi=110)


def _unpatched(res: Any) -> float | None:
    """For patching results (whose cells hold the metric of the patched run), the metric of the
    run that was patched: clean in ``noise`` mode, corrupt in ``denoise`` mode."""
    from mechlens.patching.result import PatchResult

    if not isinstance(res, PatchResult):
        return None  # ablation, lens, DLA: the cells are already effects or readings
    b = res.baselines.get("clean" if res.mode == "noise" else "corrupt")
    return None if b is None else float(b.float().mean())


def _top_table(res: Any, k: int) -> Any:
    """The ``k`` cells with the largest ``|effect|``, with standard errors (no bootstrap): the
    effect is the value itself, or for patching the change from the unpatched run."""
    import pandas as pd

    vals, se = res.values.flatten(), res.stderr().flatten()
    ref = _unpatched(res)
    effect = vals if ref is None else vals - ref
    idx = torch.argsort(effect.abs(), descending=True, stable=True)[:k]
    grid = res._label_grid()
    rows = []
    for i in idx.tolist():
        row = {**grid.iloc[i].to_dict(), "value": float(vals[i])}
        if ref is not None:
            row["change"] = float(effect[i])
        rows.append({**row, "stderr": float(se[i])})
    return pd.DataFrame(rows)


def _patch_section(res: Any, d: Path, stem: str, top: int, rel: str, plot: bool = True) -> tuple[str, dict[str, Any]]:
    """Save a PatchResult (JSON + safetensors, csv, png); its markdown and headline numbers."""
    res.save(d / stem)
    csv_name = save_csv(res.to_dataframe(), d / f"{stem}.csv")
    lines = []
    if plot:
        png = _save_fig(res.plot(), d / f"{stem}.png")
        lines += [f"![{stem}]({rel}/{png})", ""]
    table = _top_table(res, top)
    ref = _unpatched(res)
    by = "|value|" if ref is None else (f"|change| from the unpatched {'clean' if res.mode == 'noise' else 'corrupt'} "
                                         f"run ({ref:.3f})")
    lines += [f"Top {len(table)} cells by {by} ({res.metric}; mean over {res.n_examples} examples, with "
              f"standard error); all cells in [{csv_name}]({rel}/{csv_name}):", "", markdown_table(table), ""]
    first = table.iloc[0].to_dict() if len(table) else {}
    return "\n".join(lines), {"top": {k: (float(v) if isinstance(v, float) else v) for k, v in first.items()}}


@dataclass
class _Run:
    model: Any
    ds: Any
    study: Study
    out: Path
    progress: bool = False  # inner bars for each analysis's sweep, under the bar over analyses
    _edges: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def batch(self, a: Mapping[str, Any]) -> int | None:
        return a.get("batch_size", self.study.doc.get("batch_size"))

    def seed(self, a: Mapping[str, Any]) -> int:
        return a.get("seed", self.study.doc.get("seed", 0))

    def edges(self, method: str, ig_steps: int | None, a: Mapping[str, Any]) -> Any:
        """Edge scores of ``method``, computed once per study (the EAP-IG and faithfulness
        analyses of one study share them)."""
        from mechlens.circuits.eap import edge_attribution_patch

        steps = None if method == "eap" else ig_steps
        key = (method, steps, self.batch(a))
        if key not in self._edges:
            self._edges[key] = edge_attribution_patch(self.model, self.ds, method=method, ig_steps=steps,
                                                      batch_size=self.batch(a), progress=False)
        return self._edges[key]


def _kw(a: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out = {k: a[k] for k in keys if k in a}
    for k in ("positions", "position", "receiver_position"):  # TOML arrays; nested [a, b] -> a tuple (union)
        if isinstance(out.get(k), list):
            out[k] = [tuple(v) if isinstance(v, list) else v for v in out[k]]
    return out


def _run_baseline(r: _Run, a: Mapping[str, Any], d: Path, rel: str) -> dict[str, Any]:
    from mechlens.baseline import baseline

    res = baseline(r.model, {r.ds.name: r.ds}, batch_size=r.batch(a), progress=r.progress)
    res.save(d / "result")
    df = res.to_dataframe()
    save_csv(df, d / "baseline.csv")
    if r.ds.labels.unique().numel() < 2:  # one class (IOI): centring and per-class columns mean nothing
        df = df[["dataset", "n", "clean_ld", "corrupt_ld", "clean_acc_raw"]]
    clean, corrupt = res.clean[r.ds.name], res.corrupt[r.ds.name]
    acc = float((clean > 0).float().mean())
    text = (f"Logit difference (correct - incorrect answer) on the clean and corrupt prompts: clean "
            f"{float(clean.mean()):.3f} (min {float(clean.min()):.3f}), corrupt {float(corrupt.mean()):.3f}; "
            f"{100 * acc:.0f}% of clean prompts have a positive logit difference.\n\n" + markdown_table(df)
            + f"\n\nTable: [baseline.csv]({rel}/baseline.csv)\n")
    return {"summary": text, "clean_ld": float(clean.mean()), "corrupt_ld": float(corrupt.mean()),
            "clean_correct": acc}


def _run_sites(fn: Callable[..., Any], what: str) -> Callable[[_Run, Mapping[str, Any], Path, str], dict[str, Any]]:
    def run(r: _Run, a: Mapping[str, Any], d: Path, rel: str) -> dict[str, Any]:
        sites = a.get("site", "resid_pre")
        sites = [sites] if isinstance(sites, str) else sites
        keys = ("metric", "mode", "layers", "positions", "heads", "backend")
        parts, numbers = [], {}
        for site in sites:
            res = fn(r.model, r.ds, site, **_kw(a, keys), batch_size=r.batch(a), progress=r.progress)
            text, nums = _patch_section(res, d, site, a.get("top", 10), rel)
            parts += [f"### {what}: `{site}` ({res.mode}, {res.metric})", "", text]
            numbers[site] = nums
        return {"summary": "\n".join(parts), **numbers}

    return run


def _run_ablation(r: _Run, a: Mapping[str, Any], d: Path, rel: str) -> dict[str, Any]:
    from mechlens.ablation import ablate_sweep

    keys = ("how", "layers", "heads", "neurons", "positions", "metric")
    component = a.get("component", "heads")
    res = ablate_sweep(r.model, r.ds, component, **_kw(a, keys), seed=r.seed(a), batch_size=r.batch(a), progress=r.progress)
    text, nums = _patch_section(res, d, "ablation", a.get("top", 10), rel)
    base = float(res.baselines["clean"].mean())
    head = (f"{res.how.capitalize()} ablation of each {component} component on the clean prompts: the change "
            f"of the {res.metric} (unablated {base:.3f}; negative = the component helps).\n\n")
    return {"summary": head + text, "unablated": base, **nums}


def _run_knockout(r: _Run, a: Mapping[str, Any], d: Path, rel: str) -> dict[str, Any]:
    from mechlens.ablation import knockout_curve

    res = knockout_curve(r.model, r.ds, a.get("order"), **_kw(a, ("component", "how", "max_k", "metric")),
                         seed=r.seed(a), batch_size=r.batch(a), progress=r.progress)
    res.save(d / "knockout")
    save_csv(res.to_dataframe(), d / "knockout.csv")
    png = _save_fig(res.plot(), d / "knockout.png")
    vals = res.values.tolist()
    rows = " | ".join(f"{lab} {v:.2f}" for lab, v in zip(res.labels["k"], vals))
    text = (f"Components removed cumulatively ({res.how} ablation), most harmful first; the {res.metric} "
            f"after each: {rows}.\n\n![knockout]({rel}/{png})\n")
    return {"summary": text, "curve": vals, "order": res.order}


def _run_lens(r: _Run, a: Mapping[str, Any], d: Path, rel: str) -> dict[str, Any]:
    from mechlens.lens import logit_lens, top_tokens

    res = logit_lens(r.model, r.ds, **_kw(a, ("positions", "layers")), batch_size=r.batch(a), progress=r.progress)
    res.save(d / "logit_lens")
    save_csv(res.to_dataframe(), d / "logit_lens.csv")
    png = _save_fig(res.plot(), d / "logit_lens.png")
    text = [f"The answer logit difference read from the residual stream after each layer (final norm and "
            f"unembedding; the model's own: {float(res.baselines['clean'].mean()):.3f}).", "",
            f"![logit lens]({rel}/{png})", ""]
    numbers: dict[str, Any] = {"model_ld": float(res.baselines["clean"].mean())}
    if res.axes == ("layer",):
        vals = res.values.tolist()
        text += [" | ".join(f"L{layer} {v:.2f}" for layer, v in zip(res.labels["layer"], vals)), ""]
        numbers["by_layer"] = vals
    if "top_tokens" in a:
        tt = top_tokens(r.model, r.ds, layers=a.get("layers"), k=a["top_tokens"])
        save_csv(tt, d / "top_tokens.csv")
        rows = [{"layer": layer, "top tokens (probability)": ", ".join(f"{t!r} ({p:.2f})" for t, p in zip(g.token, g.prob))}
                for layer, g in tt.groupby("layer", sort=True)]
        import pandas as pd

        text += [f"Top {a['top_tokens']} tokens the lens reads at END of {r.ds.clean_prompts[0]!r}:", "",
                 markdown_table(pd.DataFrame(rows)), ""]
    return {"summary": "\n".join(text), **numbers}


def _run_dla(r: _Run, a: Mapping[str, Any], d: Path, rel: str) -> dict[str, Any]:
    from mechlens.lens import direct_logit_attribution

    res = direct_logit_attribution(r.model, r.ds, **_kw(a, ("group", "layers")), batch_size=r.batch(a), progress=r.progress)
    text, nums = _patch_section(res, d, "dla", a.get("top", 10), rel, plot=res.axes != ("component",))
    head = (f"Direct contribution of each component to the logit difference at END (final-norm scale from the "
            f"run; group {res.group!r}; the run's logit difference "
            f"{float(res.baselines['clean'].mean()):.3f}).\n\n")
    return {"summary": head + text, **nums}


def _run_path(r: _Run, a: Mapping[str, Any], d: Path, rel: str) -> dict[str, Any]:
    from mechlens.patching import path_patch

    kw = _kw(a, ("metric", "mode", "position", "receiver_position", "layers", "freeze_mlps", "backend"))
    recv = a.get("receivers", "resid_final")
    if isinstance(recv, list):
        recv = [tuple(x) if isinstance(x, list) else x for x in recv]
    send = a.get("senders", "all_heads")
    if isinstance(send, list):
        send = [tuple(x) if isinstance(x, list) else x for x in send]
    res = path_patch(r.model, r.ds, send, recv, **kw, batch_size=r.batch(a), progress=r.progress)
    text, nums = _patch_section(res, d, "path", a.get("top", 10), rel)
    head = f"Path patching from {a.get('senders', 'all_heads')} to {a.get('receivers', 'resid_final')} ({res.mode}).\n\n"
    return {"summary": head + text, **nums}


def _run_eap(r: _Run, a: Mapping[str, Any], d: Path, rel: str) -> dict[str, Any]:
    import pandas as pd

    from mechlens.circuits.eap import eap_faithfulness, edge_attribution_patch

    edges = edge_attribution_patch(r.model, r.ds, batch_size=r.batch(a), progress=r.progress)
    edges.save(d / "edges")
    top = a.get("top", 20)
    vals, se = edges.values, edges.stderr()
    s, rc = edges.labels["sender"], edges.labels["receiver"]
    order = torch.argsort(vals.abs().flatten(), descending=True, stable=True)[:top]
    table = pd.DataFrame([{"sender": s[i // len(rc)], "receiver": rc[i % len(rc)], "score": float(vals.flatten()[i]),
                           "stderr": float(se.flatten()[i])} for i in order.tolist()])
    save_csv(table, d / "top_edges.csv")
    n_valid = edges.n_edges
    text = [f"Edge attribution patching: {len(s)} senders x {len(rc)} receivers, {n_valid} edges scored from one "
            f"corrupt forward pass and one clean forward and backward pass. Score = the first-order change of the "
            f"logit difference if the edge carried the corrupt value (negative = the edge carries what the clean "
            f"prompt needs). Clean {float(edges.baselines['clean'].mean()):.3f}, corrupt "
            f"{float(edges.baselines['corrupt'].mean()):.3f}.", "", f"Top {len(table)} edges by |score|:", "",
            markdown_table(table), ""]
    numbers: dict[str, Any] = {"n_edges": n_valid, "top_edges": table.to_dict(orient="records")[:10]}
    if "faithfulness" in a:
        ks = [k for k in a["faithfulness"]]
        curve = eap_faithfulness(r.model, r.ds, edges, ks, n_random=a.get("n_random", 0), seed=r.seed(a),
                                 batch_size=r.batch(a), progress=r.progress)
        curve.save(d / "faithfulness")
        rows = {"k": ks, "top_edges_ld": curve.values.tolist(), "top_edges_stderr": curve.stderr().tolist()}
        rnd = curve.random
        if rnd:
            rows.update(random_ld_mean=rnd["mean"], random_ld_std=rnd["std"])
        clean, corrupt = float(edges.baselines["clean"].mean()), float(edges.baselines["corrupt"].mean())
        gap = clean - corrupt
        rows["top_recovered"] = [(v - corrupt) / gap if gap else float("nan") for v in rows["top_edges_ld"]]
        if rnd:
            rows["random_recovered"] = [(v - corrupt) / gap if gap else float("nan") for v in rnd["mean"]]
        df = pd.DataFrame(rows)
        save_csv(df, d / "faithfulness.csv")
        png = _save_fig(_plot_faithfulness(df, clean, corrupt, rnd), d / "faithfulness.png")
        rand_txt = (f", against {rnd['n']} random edge sets of the same size (seed {rnd['seed']}; mean and std over "
                    "draws)") if rnd else ""
        text += [f"Faithfulness: the logit difference when only the top k edges carry clean values and every other "
                 f"edge is patched exactly to its corrupt value{rand_txt}; recovered = (LD - corrupt) / (clean - "
                 "corrupt).", "", f"![faithfulness]({rel}/{png})", "", markdown_table(df), ""]
        numbers["faithfulness"] = df.to_dict(orient="list")
    return {"summary": "\n".join(text), **numbers}


def _plot_faithfulness(df: Any, clean: float, corrupt: float, rnd: Any) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.8), layout="constrained")
    ax = fig.add_subplot()
    x = [max(k, 0.5) for k in df["k"]]
    ax.errorbar(x, df["top_edges_ld"], yerr=df["top_edges_stderr"], marker="o", capsize=3, label="top edges by |score|")
    if rnd:
        m, s = df["random_ld_mean"], df["random_ld_std"]
        ax.errorbar(x, m, yerr=s, marker="s", capsize=3, color="gray", label=f"random edges ({rnd['n']} draws)")
    ax.axhline(clean, color="tab:green", ls="--", lw=1, label="clean")
    ax.axhline(corrupt, color="tab:red", ls="--", lw=1, label="corrupt")
    ax.set_xscale("log")
    ax.set_xlabel("edges kept (k; 0 drawn at 0.5)")
    ax.set_ylabel("logit difference")
    ax.set_title("EAP circuit faithfulness")
    ax.legend(fontsize=8)
    return fig


def _edge_table(edges: Any, top: int) -> Any:
    import pandas as pd

    vals, se = edges.values, edges.stderr()
    s, rc = edges.labels["sender"], edges.labels["receiver"]
    order = torch.argsort(vals.abs().flatten(), descending=True, stable=True)[:top]
    return pd.DataFrame([{"sender": s[i // len(rc)], "receiver": rc[i % len(rc)], "score": float(vals.flatten()[i]),
                          "stderr": float(se.flatten()[i])} for i in order.tolist()])


def _run_eap_ig(r: _Run, a: Mapping[str, Any], d: Path, rel: str) -> dict[str, Any]:
    how, steps = a.get("interpolate", "inputs"), a.get("ig_steps", 5)
    edges = r.edges(f"eap-ig-{how}", steps, a)
    edges.save(d / "edges")
    table = _edge_table(edges, a.get("top", 20))
    save_csv(table, d / "top_edges.csv")
    text = [f"EAP-IG ({how}, {steps} steps; Hanna et al. 2024, MIB's EAP-IG-{how}): each edge's score is "
            f"(a_corrupt - a_clean) . the gradient at its receiver averaged over {steps} runs interpolating "
            f"{'the input embeddings' if how == 'inputs' else 'the sender group activations'} from corrupt to clean. "
            f"Clean {float(edges.baselines['clean'].mean()):.3f}, corrupt {float(edges.baselines['corrupt'].mean()):.3f}.",
            "", f"Top {len(table)} edges by |score|:", "", markdown_table(table), "",
            f"Table: [top_edges.csv]({rel}/top_edges.csv)", ""]
    return {"summary": "\n".join(text), "top_edges": table.to_dict(orient="records")[:10]}


def _run_faithfulness_curve(r: _Run, a: Mapping[str, Any], d: Path, rel: str) -> dict[str, Any]:
    from mechlens.circuits.faithfulness import MIB_FRACTIONS, faithfulness_curve

    methods = a.get("methods", list(EAP_METHODS))
    scores = {m: r.edges(m, a.get("ig_steps", 5), a) for m in methods}
    fc = faithfulness_curve(r.model, r.ds, scores, fractions=a.get("fractions", MIB_FRACTIONS),
                            n_random=a.get("n_random", 5), seed=r.seed(a), level=a.get("level", "edges"),
                            batch_size=r.batch(a), progress=False)
    fc.save(d / "result")
    table = fc.table()
    save_csv(table, d / "cpr_cmd.csv")
    png = _save_fig(fc.plot(), d / "faithfulness.png")
    text = [f"Faithfulness curves (MIB, Mueller et al. 2025): keep each scoring's top {fc.level} (fractions "
            f"{', '.join(f'{x:g}' for x in fc.fractions)} of "
            + (f"{fc.n_nodes} nodes), patch every other node's output" if fc.level == "nodes" else
               f"{fc.n_edges} edges), patch every other edge")
            + " from the corrupt run exactly; faithfulness = (LD - LD(empty)) / (LD(full) - LD(empty)). CPR = area under the "
            "curve (higher is better), CMD = area between the curve and 1 (lower is better).", "",
            f"![faithfulness]({rel}/{png})", "", markdown_table(table), ""]
    return {"summary": "\n".join(text), "cpr": fc.cpr, "cmd": fc.cmd}


def _run_circuit_stability(r: _Run, a: Mapping[str, Any], d: Path, rel: str) -> dict[str, Any]:
    from mechlens.circuits.stability import circuit_stability

    st = circuit_stability(r.model, r.ds, method=a.get("method", "eap"), ig_steps=a.get("ig_steps"),
                           k=a.get("k", 20), n_resamples=a.get("n_resamples", 10), seed=r.seed(a),
                           faithfulness=a.get("faithfulness", True), by_template=a.get("by_template", True),
                           batch_size=r.batch(a), progress=False)
    st.save(d / "result")
    table = st.table()
    save_csv(table, d / "stability.csv")
    text = [f"Stability of the top-{st.k} edges ({st.method}) over {st.n_resamples} bootstrap resamples of the "
            "prompts: mean pairwise Jaccard overlap with a 95% bootstrap interval"
            + (", CPR/CMD of each resample's ranking on all prompts" if st.cpr else "")
            + (", and the overlap between the circuits of each template" if st.templates else "") + ".", "",
            markdown_table(table), "", f"Table: [stability.csv]({rel}/stability.csv)", ""]
    return {"summary": "\n".join(text), "jaccard": st.jaccard_mean, "jaccard_ci": list(st.jaccard_ci)}


def _run_directions(r: _Run, a: Mapping[str, Any], d: Path, rel: str) -> dict[str, Any]:
    from mechlens.directions import evaluate

    frac = a.get("test_fraction", 0.5)
    if not 0 < frac < 1:
        raise ValueError(f"directions: test_fraction={frac} must be between 0 and 1")
    g = torch.Generator().manual_seed(r.seed(a))
    perm = torch.randperm(r.ds.batch, generator=g).tolist()
    n_test = max(1, round(frac * r.ds.batch))
    test, train = r.ds[sorted(perm[:n_test])], r.ds[sorted(perm[n_test:])]
    kw = _kw(a, ("methods", "layers", "position", "site", "n_random"))
    res = evaluate(r.model, train, test, **kw, seed=r.seed(a), batch_size=r.batch(a), progress=r.progress)
    res.save(d / "result")
    df = res.to_dataframe()
    save_csv(df, d / "directions.csv")
    figs = res.plot()
    figs = figs if isinstance(figs, (list, tuple)) else [figs]
    names = [_save_fig(f, d / f"directions_{i}.png") for i, f in enumerate(figs)]
    best = res.best()
    text = (f"Directions fitted on {train.batch} examples, evaluated by directional patching on the other "
            f"{test.batch}. Best: **{best['method']}** at layer **{best['layer']}**, "
            f"{100 * best['ld_recovered']:.1f}% of the logit difference recovered (random directions "
            f"{100 * best['random_ld_recovered']:.2f}%).\n\n" + "".join(f"![directions]({rel}/{n})\n" for n in names)
            + "\n" + markdown_table(df) + "\n")
    return {"summary": text, **{k: v for k, v in best.items()}}


def _run_steering(r: _Run, a: Mapping[str, Any], d: Path, rel: str) -> dict[str, Any]:
    from mechlens.directions import METHODS, fit
    from mechlens.results import markdown_table
    from mechlens.steering import at_equal_effect, prompt_baseline, side_effects, steerability
    from mechlens.viz.steering import plot_steerability_grid

    methods = a.get("method", ["mean_diff", "das"])
    methods = [methods] if isinstance(methods, str) else list(methods)
    bad = [m for m in methods if m not in (*METHODS, "caa")]
    if bad:
        raise ValueError(f"steering: method {bad[0]!r} is unknown; choose from {['caa', *METHODS]}")
    layer = a.get("layer", r.model.cfg.n_layers // 2)
    coeffs = [float(c) for c in a.get("coeffs", [-16, -8, 0, 8, 16])]
    if 0.0 not in coeffs:
        raise ValueError("steering: coeffs must include 0 (the unsteered run the shifts are measured from)")
    target = float(a.get("target", 1.0))
    frac = a.get("test_fraction", 0.5)
    if not 0 < frac < 1:
        raise ValueError(f"steering: test_fraction={frac} must be between 0 and 1")
    g = torch.Generator().manual_seed(r.seed(a))
    perm = torch.randperm(r.ds.batch, generator=g).tolist()
    n_test = max(1, round(frac * r.ds.batch))
    test, train = r.ds[sorted(perm[:n_test])], r.ds[sorted(perm[n_test:])]
    bs = r.batch(a)
    curves, rows = {}, []
    for m in methods:
        if m == "caa":
            from mechlens.data.choices import movie_review_choices
            from mechlens.steering import caa_vector

            if not r.ds.name.startswith("toy_movie_review"):
                raise ValueError("steering: method 'caa' reads sentiment off movie-review A/B choices; it needs "
                                 f"dataset builtin = 'toy_movie_review' (this study's dataset is {r.ds.name!r})")
            v = caa_vector(r.model, movie_review_choices(r.model, "train"), layer, site="resid_pre", batch_size=bs,
                           progress=False).vector
            v = v / v.norm()
        else:
            kw = {"position": a["position"]} if "position" in a else {}
            v = fit(r.model, train, m, layer, seed=r.seed(a), batch_size=bs, progress=False, **kw).vector
        st = steerability(r.model, test, v, coeffs, layers=layer, site="resid_pre", batch_size=bs, progress=False)
        se = side_effects(r.model, v, coeffs, layers=layer, site="resid_pre", batch_size=bs, progress=False)
        st.save(d / f"steerability_{m}")
        se.save(d / f"side_effects_{m}")
        eq, s = at_equal_effect(st, se, target), st.summary()
        curves[m] = st
        rows.append({"method": m, "shift_per_coeff": s["shift_per_coeff"], "ci_low": s["ci_low"],
                     "ci_high": s["ci_high"], "anti_steerable": s["anti_steerable"], "coeff_at_target": eq["coeff"],
                     "kl_at_target": eq["kl"], "perplexity_at_target": eq["perplexity"]})
    pb = prompt_baseline(r.model, test, a.get("instruction", "Answer positively."), batch_size=bs,
                         progress=False).summary()
    rows.append({"method": "prompting", "shift_per_coeff": pb["shift"], "ci_low": pb["ci_low"], "ci_high": pb["ci_high"],
                 "anti_steerable": pb["anti_steerable"], "coeff_at_target": float("nan"), "kl_at_target": pb["kl"],
                 "perplexity_at_target": pb["perplexity"]})
    import pandas as pd

    df = pd.DataFrame(rows)
    save_csv(df, d / "steering.csv")
    fig = _save_fig(plot_steerability_grid(curves), d / "steering_per_example.png")
    text = (f"Unit vectors fitted on {train.batch} examples, added at every position of layer {layer} (resid_pre), "
            f"evaluated on the other {test.batch}; coefficients {coeffs}. shift_per_coeff: mean least-squares slope "
            "of the logit difference per unit coefficient (95% bootstrap interval); anti_steerable: share of examples "
            f"with a negative slope; coeff/KL/perplexity at a mean shift of {target:g} on neutral text. The prompting "
            "row gives the instruction's shift itself.\n\n"
            f"![per-example steering]({rel}/{fig})\n\n" + markdown_table(df) + "\n")
    return {"summary": text, "rows": rows}


def _runners() -> dict[str, Callable[..., dict[str, Any]]]:
    from mechlens.patching import activation_patch, attribution_patch

    return {
        "baseline": _run_baseline,
        "activation_patching": _run_sites(activation_patch, "Activation patching"),
        "attribution_patching": _run_sites(attribution_patch, "Attribution patching"),
        "ablation": _run_ablation,
        "knockout_curve": _run_knockout,
        "logit_lens": _run_lens,
        "direct_logit_attribution": _run_dla,
        "edge_attribution_patching": _run_eap,
        "path_patching": _run_path,
        "directions": _run_directions,
        "steering": _run_steering,
        "eap_ig": _run_eap_ig,
        "faithfulness_curve": _run_faithfulness_curve,
        "circuit_stability": _run_circuit_stability,
    }


# ----------------------------------------------------------------------------- the run


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_study(
    path: str | Path,
    out: str | Path,
    *,
    model: Any = None,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
    only: list[str] | None = None,
    device: str | None = None,
    progress: bool = True,
) -> Path:
    """Run a study file; writes ``out/report.md`` (rewritten after every finished analysis).

    Args:
        path: the study file (``.toml``).
        out: the output folder.
        model: the model to use instead of the file's ``[model]``, as the command line's
            ``--model`` takes it: a name (``"smollm2-135m"``, a hub name, a directory, or
            ``"tiny-gpt2"`` / ``"tiny-neox"`` / ``"tiny-llama"``), loaded here; or a model
            already loaded (the file's model is then not loaded; its name goes into the markers).
        overrides: dotted keys replacing the file's values (see :func:`load_study`).
        force: rerun analyses already done in ``out``.
        only: run only these analyses (by name); the report still shows every one done.
        device: torch device for the file's model.
        progress: a progress bar over the analyses, naming the one running, and inner bars
            for each analysis's sweep.

    Returns:
        The path of ``report.md``.
    """
    from mechlens.models import model_name

    if isinstance(model, (str, Path)):  # a name, as `mechlens study --model NAME` takes it
        overrides = {**(overrides or {}), "model": str(model)}
        model = None
    study = load_study(path, overrides)
    if only is not None:
        unknown = [n for n in only if n not in study.names]
        if unknown:
            near = difflib.get_close_matches(unknown[0], study.names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"only: no analysis named {unknown[0]!r} in {study.path}{hint} (names: {study.names})")
    out = Path(out)
    m = model if model is not None else load_study_model(study.model_spec, device)
    ds = build_dataset(m, study.doc["dataset"], study.path)
    run = _Run(m, ds, study, out, progress)
    runners = _runners()
    spec = {n: a for n, a in zip(study.names, study.analyses)}
    common = {"model": model_name(m), "model_spec": study.model_spec if model is None else {"name": model_name(m)},
              "dataset": study.doc["dataset"], "fingerprint": ds.fingerprint(),
              "seed": study.doc.get("seed", 0), "batch_size": study.doc.get("batch_size")}

    def key(name: str) -> dict[str, Any]:
        a = {k: v for k, v in spec[name].items() if k not in ("name", "top")}
        return {**common, "analysis": a, "digest": _digest([common, a])}

    def stage(name: str, d: Path) -> dict[str, Any]:
        a = spec[name]
        return runners[a["kind"]](run, a, d, name)

    report = out / "report.md"

    def write_report(numbers: dict[str, dict[str, Any]]) -> None:
        write_text(report, _report(study, m, ds, numbers))

    run_stages(out, only if only is not None else study.names, stage, key=key, write_report=write_report,
               all_names=study.names, force=force, progress=progress, desc=f"study {study.path.stem}", what="study")
    return report


def _report(study: Study, model: Any, ds: Any, numbers: dict[str, dict[str, Any]]) -> str:
    from mechlens.models import model_name

    cfg = model.cfg
    lines = [f"# {study.title}", ""]
    if study.doc.get("description"):
        lines += [study.doc["description"].strip(), ""]
    positions = ", ".join(ds.position_names())
    lines += [
        f"Study file: `{study.path.name}`. Model: {model_name(model)} ({cfg.n_layers} layers, {cfg.n_heads} heads, "
        f"d_model {cfg.d_model}). Dataset: {ds.name}, {ds.batch} prompt pairs of {ds.seq_len} tokens; positions "
        f"{positions}.",
        "",
        f"Example: clean {ds.clean_prompts[0]!r}, corrupt {ds.corrupt_prompts[0]!r}.",
        "",
        f"Analyses done: {len(numbers)} of {len(study.names)}"
        + (f" (not yet: {', '.join(n for n in study.names if n not in numbers)})" if len(numbers) < len(study.names) else "")
        + ".",
        "",
    ]
    for name, a in zip(study.names, study.analyses):
        if name not in numbers:
            continue
        nums = numbers[name]
        args = ", ".join(f"{k}={v!r}" for k, v in a.items() if k not in ("kind", "name"))
        title = name if name == a["kind"] else f"{name} ({a['kind']})"
        lines += [f"## {title}", "", f"_arguments: {args or 'defaults'}_", "", nums.get("summary", ""), ""]
        if "seconds" in nums:
            lines += [f"_time: {nums['seconds']} s_", ""]
    return "\n".join(lines)
