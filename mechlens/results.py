"""The result core: every mechlens result, and the one type for measured values.

- :class:`Result` is the base of every object a method returns (results, directions,
  vectors): provenance (``model_name``, ``dataset``, ``fingerprint``, ``settings``,
  ``version``), ``save(dir)`` / ``load(dir)`` with an exact round trip (tensors as
  safetensors, everything else as JSON; tuples stay tuples, dict keys keep their order), a
  one-screen ``repr`` and a ``_repr_html_`` for Jupyter.
- :class:`Measurement` is a metric measured per cell and per example: ``per_example``
  ``[*cells, batch]``, ``axes`` and ``labels``, ``metric``; ``values`` (the mean over
  examples), ``stderr()``, ``ci()``, ``to_dataframe()``, ``top()``, ``plot()``. Patching, ablation,
  lens, steering curves and directional interventions all return one (adding fields of
  their own); domain results (a circuit, a direction evaluation) add fields to
  :class:`Result`.
"""

from __future__ import annotations

import contextvars
import dataclasses
import html
import importlib
import math
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor

from mechlens.fileio import DamagedFileError, atomic_path, read_json, write_json

__all__ = [
    "Result", "Measurement", "NonFiniteWarning", "nan_policy", "markdown_table", "to_jsonable", "from_jsonable",
    "settings_of", "provenance", "call_settings", "concat", "load_result", "result_classes", "PatchSetResult",
]

R = TypeVar("R", bound="Result")
M = TypeVar("M", bound="Measurement")
_SEP = "::"


def markdown_table(df: Any, floatfmt: str = ".3f", index: bool = False) -> str:
    """``df.to_markdown`` with ``floatfmt`` for float columns only (tabulate would otherwise
    print the integer columns of an all-numeric frame, such as layer or head, as floats)."""
    fmts = [floatfmt if df[c].dtype.kind == "f" else "g" for c in df.columns]
    if index:
        fmts = ["g", *fmts]
    return df.to_markdown(index=index, floatfmt=fmts)


def to_jsonable(value: Any) -> Any:
    """JSON form that keeps tuples and non-string dict keys distinguishable."""
    if isinstance(value, tuple):
        return {"__tuple__": [to_jsonable(v) for v in value]}
    if isinstance(value, list):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: to_jsonable(v) for k, v in value.items()}
        return {"__items__": [[to_jsonable(k), to_jsonable(v)] for k, v in value.items()]}
    if isinstance(value, torch.Tensor):
        return {"__tensor_list__": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def from_jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(from_jsonable(v) for v in value["__tuple__"])
        if "__items__" in value:
            return {from_jsonable(k): from_jsonable(v) for k, v in value["__items__"]}
        if "__tensor_list__" in value:
            return torch.tensor(value["__tensor_list__"], dtype=getattr(torch, value["dtype"]))
        return {k: from_jsonable(v) for k, v in value.items()}
    return value


def _version() -> str:
    from mechlens import __version__

    return __version__


def settings_of(**kwargs: Any) -> dict[str, Any]:
    """The arguments a method ran with, as JSON-friendly values (for ``Result.settings``)."""
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, Tensor):
            v = f"tensor{tuple(v.shape)}"
        elif callable(v):
            v = getattr(v, "__name__", type(v).__name__)
        elif isinstance(v, range):
            v = list(v)
        elif not isinstance(v, (str, int, float, bool, type(None), list, tuple, dict)):
            v = getattr(v, "name", None) or type(v).__name__
        out[k] = v
    return out


def call_settings(args: dict[str, Any]) -> dict[str, Any]:
    """A method's arguments (``locals()`` at its start) as ``settings``: all but the model,
    the dataset(s) and the progress bar."""
    skip = {"model", "ds", "self", "progress", "train_ds", "test_ds"}
    return settings_of(**{k: v for k, v in args.items() if k not in skip})


def provenance(model: Any, ds: Any = None, *, args: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
    """The provenance fields of a result computed by ``model`` on ``ds`` (keyword arguments
    for a :class:`Result`); ``args`` (a method's ``locals()`` at its start) or ``settings``
    become its ``settings``."""
    from mechlens.models import model_name

    out: dict[str, Any] = {"model_name": model_name(model)}
    if ds is not None:
        out["dataset"] = getattr(ds, "name", "")
        out["fingerprint"] = ds.fingerprint() if hasattr(ds, "fingerprint") else ""
    if args is not None:
        settings = {**call_settings(args), **settings}
    if settings:
        out["settings"] = settings_of(**settings)
    return out


def _short(v: Any) -> str:
    if isinstance(v, Tensor):
        return f"tensor{list(v.shape)}"
    if isinstance(v, dict):
        keys = ", ".join(map(str, list(v)[:3])) + (", ..." if len(v) > 3 else "")
        return f"dict[{len(v)}]({keys})"
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return f"[{', '.join(map(repr, v[:3]))}, ... ({len(v)})]"
    if isinstance(v, float):
        return f"{v:.4g}"
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _tensor_kinds(cls: type) -> dict[str, str]:
    """Field -> ``"Float"`` / ``"Int"`` / ``"Bool"``, from the jaxtyping annotations of a result
    class (``Float[Tensor, ...]``, also inside ``dict[str, Float[Tensor, ...]]``)."""
    out = {}
    for f in dataclasses.fields(cls):
        m = re.search(r"\b(Float|Int|Bool)\[", str(f.type))
        if m:
            out[f.name] = m.group(1)
    return out


_KIND_OK = {
    "Float": lambda t: t.is_floating_point(),
    "Int": lambda t: not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool,
    "Bool": lambda t: t.dtype == torch.bool,
}


def _check_dtypes(cls: type, tensors: dict[str, Tensor], recorded: Any, tpath: Path, fix: str) -> None:
    """Every loaded tensor has the dtype it was saved with (recorded in result.json) and the
    kind its field holds (floats where floats belong); else :class:`DamagedFileError`."""
    kinds = _tensor_kinds(cls)
    recorded = recorded if isinstance(recorded, dict) else {}
    for key, t in tensors.items():
        name, _, sub = key.partition(_SEP)
        label = f"{name}[{sub!r}]" if sub else name
        want = recorded.get(key)
        if isinstance(want, str) and _dtype_name(t) != want:
            raise DamagedFileError(tpath, f"field {label!r} is {_dtype_name(t)} but was saved as {want}", fix)
        kind = kinds.get(name)
        if kind is not None and not _KIND_OK[kind](t):
            raise DamagedFileError(
                tpath, f"field {label!r} holds {_dtype_name(t)} values where {kind.lower()}s belong", fix
            )


# --------------------------------------------------------------------------- NaN / inf in measured values

NAN_POLICIES = ("raise", "warn", "ignore")
_NAN_POLICY: contextvars.ContextVar[str] = contextvars.ContextVar("mechlens_nan_policy", default="raise")


class NonFiniteWarning(UserWarning):
    """A measured value is NaN or infinite and ``nan_policy("warn")`` kept it."""


@contextmanager
def nan_policy(policy: str) -> Iterator[None]:
    """What a measured NaN or infinite value does inside the ``with`` block.

    Every :class:`Measurement` (patching, ablation, lens, steering and directional results)
    checks its values when it is made: by default (``"raise"``) a non-finite value raises a
    ``ValueError`` naming the cells; ``"warn"`` keeps the result with a
    :class:`NonFiniteWarning`; ``"ignore"`` keeps it silently::

        with nan_policy("warn"):
            res = activation_patch(model, ds, "resid_pre", metric=my_metric)
    """
    if policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy={policy!r}: choose one of {list(NAN_POLICIES)}")
    token = _NAN_POLICY.set(policy)
    try:
        yield
    finally:
        _NAN_POLICY.reset(token)


def _check_finite_cells(m: Any) -> None:
    """Raise (or warn) when a Measurement's per-example values hold NaN / inf, naming the cells."""
    policy = _NAN_POLICY.get()
    pe = m.per_example
    if policy == "ignore" or not isinstance(pe, Tensor) or not pe.is_floating_point():
        return
    finite = torch.isfinite(pe.detach())
    if bool(finite.all()):
        return
    bad_cells = (~finite).reshape(*pe.shape[:-1], pe.shape[-1]).any(-1)
    n_bad, n_cells = int(bad_cells.sum()), bad_cells.numel()
    kind = "NaN" if bool(torch.isnan(pe).any()) else "inf"
    if m.axes:
        idx = bad_cells.nonzero().tolist()
        names = ["(" + ", ".join(f"{a}={m.labels[a][i]!r}" for a, i in zip(m.axes, ix)) + ")" for ix in idx[:3]]
        where = f"{n_bad} of {n_cells} cells ({', '.join(names)}{', ...' if n_bad > 3 else ''})"
    else:
        where = f"its value ({int((~finite).sum())} of {pe.shape[-1]} examples)"
    msg = (
        f"{type(m).__name__}: the metric {m.metric or '(unnamed)'!r} gave non-finite values ({kind}) in {where}; "
        "check the metric (a division by zero? a log of 0?) and the model's dtype. To keep such a "
        "result, run it inside `with mechlens.results.nan_policy('warn'):` (or 'ignore')"
    )
    if policy == "raise":
        raise ValueError(msg)
    warnings.warn(msg, NonFiniteWarning, stacklevel=4)


@dataclass(kw_only=True)
class Result:
    """Base of every mechlens result: provenance, ``save`` / ``load``, a short ``repr``.

    ``model_name`` and ``dataset`` name what it was computed on, ``fingerprint`` the dataset's
    tokens (:meth:`ContrastDataset.fingerprint`), ``settings`` the method's arguments, and
    ``version`` the mechlens version that made it.
    """

    model_name: str = ""
    dataset: str = ""
    fingerprint: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    version: str = field(default_factory=_version)

    # fields left out of the one-line repr (provenance has its own line)
    _PROVENANCE = ("model_name", "dataset", "fingerprint", "settings", "version")
    #: the older layout this class replaces, which ``load`` converts: (class name, the value of
    #: its ``method`` field, this class's field -> the old field or ``"meta.<key>"``)
    LEGACY: ClassVar[tuple[str, str, dict[str, str]] | None] = None

    @classmethod
    def _legacy_fields(cls, doc: dict[str, Any]) -> dict[str, Any] | None:
        """The saved fields of an older layout (:attr:`LEGACY`) as this class's, else None."""
        if cls.LEGACY is None:
            return None
        old_class, method, where = cls.LEGACY
        old = doc["fields"]
        if doc["class"] != old_class or old.get("method") != method:
            return None
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        out = {k: v for k, v in old.items() if k in names and k not in where}
        meta = old.get("meta") if isinstance(old.get("meta"), dict) else {}
        for new, src in where.items():
            if src.startswith("meta."):
                if src[5:] in meta:
                    out[new] = meta[src[5:]]
            elif src in old:
                out[new] = old[src]
        return out

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # @dataclass writes a field-by-field __repr__ (thousands of lines for a tensor) unless
        # the class already has one: give every subclass the short one
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = Result.__repr__

    def _summary_lines(self) -> list[str]:
        """Lines describing the content (subclasses add the numbers that matter)."""
        items = [
            f"{f.name}={_short(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if f.name not in self._PROVENANCE
        ]
        return [", ".join(items)]

    def __repr__(self) -> str:
        where = f"model={self.model_name!r}" + (f", dataset={self.dataset!r}" if self.dataset else "")
        lines = [f"{type(self).__name__}({where})", *("  " + x for x in self._summary_lines())]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        body = "".join(f"<div>{html.escape(x)}</div>" for x in repr(self).splitlines()[1:])
        head = html.escape(repr(self).splitlines()[0])
        table = ""
        if hasattr(self, "to_dataframe"):
            df = self.to_dataframe()
            if isinstance(df, pd.DataFrame) and len(df):
                table = df.head(12).to_html(index=False, float_format=lambda x: f"{x:.4g}")
        return f"<div><b>{head}</b>{body}{table}</div>"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        rest: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                tensors[f.name] = v.detach().cpu().contiguous()
            elif isinstance(v, dict) and v and all(isinstance(x, torch.Tensor) for x in v.values()):
                keys = list(v)
                for k, x in v.items():
                    tensors[f"{f.name}{_SEP}{k}"] = x.detach().cpu().contiguous()
                rest[f.name] = {"__tensor_dict__": keys}
            else:
                rest[f.name] = to_jsonable(v)
        # each file is written to a temporary name and renamed: a crash never leaves half a file
        with atomic_path(path / "tensors.safetensors") as tmp:
            save_file(tensors, str(tmp))
        # the dtype of every tensor, so a tensor replaced by one of another dtype is noticed on load
        dtypes = {k: _dtype_name(t) for k, t in tensors.items()}
        doc = {"class": type(self).__name__, "fields": rest, "dtypes": dtypes}
        write_json(path / "result.json", doc)
        return path

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        path = Path(path)
        fix = f"save the {cls.__name__} again (result.save(dir)) or load another folder"
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path} is not a folder holding a saved mechlens result "
                f"(result.json + tensors.safetensors); {fix}"
            )
        jpath, tpath = path / "result.json", path / "tensors.safetensors"
        doc = read_json(jpath, fix=fix)
        if not isinstance(doc, dict) or not isinstance(doc.get("class"), str) or not isinstance(doc.get("fields"), dict):
            raise DamagedFileError(jpath, "it has no 'class' and 'fields' entries", fix)
        if doc["class"] != cls.__name__:
            legacy = cls._legacy_fields(doc)
            if legacy is None:
                raise ValueError(f"{path} holds a {doc['class']}, not a {cls.__name__}; load it with {doc['class']}.load")
            doc = {**doc, "fields": legacy}
        if not tpath.exists():
            raise FileNotFoundError(f"{tpath} does not exist; {fix}")
        try:
            tensors = load_file(str(tpath))
        except Exception as exc:  # safetensors raises its own error type for every kind of damage
            raise DamagedFileError(tpath, f"{type(exc).__name__}: {exc}", fix) from None
        _check_dtypes(cls, tensors, doc.get("dtypes"), tpath, fix)
        kwargs: dict[str, Any] = {}
        try:
            for name, v in doc["fields"].items():
                if isinstance(v, dict) and "__tensor_dict__" in v:
                    kwargs[name] = {k: tensors[f"{name}{_SEP}{k}"] for k in v["__tensor_dict__"]}
                else:
                    kwargs[name] = from_jsonable(v)
            for key, t in tensors.items():
                if _SEP not in key:
                    kwargs[key] = t
            with nan_policy("ignore"):  # the values were checked when they were measured
                return cls(**kwargs)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
            raise DamagedFileError(
                jpath, f"its fields do not make a {cls.__name__} with {tpath.name}: {type(exc).__name__}: {exc}", fix
            ) from None


@dataclass(kw_only=True)
class Measurement(Result):
    """A metric measured per cell and per example: the one type of measured values.

    - ``per_example`` ``[*cells, batch]``: the metric for each cell and example;
    - ``axes`` (e.g. ``("layer", "pos")``; ``()`` for a single number) and ``labels``
      (axis -> one label per entry);
    - ``metric``: what was measured.

    ``values`` is the mean over examples per cell; ``stderr()`` and ``ci()`` its standard error
    and percentile bootstrap interval; ``to_dataframe()`` one row per cell.
    """

    per_example: Float[Tensor, "*cells batch"]
    axes: tuple[str, ...] = ()
    labels: dict[str, list] = field(default_factory=dict)
    metric: str = ""

    def __post_init__(self) -> None:
        self.axes = tuple(self.axes)
        if self.per_example.ndim != len(self.axes) + 1:
            raise ValueError(
                f"per_example has {self.per_example.ndim} dims; expected one per axis {self.axes} plus batch"
            )
        for i, a in enumerate(self.axes):
            if a not in self.labels or len(self.labels[a]) != self.per_example.shape[i]:
                raise ValueError(f"labels[{a!r}] must have {self.per_example.shape[i]} entries")
        _check_finite_cells(self)

    # ------------------------------------------------------------------ numbers
    @property
    def values(self) -> Tensor:
        """Mean over examples per cell."""
        return self.per_example.mean(-1)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def n_examples(self) -> int:
        return int(self.per_example.shape[-1])

    def stderr(self) -> Tensor:
        """Standard error of the mean over examples (NaN with a single example)."""
        if self.n_examples < 2:
            return torch.full(self.shape, math.nan)
        return self.per_example.float().std(-1) / math.sqrt(self.n_examples)

    def ci(self, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0) -> tuple[Tensor, Tensor]:
        """Percentile bootstrap interval of each cell's mean over examples: ``(low, high)``.

        The same ``n_resamples`` resamples of the examples serve every cell (seeded by ``seed``
        and the metric's name); NaN with a single example.
        """
        if not 0 < confidence < 1:
            raise ValueError(f"confidence={confidence!r} must be between 0 and 1")
        if self.n_examples < 2:
            nan = torch.full(self.shape, math.nan)
            return nan, nan.clone()
        x = self.per_example.detach().float().cpu()
        g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{self.metric}".encode()))
        idx = torch.randint(self.n_examples, (n_resamples, self.n_examples), generator=g)
        means = x[..., idx].mean(-1)  # [*cells, n_resamples]
        q = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2])
        lo, hi = torch.quantile(means, q, dim=-1)
        return lo, hi

    # ------------------------------------------------------------------ tables
    def _label_grid(self) -> pd.DataFrame:
        if not self.axes:
            return pd.DataFrame(index=[0])
        idx = pd.MultiIndex.from_product([range(n) for n in self.shape], names=list(self.axes))
        df = idx.to_frame(index=False)
        for a in self.axes:
            df[a] = [self.labels[a][i] for i in df[a]]
        return df

    def to_dataframe(self, per_example: bool = False) -> pd.DataFrame:
        """One row per cell (``value``, ``stderr``, ``ci_low``, ``ci_high``), labelled by axis.

        ``per_example=True``: one row per cell and example (``example``, ``value``).
        """
        df = self._label_grid()
        if per_example:
            flat = self.per_example.detach().cpu().float().reshape(len(df), self.n_examples).numpy()
            rep = df.loc[df.index.repeat(self.n_examples)].reset_index(drop=True)
            rep["example"] = np.tile(np.arange(self.n_examples), len(df))
            rep["value"] = flat.reshape(-1)
            return rep
        lo, hi = self.ci()
        df["value"] = self.values.detach().cpu().float().flatten().numpy()
        df["stderr"] = self.stderr().detach().cpu().flatten().numpy()
        df["ci_low"] = lo.cpu().flatten().numpy()
        df["ci_high"] = hi.cpu().flatten().numpy()
        return df

    def top(self, k: int = 10, by: str = "abs") -> pd.DataFrame:
        """The ``k`` cells with the largest ``|value|`` (``by="abs"``) or ``value`` (``by="value"``)."""
        if by not in ("abs", "value"):
            raise ValueError(f"by={by!r}: choose 'abs' or 'value'")
        df = self._label_grid()  # no bootstrap: a ranking needs only the means
        df["value"] = self.values.detach().cpu().float().flatten().numpy()
        df["stderr"] = self.stderr().detach().cpu().flatten().numpy()
        key = df["value"].abs() if by == "abs" else df["value"]
        return df.loc[key.sort_values(ascending=False).index[:k]].reset_index(drop=True)

    # ------------------------------------------------------------------ figures
    def _title(self) -> str:
        return f"{self.metric or 'metric'} on {self.dataset or 'dataset'}"

    def plot(self, ci: bool = False, *, title: str | None = None) -> Any:
        """A matplotlib Figure: a point with its error bar (no axes), bars (one axis), a heatmap
        (two: the first axis down, token labels for positions), small multiples over a third.

        ``ci=True`` adds 95% bootstrap intervals: error bars on bars; on heatmaps, a dot on
        every cell whose interval excludes zero (explained in a legend under the figure) and,
        for a single heatmap, a second panel with the half-widths and its own colourbar.
        """
        from mechlens.viz.cells import plot_cells

        return plot_cells(self, ci, title=title)

    def plot_interactive(self) -> Any:
        """A plotly figure (heatmap with value, stderr and CI on hover; bars for one axis)."""
        from mechlens.viz.cells import plot_cells_interactive

        return plot_cells_interactive(self)

    def _summary_lines(self) -> list[str]:
        dims = ", ".join(f"{a}={n}" for a, n in zip(self.axes, self.shape)) or "one value"
        lines = [f"{self.metric or 'metric'}: [{dims}] x {self.n_examples} examples"]
        if not self.axes:
            se = float(self.stderr())
            lines.append(f"value {float(self.values):.4g} +- {se:.2g} (stderr)")
        else:
            top = self.top(3)
            cells = [
                "(" + ", ".join(str(r[a]) for a in self.axes) + f") {r['value']:+.4g}" for r in top.to_dict("records")
            ]
            lines.append("top cells: " + "; ".join(cells))
        return lines


@dataclass(kw_only=True, repr=False)
class PatchSetResult(Measurement):
    """The metric under each of a list of patch configurations (axis ``"config"``), with the
    unpatched runs in ``baselines`` (``"clean"``, ``"corrupt"``: the metric per example).
    What :func:`mechlens.circuits.patch_heads` and :func:`mechlens.circuits.patch_positions`
    return."""

    baselines: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- merging and loading


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(
            torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _tensor_dims(cls: type) -> dict[str, list[str]]:
    """Field -> its dimension names, from the jaxtyping annotation (``Float[Tensor, "method
    layer"]`` -> ``["method", "layer"]``)."""
    out = {}
    for f in dataclasses.fields(cls):
        m = re.search(r"\[Tensor,\s*[\"']([^\"']*)[\"']\]", str(f.type))
        if m and not str(f.type).startswith("dict"):
            out[f.name] = m.group(1).split()
    return out


def _sum_numbers(values: list[Any]) -> Any:
    if all(isinstance(v, dict) for v in values):
        return {k: _sum_numbers([v[k] for v in values if k in v]) for k in values[0]}
    return sum(values)


def concat(parts: Sequence[M], axis: str, **override: Any) -> M:
    """One result from parts of one sweep, put back together along ``axis``.

    ``axis`` is one of the parts' axes (their ``per_example`` and ``labels[axis]`` are
    concatenated in order) or ``"example"``: the parts hold disjoint examples, and every
    per-example tensor (``per_example`` and tensor dicts such as ``baselines``) is
    concatenated along its last axis. Every other field must agree across the parts (else a
    ValueError names it), except ``settings`` (the first part's, with ``merged`` recording
    the axis and the number of parts) and the fields given in ``override`` (e.g. the full
    dataset's ``dataset`` and ``fingerprint`` when the parts ran on subsets). Works for any
    :class:`Measurement` subclass: this is how :mod:`mechlens.scale` merges any sweep. A
    result of tables (e.g. :class:`~mechlens.directions.DirectionEvaluation`, ``[method,
    layer]`` tensors) merges along an axis it declares (``LABEL_FIELDS``): every tensor
    field whose annotated dimensions hold the axis is concatenated along it.
    """
    if not parts:
        raise ValueError("concat: no results to merge")
    first = parts[0]
    cls = type(first)
    if not isinstance(first, Result) or any(type(p) is not cls for p in parts):
        raise TypeError(f"concat needs results of one class, got {sorted({type(p).__name__ for p in parts})}")
    measured = isinstance(first, Measurement)
    by_example = axis == "example"
    # a result of tables (not a Measurement) declares its axes: the field listing each
    # axis's labels, and its tensors' jaxtyping dimension names
    label_field = None if measured else getattr(cls, "LABEL_FIELDS", {}).get(axis)
    if measured and not by_example and axis not in first.axes:
        raise ValueError(f"the results have axes {first.axes}; they cannot be merged along {axis!r}")
    if not measured and label_field is None:
        raise TypeError(f"a {cls.__name__} cannot be merged along {axis!r}: it declares the axes "
                        f"{sorted(getattr(cls, 'LABEL_FIELDS', {}))}")
    dims = {"per_example": [*first.axes, "example"]} if measured else _tensor_dims(cls)
    summed = set(getattr(cls, "SUMMED_META", ()))  # meta entries (timings) that add up over parts
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(first):
        name = f.name
        values = [getattr(p, name) for p in parts]
        if name in override:
            kwargs[name] = override[name]
        elif name in dims and axis in dims[name]:
            kwargs[name] = torch.cat(values, dim=dims[name].index(axis))
        elif name == label_field:
            kwargs[name] = [x for v in values for x in v]
        elif name == "labels" and measured and not by_example:
            kwargs[name] = {**first.labels, axis: [x for p in parts for x in p.labels[axis]]}
            for i, p in enumerate(parts[1:], 1):
                other = [a for a in first.axes if a != axis and p.labels.get(a) != first.labels.get(a)]
                if other:
                    raise ValueError(f"part {i} differs from part 0 in labels {other}; the parts are not one sweep")
        elif name == "settings":
            kwargs[name] = {**first.settings, "merged": {"axis": axis, "parts": len(parts)}}
        elif name == "version":
            kwargs[name] = first.version
        elif by_example and isinstance(values[0], dict) and values[0] and all(
                isinstance(v, torch.Tensor) for v in values[0].values()):
            if any(v.keys() != values[0].keys() for v in values):
                raise ValueError(f"the parts differ in the keys of {name!r}; they are not parts of one sweep")
            kwargs[name] = {k: torch.cat([v[k] for v in values], dim=-1) for k in values[0]}
        else:
            add = summed if name == "meta" else set()  # what adds up over parts; the rest must agree
            rest = [{k: x for k, x in v.items() if k not in add} for v in values] if add else values
            for i, v in enumerate(rest[1:], 1):
                if not _same(v, rest[0]):
                    raise ValueError(f"part {i} differs from part 0 in {name!r}; the parts are not one sweep")
            kwargs[name] = ({**values[0], **{k: _sum_numbers([v[k] for v in values]) for k in add if k in values[0]}}
                            if add else values[0])
    return cls(**kwargs)


def result_classes() -> dict[str, type[Result]]:
    """Every :class:`Result` subclass defined so far, by class name."""
    out: dict[str, type[Result]] = {}
    todo: list[type[Result]] = [Result]
    while todo:
        c = todo.pop()
        out[c.__name__] = c
        todo.extend(c.__subclasses__())
    return out


def load_result(path: str | Path) -> Result:
    """Load a saved result of any class (the class is recorded in ``result.json``)."""
    doc = read_json(Path(path) / "result.json", fix="save the result again (result.save(dir))")
    name = doc.get("class") if isinstance(doc, dict) else None
    classes = result_classes()
    if name not in classes:
        raise ValueError(f"{path}: unknown result class {name!r}; import the module that defines it first")
    cls = classes[name]
    # a result saved in an older layout loads as the class that replaced it
    moved = getattr(cls, "MOVED", {}).get((doc.get("fields") or {}).get("method"))
    if moved:
        module, _, qual = moved.partition(":")
        cls = getattr(importlib.import_module(module), qual)
    return cls.load(path)
