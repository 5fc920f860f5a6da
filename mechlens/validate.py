"""Checking what a user hands mechlens: one function per kind of input.

Every public function runs its arguments through these checks before it touches the model,
so bad input fails fast (well under a second), with a message that names the argument,
says what was wrong and how to fix it, and with no hook left on the model. A new public
function gets the same behaviour by calling the same checks:

- prompts: :func:`prompt_tokens`, the one place a prompt string meets the model's context
  (refused when empty or longer than ``model.cfg.n_ctx``, before anything can cut it);
- datasets: :func:`check_dataset` (type; with a model: the tokenizer that built it, token
  ids inside the vocabulary, prompts inside the context), :func:`check_binary_labels`;
- token ids: :func:`check_token_ids` (integers, not negative, inside the vocabulary);
- directions and vectors: :func:`check_vector`, :func:`check_direction`,
  :func:`check_activations`;
- layers / heads / positions: :func:`check_layer`, :func:`check_layers`;
- batch sizes: :func:`check_batch_size`;
- coefficients and counts: :func:`check_coefficient`, :func:`check_count`.

The checks raise ``ValueError`` (a bad value) or ``TypeError`` (a value of the wrong kind).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import operator
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "tokenizer_fingerprint",
    "prompt_tokens",
    "check_dataset",
    "check_contrast_dataset",
    "check_binary_labels",
    "check_choice_dataset",
    "check_token_ids",
    "as_token_tensor",
    "check_vector",
    "check_direction",
    "check_activations",
    "check_layer",
    "check_layers",
    "check_head",
    "check_batch_size",
    "check_coefficient",
    "check_count",
]


# --------------------------------------------------------------------------- tokenizers

_FINGERPRINTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(model_or_tokenizer: Any) -> str | None:
    """A short hash of a tokenizer's whole vocabulary (token -> id), computed once per tokenizer.

    Two tokenizers get the same fingerprint exactly when they map every token to the same
    id, so a dataset built with one is valid for a model that uses the other. ``None`` when
    there is no tokenizer to read (a model built by hand).
    """
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if tok is None or not hasattr(tok, "get_vocab"):
        return None
    try:
        return _FINGERPRINTS[tok]
    except (KeyError, TypeError):
        pass
    vocab = tok.get_vocab()
    h = hashlib.sha256()
    for piece, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\x00{piece}\x01".encode("utf-8", "surrogatepass"))
    fp = h.hexdigest()[:16]
    try:
        _FINGERPRINTS[tok] = fp
    except TypeError:  # pragma: no cover - a tokenizer that cannot be weakly referenced
        pass
    return fp


# --------------------------------------------------------------------------- prompts


def prompt_tokens(
    model: Any, prompt: Any, *, what: str = "prompt", where: str | None = None, prepend_bos: bool | None = None
) -> Tensor:
    """Token ids ``[pos]`` of one prompt, checked against the model's context.

    The one place where a prompt string meets the model: every dataset builder tokenises
    through it. It refuses a prompt that is not a string, that is empty, or whose tokens do
    not fit ``model.cfg.n_ctx`` -- tokenised without truncation, so a long prompt is never
    cut to the context and read at the wrong position. ``where`` (``"pairs.jsonl, line 3"``)
    starts every message, so a prompt from a file is found by its file and row.
    """
    loc = f"{where}: " if where else ""
    if not isinstance(prompt, str):
        raise TypeError(f"{loc}{what} must be a string, not {type(prompt).__name__} ({prompt!r})")
    if not prompt.strip():
        raise ValueError(
            f"{loc}{what} is empty ({prompt!r}): a prompt needs at least one token besides BOS; "
            "remove the row or write the prompt"
        )
    kw = {} if prepend_bos is None else {"prepend_bos": prepend_bos}
    toks = model.to_tokens(prompt, truncate=False, **kw)[0].cpu()
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx and len(toks) > n_ctx:
        short = prompt if len(prompt) <= 50 else prompt[:47] + "..."
        raise ValueError(
            f"{loc}{what} {short!r} is {len(toks)} tokens, longer than the model's context "
            f"(model.cfg.n_ctx = {n_ctx}); it would be cut and read at the wrong position. Shorten "
            f"it to at most {n_ctx} tokens or use a model with a longer context"
        )
    return toks


# --------------------------------------------------------------------------- datasets


def check_contrast_dataset(ds: Any, what: str = "ds") -> None:
    """``ds`` must be a :class:`~mechlens.data.ContrastDataset`."""
    from mechlens.data.contrast import ContrastDataset

    if not isinstance(ds, ContrastDataset):
        hint = (
            " (a ChoiceDataset is for the steering functions)"
            if type(ds).__name__ == "ChoiceDataset"
            else "; build one with toy_movie_review(model, ...) or ContrastDataset.from_prompts(model, ...)"
        )
        raise TypeError(f"{what} must be a mechlens ContrastDataset, not {type(ds).__name__}{hint}")


def check_dataset(ds: Any, model: Any = None, what: str = "ds") -> Any:
    """The one dataset check every method calls; returns ``ds``.

    Without ``model``: only the type. With ``model``: also that the dataset was built with
    the model's tokenizer (when the dataset recorded it), that every token id is inside the
    model's vocabulary and that the prompts fit the model's context.
    """
    check_contrast_dataset(ds, what)
    if model is None:
        return ds
    _check_tokenizer(ds, model, what)
    vocab = int(model.cfg.d_vocab)
    for field, t in (("clean_tokens", ds.clean_tokens), ("corrupt_tokens", ds.corrupt_tokens), ("answers", ds.answers)):
        _check_id_range(t, vocab, f"{what}.{field}", fix="build the dataset with this model's tokenizer")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx and ds.seq_len > n_ctx:
        raise ValueError(
            f"{what} ({ds.name!r}) prompts are {ds.seq_len} tokens but the model's context is {n_ctx}; "
            "use shorter prompts (e.g. less filler)"
        )
    return ds


def _check_tokenizer(ds: Any, model: Any, what: str) -> None:
    built_with = getattr(ds, "tokenizer", None)
    if built_with is not None:
        mine = tokenizer_fingerprint(model)
        if mine is not None and mine != built_with:
            raise ValueError(
                f"{what} ({ds.name!r}) was built with a different tokenizer than this model's "
                f"(tokenizer fingerprint {built_with} vs {mine}); its token ids mean other words "
                "here. Build the dataset again with this model, e.g. toy_movie_review(model, ...)"
            )


def check_choice_dataset(ds: Any, model: Any, what: str = "ds") -> Any:
    """A :class:`~mechlens.data.ChoiceDataset` built for ``model``'s tokenizer, with every
    token id inside its vocabulary; returns ``ds``."""
    from mechlens.data.choices import ChoiceDataset

    if not isinstance(ds, ChoiceDataset):
        raise TypeError(
            f"{what} must be a ChoiceDataset (from mechlens.data.choices), not {type(ds).__name__}"
        )
    _check_tokenizer(ds, model, what)
    vocab = int(model.cfg.d_vocab)
    fix = "build the dataset with this model's tokenizer"
    for field, seqs in (("tokens", ds.tokens), ("open_tokens", ds.open_tokens)):
        for i, t in enumerate(seqs):
            _check_id_range(as_token_tensor(t, f"{what}.{field}[{i}]"), vocab, f"{what}.{field}[{i}]", fix=fix)
    _check_id_range(torch.as_tensor(list(ds.letter_ids)), vocab, f"{what}.letter_ids", fix=fix)
    return ds


def check_binary_labels(ds: Any, what: str = "ds") -> None:
    values = set(ds.labels.unique().tolist())
    if not values <= {0, 1} or len(values) < 1:
        raise ValueError(
            f"{what}.labels must be 0/1 sentiment labels, got values {sorted(values)}; "
            "pass labels=[1, 0, ...] when building the dataset"
        )


# --------------------------------------------------------------------------- token ids


def as_token_tensor(value: Any, what: str) -> Tensor:
    """``value`` as a long tensor of token ids; refuses non-integers and negative ids
    (instead of truncating 3.7 to 3 or letting -1 wrap around)."""
    t = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        sample = t.flatten()[:3].tolist()
        raise TypeError(
            f"{what} must hold integer token ids, got {t.dtype} values (e.g. {sample}); "
            "token ids are whole numbers from model.to_tokens(...)"
        )
    t = t.long()
    if t.numel() and int(t.min()) < 0:
        raise ValueError(
            f"{what} has negative token id {int(t.min())}; token ids are 0..vocabulary size - 1 "
            "(get them from model.to_tokens(...))"
        )
    return t


def _check_id_range(t: Tensor, vocab: int, what: str, *, fix: str) -> None:
    if not t.numel():
        return
    lo, hi = int(t.min()), int(t.max())
    if lo < 0:
        raise ValueError(f"{what} has negative token id {lo}; token ids are 0..{vocab - 1}; {fix}")
    if hi >= vocab:
        raise ValueError(
            f"{what} has token id {hi} but the model's vocabulary has {vocab} tokens (ids 0..{vocab - 1}); {fix}"
        )


def check_token_ids(model: Any, tokens: Any, what: str = "tokens") -> Tensor:
    """Integer token ids inside ``model``'s vocabulary, as a long tensor."""
    t = as_token_tensor(tokens, what)
    _check_id_range(t, int(model.cfg.d_vocab), what, fix="get token ids from this model's model.to_tokens(...)")
    return t


# --------------------------------------------------------------------------- vectors and directions


def check_vector(vector: Any, what: str = "vector", *, d_model: int | None = None) -> Tensor:
    """A finite ``[d_model]`` float tensor."""
    if not isinstance(vector, Tensor):
        raise TypeError(f"{what} must be a [d_model] tensor, not {type(vector).__name__}")
    if vector.ndim != 1 or (d_model is not None and vector.shape[0] != d_model):
        want = f"[d_model={d_model}]" if d_model is not None else "[d_model]"
        raise ValueError(
            f"{what} must have shape {want}, got {tuple(vector.shape)}"
            + ("; was it made for another model?" if d_model is not None and vector.ndim == 1 else "")
        )
    if vector.is_complex() or vector.dtype == torch.bool:
        raise TypeError(f"{what} must be a real-valued tensor, got {vector.dtype}")
    _check_finite(vector, what, fix="recompute it from finite activations")
    return vector


def _check_finite(t: Tensor, what: str, *, fix: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        kind = "NaN" if bool(torch.isnan(t).any()) else "inf"
        raise ValueError(f"{what} has {bad} non-finite value(s) ({kind}); {fix}")


def check_direction(model: Any, d: Any, what: str = "direction", *, own_layer: bool = True) -> Any:
    """A :class:`~mechlens.directions.Direction` usable on ``model``: width d_model, finite,
    non-zero, and (``own_layer``: its layer is where it will be used) its layer inside the model."""
    v = d.vector
    if v.ndim != 1 or v.shape[0] != model.cfg.d_model:
        raise ValueError(
            f"{what} has {v.shape[-1] if v.ndim else 0} components but the model's d_model is "
            f"{model.cfg.d_model}; was it fitted on another model?"
        )
    _check_finite(v, what, fix="fit it again from finite activations")
    if float(v.float().norm()) == 0.0:
        raise ValueError(f"{what} is the zero vector: it has no direction to patch, ablate or add along")
    if own_layer and d.layer is not None:
        n = model.cfg.n_layers
        if isinstance(d.layer, bool) or not isinstance(d.layer, int) or not 0 <= d.layer < n:
            raise ValueError(
                f"{what}.layer={d.layer!r} is outside the model (layers 0..{n - 1}); was it fitted on "
                "another model? Pass layers=... to use it at another layer"
            )
    return d


def check_activations(acts: Any, labels: Any, *, d_model: int | None = None, what: str = "acts") -> tuple[Tensor, Tensor]:
    """``(activations [n, d_model], labels [n])``: matching rows, the model's width, finite."""
    X = torch.as_tensor(acts).detach()
    y = torch.as_tensor(labels).detach()
    if X.ndim != 2 or y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"{what} must be ([n, d_model] activations, [n] labels); got {tuple(X.shape)} and {tuple(y.shape)}"
        )
    if d_model is not None and X.shape[1] != d_model:
        raise ValueError(
            f"{what} activations have width {X.shape[1]} but the model's d_model is {d_model}; "
            "collect them from this model with collect_activations(model, ds, layer)"
        )
    _check_finite(
        X.float(), f"{what} activations",
        fix="the model produced NaN/inf activations (check its weights and dtype) or they were damaged",
    )
    return X, y


# --------------------------------------------------------------------------- layers


def _index(x: Any) -> int | None:
    """``x`` as an int when it is an integer (numpy / torch integer scalars too); never a bool."""
    if isinstance(x, (bool, float)) or isinstance(x, Tensor) and (x.dtype == torch.bool or x.is_floating_point()):
        return None
    if isinstance(x, Tensor) and x.numel() != 1:
        return None
    try:
        return operator.index(x)
    except TypeError:
        return None


def check_layer(model: Any, layer: Any, *, what: str = "layer") -> int:
    """One layer index (negative counts from the end); bools and floats are refused."""
    n = model.cfg.n_layers
    i = _index(layer)
    if i is None:
        raise ValueError(f"{what}={layer!r} must be an int layer index; the model has layers 0..{n - 1}")
    if not -n <= i < n:
        raise ValueError(f"{what}={layer!r} is out of range: the model has layers 0..{n - 1}")
    return i % n


def check_layers(model: Any, layers: Any, *, what: str = "layers", sort: bool = False) -> list[int]:
    """``None`` -> every layer; an int or an iterable of ints -> those layers, checked."""
    n = model.cfg.n_layers
    if layers is None:
        return list(range(n))
    if isinstance(layers, str):
        raise ValueError(f"{what}={layers!r}: give an int, a list of ints or None (all {n} layers)")
    if _index(layers) is not None or isinstance(layers, (bool, float)):
        layers = [layers]
    if not isinstance(layers, Iterable):
        raise ValueError(f"{what}={layers!r}: give an int, a list of ints or None (all {n} layers)")
    out = [check_layer(model, x, what=what) for x in layers]
    if not out:
        raise ValueError(f"{what} is empty: give at least one layer (or None for all {n})")
    return sorted(set(out)) if sort else out


def check_head(head: Any, n_heads: int, *, what: str = "head", kind: str = "heads") -> int:
    """One head index in ``-n_heads..n_heads-1`` (bools and floats refused), as 0..n_heads-1."""
    i = _index(head)
    if i is None or not -n_heads <= i < n_heads:
        raise ValueError(f"{what} {head!r} is out of range: the model has {kind} 0..{n_heads - 1} (ints)")
    return i % n_heads


# --------------------------------------------------------------------------- numbers


def check_batch_size(batch_size: Any, what: str = "batch_size") -> None:
    """``batch_size`` must be ``None`` (the method's default) or a positive int."""
    if batch_size is not None and (_index(batch_size) is None or operator.index(batch_size) < 1):
        raise ValueError(f"{what}={batch_size!r} must be a positive int (sequences per forward pass) or None")


def check_coefficient(value: Any, what: str = "coeff") -> float:
    """A finite real number (not a bool), as a float."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)) or (
        isinstance(value, Tensor) and value.numel() != 1
    ):
        raise TypeError(f"{what} must be a number, not {type(value).__name__} ({value!r})")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return x


def check_count(value: Any, what: str, *, minimum: int = 0, allow_none: bool = False) -> int | None:
    """An int ``>= minimum`` (``None`` too when ``allow_none``)."""
    if value is None and allow_none:
        return None
    i = _index(value)
    if i is None or i < minimum:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{what}={value!r} must be an int >= {minimum}{extra}")
    return i
