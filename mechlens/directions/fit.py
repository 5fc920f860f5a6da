"""Fitting a direction: five ways to turn a contrast dataset into one unit vector.

Collect residual-stream activations at one layer and one named position (``"ADJ"`` by
default) for the clean AND the corrupt prompts of a dataset, so both classes are present:
clean prompts carry ``ds.labels`` and corrupt prompts the opposite label. Then:

- ``mean_diff``: mean(label-1 activations) - mean(label-0 activations).
- ``kmeans``: k-means with k=2 (scikit-learn); the difference of the two centroids.
- ``logistic``: a logistic-regression probe (scikit-learn); its weight vector.
- ``pca``: the first principal component (scikit-learn).
- ``das``: distributed alignment search. A unit vector ``d`` is *trained* (torch, Adam,
  seeded) so that directional patching along it, clean -> corrupt at this layer, moves
  the logit difference as far as it can towards the clean answer. The first four methods
  are correlational (they describe where the classes sit); DAS is causal (it finds what
  the model reads).

Every vector is normalised to unit length and signed so that it points towards positive
sentiment: label-1 activations project higher on it than label-0 activations.

The result is a :class:`Direction`: the vector plus where it came from (method, layer,
site, position, model name, dataset fingerprint). ``Direction.save(dir)`` /
``Direction.load(dir)`` round-trip exactly (safetensors + JSON).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechlens.data.contrast import ContrastDataset
from mechlens.engine import cache_batched, progress_bar, resolve_backend, train_forward
from mechlens.engine.sites import RESIDUAL_SITES
from mechlens.metrics import logit_diff
from mechlens.models import model_device
from mechlens.results import Result, provenance
from mechlens.validate import (
    check_activations,
    check_batch_size,
    check_binary_labels,
    check_dataset,
    check_layer,
    check_layers,
    check_vector,
)

__all__ = [
    "METHODS",
    "SITES",
    "Direction",
    "hook_name",
    "collect_activations",
    "fit_activations",
    "fit",
    "random_directions",
]

METHODS = ("mean_diff", "kmeans", "logistic", "pca", "das")
SITES = RESIDUAL_SITES

# DAS defaults, chosen by measuring on smollm2-135m (docs/directions.md): 4 epochs of
# minibatches of 8 pairs (24 Adam steps on the 42-pair ToyMovieReview train split) from a
# random start get past 100% LD recovered at the middle layers in ~40 s per layer on one CPU
# thread. "patch_position": "position" means the fit position (ADJ), as the authors trained.
DAS_DEFAULTS: dict[str, Any] = {"epochs": 4, "lr": 0.02, "batch_size": 8, "patch_position": "position"}


# --------------------------------------------------------------------------- Direction


@dataclass(repr=False)
class Direction(Result):
    """A unit vector in one activation site of one layer, pointing to positive sentiment.

    Attributes:
        vector: ``[d_model]`` unit vector.
        method: how it was found (``"mean_diff"``, ``"das"``, ``"random"``, ...).
        layer, site: where it lives: hook ``blocks.{layer}.hook_{site}``.
        position: the positions it was fitted at (a name, ``"all"``; see
            :meth:`ContrastDataset.position_mask`).
        model_name, fingerprint: what it was fitted on (the model, the dataset's tokens).
        meta: method details (train separation accuracy, DAS settings and loss curve).
    """

    vector: Float[Tensor, " d_model"]
    method: str
    layer: int
    site: str = "resid_pre"
    position: str = "ADJ"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        v = check_vector(torch.as_tensor(self.vector), "Direction.vector")
        if float(v.float().norm()) == 0.0:
            raise ValueError("Direction.vector must be a finite non-zero [d_model] vector, got the zero vector")
        self.vector = v
        _check_site(self.site)

    @property
    def hook_name(self) -> str:
        return hook_name(self.layer, self.site)

    @property
    def d_model(self) -> int:
        return int(self.vector.shape[0])

    def unit(self) -> Float[Tensor, " d_model"]:
        """The vector scaled to unit norm (loaded vectors already are, up to rounding)."""
        return self.vector / self.vector.norm()

    def cosine(self, other: Direction | Tensor) -> float:
        w = other.vector if isinstance(other, Direction) else torch.as_tensor(other)
        return float(torch.nn.functional.cosine_similarity(self.vector.float(), w.float().to(self.vector.device), dim=0))

    def project(self, acts: Float[Tensor, "... d_model"]) -> Float[Tensor, "..."]:
        """Scalar projection of activations onto the (unit) direction."""
        return acts @ self.unit().to(acts.device, acts.dtype)

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame({"component": range(self.d_model), "value": self.vector.detach().cpu().numpy()})

    def plot(self) -> Any:
        """Bar plot of the vector's components."""
        from mechlens.viz.directions import plot_direction

        return plot_direction(self)

    def _summary_lines(self) -> list[str]:
        return [
            f"method={self.method!r}, layer={self.layer}, site={self.site!r}, position={self.position!r}, "
            f"d_model={self.d_model}, fingerprint={self.fingerprint!r}"
        ]


def _check_site(site: str) -> None:
    if site not in SITES:
        raise ValueError(f"site={site!r} is not supported; choose one of {SITES}")


def hook_name(layer: int, site: str = "resid_pre") -> str:
    """``blocks.{layer}.hook_{site}``."""
    _check_site(site)
    return f"blocks.{layer}.hook_{site}"


# --------------------------------------------------------------------------- helpers



def _check_position(ds: ContrastDataset, position: Any, what: str = "position") -> None:
    try:
        ds.position_mask(position)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{what}: {exc}") from None


def _layers_arg(model: Any, layers: int | Sequence[int] | None, what: str = "layers") -> list[int]:
    return check_layers(model, layers, what=what)


@contextlib.contextmanager
def _frozen(model: Any) -> Iterator[None]:
    """Parameters stop requiring grad inside the block (DAS trains only its direction)."""
    params = list(model.parameters())
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, r in zip(params, before):
            p.requires_grad_(r)


def _sign_to_labels(v: Tensor, X: Tensor, y: Tensor) -> Tensor:
    """Flip ``v`` so label-1 rows project higher than label-0 rows."""
    proj = X.float() @ v.float()
    gap = proj[y == 1].mean() - proj[y == 0].mean()
    return -v if gap < 0 else v


def _separation(v: Tensor, X: Tensor, y: Tensor) -> float:
    """Training accuracy of thresholding the projection at the midpoint of the class means."""
    proj = X.float() @ v.float()
    mid = (proj[y == 1].mean() + proj[y == 0].mean()) / 2
    return float(((proj > mid).long() == y).float().mean())


# --------------------------------------------------------------------------- activations


def collect_activations(
    model: Any,
    ds: ContrastDataset,
    layers: int | Sequence[int] | None = None,
    *,
    position: Any = "ADJ",
    site: str = "resid_pre",
    batch_size: int | None = None,
) -> tuple[dict[int, Float[Tensor, "n d_model"]], Int[Tensor, " n"]]:
    """Activations at ``position`` for the clean and the corrupt prompts, with labels.

    Returns ``(acts, labels)``: ``acts[layer]`` is ``[n, d_model]`` (clean rows first, then
    corrupt rows; every position of a mask counts as a row), ``labels`` is ``[n]`` (clean
    rows get ``ds.labels``, corrupt rows the opposite label).
    """
    ds = check_dataset(ds, model)
    check_binary_labels(ds)
    check_batch_size(batch_size)
    _check_position(ds, position)
    layer_list = _layers_arg(model, layers)
    names = [hook_name(layer, site) for layer in layer_list]
    mask = ds.position_mask(position).cpu()
    # Nothing above the deepest requested block is needed.
    stop = max(layer_list) + 1
    stop = stop if stop < model.cfg.n_layers else None
    out: dict[int, list[Tensor]] = {layer: [] for layer in layer_list}
    labels = []
    for tokens, lab in ((ds.clean_tokens, ds.labels), (ds.corrupt_tokens, 1 - ds.labels)):
        acts, _ = cache_batched(model, tokens, names, batch_size=batch_size, stop_at_layer=stop)
        for layer, n in zip(layer_list, names):
            out[layer].append(acts[n].cpu()[mask])
        labels.append(lab.cpu()[:, None].expand_as(mask)[mask])
    return {layer: torch.cat(v).float() for layer, v in out.items()}, torch.cat(labels).long()


# --------------------------------------------------------------------------- correlational methods


def fit_activations(
    acts: Float[Tensor, "n d_model"],
    labels: Int[Tensor, " n"],
    method: str = "mean_diff",
    *,
    seed: int = 0,
) -> Float[Tensor, " d_model"]:
    """Fit a unit direction to labelled activations (every method but ``das``, which needs a model).

    The result is signed so that label-1 rows project higher than label-0 rows.
    """
    if method == "das":
        raise ValueError("method='das' needs the model: use mechlens.directions.fit(model, ds, 'das', layer)")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; choose one of {METHODS}")
    X, y = check_activations(acts, labels)
    X, y = X.float().cpu(), y.long().cpu()
    if set(y.unique().tolist()) != {0, 1}:
        raise ValueError(f"labels must contain both classes 0 and 1, got {sorted(set(y.tolist()))}")
    if method == "mean_diff":
        v = X[y == 1].mean(0) - X[y == 0].mean(0)
    elif method == "kmeans":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(X.numpy())
        c = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
        v = c[1] - c[0]
    elif method == "logistic":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(max_iter=5000, random_state=seed).fit(X.numpy(), y.numpy())
        v = torch.as_tensor(clf.coef_[0], dtype=torch.float32)
    else:  # pca
        from sklearn.decomposition import PCA

        pca = PCA(n_components=1, random_state=seed).fit(X.numpy())
        v = torch.as_tensor(pca.components_[0], dtype=torch.float32)
    norm = v.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError(f"method={method!r} gave a zero vector: the two classes' activations are identical")
    return _sign_to_labels(v / norm, X, y)


def random_directions(d_model: int, n: int, *, seed: int = 0) -> Float[Tensor, "n d_model"]:
    """``n`` seeded random unit vectors (the baseline for every direction)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d_model, generator=g)
    return v / v.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------- DAS


def _directional_hook(
    clean: Float[Tensor, "batch pos d_model"],
    dirs: Float[Tensor, "batch d_model"],
    mask: Bool[Tensor, "batch pos"],
):
    """Hook that sets the component of ``h`` along each row's direction to the clean one:
    h <- h + d d^T (h_clean - h), only where ``mask`` is true."""

    def hook(h: Tensor, hook: Any = None) -> Tensor:
        at = slice(-h.shape[1], None)  # h may hold the last positions only (run_grid's from_position)
        d = dirs.to(h.device, h.dtype)
        coef = torch.einsum("bpd,bd->bp", clean[:, at].to(h.device, h.dtype) - h, d) * mask[:, at].to(h.device, h.dtype)
        return h + coef[..., None] * d[:, None, :]

    return hook


def _fit_das(
    model: Any,
    ds: ContrastDataset,
    layer: int,
    site: str,
    *,
    patch_position: Any,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    init: Tensor | None = None,
    progress: bool = True,
    rows: int | None = None,
    backend: str = "auto",
) -> tuple[Tensor, list[float]]:
    """Train a unit direction so that patching along it (clean -> corrupt) maximises the
    clean-answer logit difference of the corrupt run. Returns (unsigned vector, loss curve).
    ``batch_size`` is pairs per Adam step; ``rows`` sequences per pass of the caching runs.
    Each step runs only blocks ``layer..n-1`` on the fast backend (:func:`mechlens.engine.train_forward`)."""
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ValueError(f"DAS needs epochs >= 1, lr > 0 and batch_size >= 1; got {epochs}, {lr}, {batch_size}")
    name = hook_name(layer, site)
    dev = model_device(model)
    stop = layer + 1 if layer + 1 < model.cfg.n_layers else None
    clean_acts, _ = cache_batched(model, ds.clean_tokens, [name], batch_size=rows, stop_at_layer=stop)
    clean_acts = clean_acts[name]
    mask = ds.position_mask(patch_position)
    forward = train_forward(model, ds.corrupt_tokens, start_layer=layer, backend=backend, batch_size=rows)
    g = torch.Generator().manual_seed(seed)
    start = init.detach().float().clone() if init is not None else torch.randn(model.cfg.d_model, generator=g)
    param = torch.nn.Parameter((start / start.norm()).to(dev))
    opt = torch.optim.Adam([param], lr=lr)
    losses: list[float] = []
    # equal-sized minibatches, so no step runs on a tiny remainder
    n_batches = math.ceil(ds.batch / batch_size)
    steps = epochs * n_batches
    bar = progress_bar(steps, progress, f"DAS layer {layer}")
    with _frozen(model), torch.enable_grad():
        for _ in range(epochs):
            order = torch.randperm(ds.batch, generator=g)
            for idx in torch.tensor_split(order, n_batches):
                d = param / param.norm()
                hook = _directional_hook(clean_acts[idx], d.expand(len(idx), -1), mask[idx])
                logits = forward(idx, [(name, hook)])
                loss = -logit_diff(logits, ds.answers[idx].to(logits.device)).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    param /= param.norm()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return param.detach().cpu().float(), losses


# --------------------------------------------------------------------------- fit


def fit(
    model: Any,
    ds: ContrastDataset,
    method: str,
    layer: int,
    *,
    position: Any = "ADJ",
    site: str = "resid_pre",
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
    das: dict[str, Any] | None = None,
    acts: tuple[Float[Tensor, "n d_model"], Int[Tensor, " n"]] | None = None,
    backend: str = "auto",
) -> Direction:
    """Fit a sentiment direction at one layer.

    Args:
        model: a mechlens/TransformerLens model.
        ds: a contrast dataset with 0/1 labels (clean prompts labelled, corrupt prompts take
            the opposite label).
        method: one of ``mean_diff``, ``kmeans``, ``logistic``, ``pca``, ``das``.
        layer: the layer (negative counts from the end).
        position: the positions whose activations are fitted, together (a name, a list of
            names, or ``"all"``; :meth:`ContrastDataset.position_mask`). For ``das`` it is
            where the sign is fixed.
        site: ``resid_pre`` (default), ``resid_mid`` or ``resid_post``.
        seed: seeds k-means, the probe, PCA and DAS's random start and minibatch order.
        batch_size: sequences per forward pass when collecting activations (default ``mechlens.engine.DEFAULT_BATCH_SIZE``).
        progress: show DAS's progress bar.
        das: DAS options overriding ``DAS_DEFAULTS``: ``epochs``, ``lr``, ``batch_size``
            (pairs per Adam step), ``patch_position`` (where the training patch is applied:
            ``"position"``, the default, is the fit position as in Tigges et al.; ``"all"`` is
            every position; or another position set), ``init`` (a starting vector; default
            a seeded random vector).
        acts: precomputed ``(activations, labels)`` from :func:`collect_activations` for
            this layer, to skip the forward passes (the evaluation sweep uses it).
        backend: DAS's training passes: ``"auto"`` (default: ``"fast"`` on a
            TransformerBridge, which runs only the blocks from ``layer`` on), ``"fast"`` or
            ``"hooks"`` (full passes); the same numbers up to float rounding.

    Returns:
        A :class:`Direction` (unit vector pointing towards label 1).
    """
    ds = check_dataset(ds, model)
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; choose one of {METHODS}")
    _check_site(site)
    layer = check_layer(model, layer)
    check_binary_labels(ds)
    check_batch_size(batch_size)
    _check_position(ds, position)
    resolve_backend(model, backend)
    if acts is None:
        all_acts, y = collect_activations(model, ds, layer, position=position, site=site, batch_size=batch_size)
        X = all_acts[layer]
    else:
        if not (isinstance(acts, (tuple, list)) and len(acts) == 2):
            raise TypeError("acts must be an (activations [n, d_model], labels [n]) pair from collect_activations")
        X, y = check_activations(*acts, d_model=model.cfg.d_model)
    meta: dict[str, Any] = {"n_train": int(X.shape[0])}
    if method == "das":
        opts = dict(DAS_DEFAULTS)
        unknown = set(das or {}) - set(DAS_DEFAULTS) - {"init"}
        if unknown:
            raise ValueError(f"das options {sorted(unknown)} are unknown; use {sorted(DAS_DEFAULTS) + ['init']}")
        opts.update(das or {})
        if isinstance(opts["patch_position"], str) and opts["patch_position"] == "position":
            opts["patch_position"] = position
        _check_position(ds, opts["patch_position"], what="das['patch_position']")
        init = opts.pop("init", None)
        v, losses = _fit_das(model, ds, layer, site, seed=seed, init=init, progress=progress, rows=batch_size,
                             backend=backend, **opts)
        v = _sign_to_labels(v, X, y)
        meta.update(das={k: v_ for k, v_ in opts.items()}, das_losses=losses)
    else:
        v = fit_activations(X, y, method, seed=seed)
    meta["train_separation"] = _separation(v, X, y)
    return Direction(
        vector=v.float().cpu(),
        method=method,
        layer=layer,
        site=site,
        position=ds.position_label(position),
        **provenance(model, ds),
        meta=meta,
    )
