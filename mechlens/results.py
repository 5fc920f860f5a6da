"""Saving and loading result objects: tensors as safetensors, everything else as JSON.

Result classes are dataclasses that inherit :class:`Result`. ``save(dir)`` writes
``tensors.safetensors`` (every tensor field, and every tensor inside a dict field) and
``result.json`` (the class name and all other fields); ``load(dir)`` rebuilds the object
exactly (tuples stay tuples, dict keys keep their order).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

from mechlens.fileio import DamagedFileError, atomic_path, read_json, write_json

__all__ = ["Result", "markdown_table", "to_jsonable", "from_jsonable"]

R = TypeVar("R", bound="Result")
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


class Result:
    """Mixin for dataclass results: ``save(dir)`` and ``load(dir)`` with an exact round trip."""

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
        doc = {"class": type(self).__name__, "fields": rest}
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
            raise ValueError(f"{path} holds a {doc['class']}, not a {cls.__name__}; load it with {doc['class']}.load")
        if not tpath.exists():
            raise FileNotFoundError(f"{tpath} does not exist; {fix}")
        try:
            tensors = load_file(str(tpath))
        except Exception as exc:  # safetensors raises its own error type for every kind of damage
            raise DamagedFileError(tpath, f"{type(exc).__name__}: {exc}", fix) from None
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
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
            raise DamagedFileError(
                jpath, f"its fields do not make a {cls.__name__} with {tpath.name}: {type(exc).__name__}: {exc}", fix
            ) from None
