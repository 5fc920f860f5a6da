"""Contrastive activation addition (CAA): read a behaviour direction off A/B answers, add it back.

CAA (Rimsky et al. 2023, "Steering Llama 2 via Contrastive Activation Addition") works in
three steps:

1. **Activations at the answer letter.** A :class:`~mechlens.data.choices.ChoiceDataset`
   holds A/B prompts that end with the chosen letter, two per question: one picks the
   behaviour answer (say, the polite one), one picks the opposite. :func:`answer_activations`
   runs them and keeps the residual stream (or another site) at that last token, for one or
   several layers.
2. **Look before you average.** The vector at a letter token encodes the letter itself as
   well as the behaviour. :func:`pca_view` projects the activations to 2-D per layer, colours
   points by letter, marks them by behaviour, and measures which split dominates with
   silhouette scores (+1: tight separate clusters, 0: no structure). A typical picture: the
   letter split dominates everywhere, and the behaviour split shows up *inside* each letter's
   cluster at some middle layers (``silhouette_within_letter``).
3. **Mean difference and addition.** :func:`caa_vector` is mean(behaviour picked) minus
   mean(opposite picked); since the option order is balanced, the letter cancels. Inside
   ``with steer(model, vec, coeff):`` every forward pass (and ``model.generate``) adds
   ``coeff * vec`` to that layer's residual stream at every position. Positive ``coeff``
   pushes towards the behaviour, negative away from it;
   :func:`mechlens.steering.evaluate_steering` measures how a logit difference moves with
   ``coeff``.

How to read the numbers: ``SteeringVector.norm`` is in residual-stream units; compare it with
the typical residual norm at that layer (``AnswerActivations.mean_norm``) to choose
coefficients. A vector that only encodes the letter gives a flat steering curve, and the
sign of the effect can change with the layer (on smollm2-135m the sentiment CAA vector raises
the ToyMovieReview logit difference from layer 18 on, but lowers it at layers 9-15), so
sweep layers and coefficients with ``evaluate_steering`` before trusting one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechlens.data.choices import ChoiceDataset
from mechlens.engine import padded_iter, progress_iter
from mechlens.engine.sites import STREAM_SITES
from mechlens.hooks import hooked
from mechlens.models import model_name
from mechlens.results import Result
from mechlens.validate import (
    check_batch_size,
    check_choice_dataset,
    check_coefficient,
    check_layers,
    check_vector,
)

__all__ = [
    "SITES",
    "AnswerActivations",
    "PCAView",
    "SteeringVector",
    "answer_activations",
    "pca_view",
    "caa_vector",
    "steer",
]

SITES = STREAM_SITES


def hook_name(layer: int, site: str) -> str:
    if site not in SITES:
        raise ValueError(f"site={site!r} is not one of {SITES}")
    return f"blocks.{layer}.hook_{site}"


def _layers(model: Any, layer: int | Sequence[int]) -> list[int]:
    if layer is None:
        raise ValueError("layer is None: give a layer index or a list of them")
    return check_layers(model, layer, what="layers")


# --------------------------------------------------------------------------- activations


@dataclass
class AnswerActivations(Result):
    """Activations at the answer-letter token: ``acts[layer_i, prompt, d_model]``."""

    acts: Float[Tensor, "layer batch d_model"]
    layers: list[int]
    site: str
    letters: list[str]
    labels: Int[Tensor, " batch"]
    pair: Int[Tensor, " batch"]
    behaviour: str = "behaviour"
    opposite: str = "opposite"

    def at(self, layer: int) -> Float[Tensor, "batch d_model"]:
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not recorded; these activations have {self.layers}")
        return self.acts[self.layers.index(layer)]

    @property
    def mean_norm(self) -> Float[Tensor, " layer"]:
        """Mean L2 norm of the activations per layer (a scale for steering coefficients)."""
        return self.acts.norm(dim=-1).mean(-1)

    def caa_vector(self, layer: int) -> SteeringVector:
        """Mean(behaviour picked) - mean(opposite picked) at ``layer``."""
        x = self.at(layer)
        pos, neg = self.labels == 1, self.labels == 0
        if not pos.any() or not neg.any():
            raise ValueError("caa_vector needs prompts of both kinds (labels 1 and 0)")
        vec = x[pos].mean(0) - x[neg].mean(0)
        return SteeringVector(
            vector=vec,
            layer=layer,
            site=self.site,
            name=f"caa:{self.dataset}:L{layer}",
            behaviour=self.behaviour,
            opposite=self.opposite,
            n=int(pos.sum()),
            model_name=self.model_name,
        )

    def to_dataframe(self) -> Any:
        import pandas as pd

        rows = []
        norms = self.acts.norm(dim=-1)
        for li, layer in enumerate(self.layers):
            for i, (letter, lab, p) in enumerate(zip(self.letters, self.labels.tolist(), self.pair.tolist())):
                rows.append(
                    {
                        "layer": layer,
                        "prompt": i,
                        "pair": p,
                        "letter": letter,
                        "choice": self.behaviour if lab else self.opposite,
                        "norm": float(norms[li, i]),
                    }
                )
        return pd.DataFrame(rows)

    def plot(self) -> Any:
        from mechlens.viz.steering import plot_answer_activations

        return plot_answer_activations(self)


def answer_activations(
    model: Any,
    ds: ChoiceDataset,
    layers: int | Sequence[int],
    *,
    site: str = "resid_post",
    batch_size: int | None = None,
    progress: bool = True,
) -> AnswerActivations:
    """The activation at each prompt's last token (the chosen letter), for one or more layers.

    Args:
        model: a TransformerLens model.
        ds: A/B prompts from :func:`mechlens.data.choices`.
        layers: a layer index or a list of them (one activation set per layer).
        site: ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"`` or ``"mlp_out"``.
        batch_size: sequences per forward pass, right-padded (default ``mechlens.engine.DEFAULT_BATCH_SIZE``).
        progress: show a progress bar.
    """
    check_choice_dataset(ds, model)
    check_batch_size(batch_size)
    layers = _layers(model, layers)
    names = [hook_name(x, site) for x in layers]
    out = torch.zeros(len(layers), len(ds), model.cfg.d_model)
    # No need to run the blocks after the last requested layer.
    stop = max(layers) + 1 if max(layers) + 1 < model.cfg.n_layers else None
    for idx, last, _, cache in padded_iter(model, ds.tokens, names, batch_size=batch_size, progress=progress,
                                           desc="answer activations", stop_at_layer=stop):
        rows = torch.arange(len(idx))
        for li, name in enumerate(names):
            out[li, idx] = cache[name][rows, last.to(cache[name].device)].float().cpu()
    return AnswerActivations(
        acts=out,
        layers=layers,
        site=site,
        letters=list(ds.letters),
        labels=ds.labels.clone(),
        pair=ds.pair.clone(),
        behaviour=ds.behaviour,
        opposite=ds.opposite,
        model_name=model_name(model),
        dataset=ds.name,
    )


# --------------------------------------------------------------------------- PCA view


def _silhouette(x: np.ndarray, labels: np.ndarray, seed: int, max_samples: int) -> float:
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2 or len(x) < 3:
        return float("nan")
    n = min(len(x), max_samples)
    return float(silhouette_score(x, labels, sample_size=n if n < len(x) else None, random_state=seed))


@dataclass
class PCAView(Result):
    """2-D PCA of answer-letter activations per layer, with silhouettes for each split.

    ``silhouette_letter`` / ``silhouette_behaviour``: silhouette of the full-dimensional
    activations grouped by letter / by behaviour (euclidean; in [-1, 1], higher = cleaner
    split). ``silhouette_within_letter``: the behaviour silhouette computed inside each
    letter's cluster, averaged over the two letters. ``dominant``: the split with the higher
    silhouette.
    """

    coords: Float[Tensor, "layer batch 2"]
    explained: Float[Tensor, "layer 2"]
    silhouette_letter: Float[Tensor, " layer"]
    silhouette_behaviour: Float[Tensor, " layer"]
    silhouette_within_letter: Float[Tensor, " layer"]
    layers: list[int]
    letters: list[str]
    labels: Int[Tensor, " batch"]
    behaviour: str = "behaviour"
    opposite: str = "opposite"
    site: str = "resid_post"
    seed: int = 0

    @property
    def dominant(self) -> list[str]:
        return [
            "letter" if sl >= sb else "behaviour"
            for sl, sb in zip(self.silhouette_letter.tolist(), self.silhouette_behaviour.tolist())
        ]

    def layer_table(self) -> Any:
        """One row per layer: explained variance, the three silhouettes, the dominant split."""
        import pandas as pd

        return pd.DataFrame(
            {
                "layer": self.layers,
                "explained_pc1": self.explained[:, 0].tolist(),
                "explained_pc2": self.explained[:, 1].tolist(),
                "silhouette_letter": self.silhouette_letter.tolist(),
                "silhouette_behaviour": self.silhouette_behaviour.tolist(),
                "silhouette_within_letter": self.silhouette_within_letter.tolist(),
                "dominant": self.dominant,
            }
        )

    def to_dataframe(self) -> Any:
        """One row per (layer, prompt): PC1, PC2, letter, choice."""
        import pandas as pd

        rows = []
        for li, layer in enumerate(self.layers):
            for i, (letter, lab) in enumerate(zip(self.letters, self.labels.tolist())):
                rows.append(
                    {
                        "layer": layer,
                        "prompt": i,
                        "letter": letter,
                        "choice": self.behaviour if lab else self.opposite,
                        "pc1": float(self.coords[li, i, 0]),
                        "pc2": float(self.coords[li, i, 1]),
                    }
                )
        return pd.DataFrame(rows)

    def _title(self, li: int) -> str:
        return (
            f"L{self.layers[li]}  sil letter {self.silhouette_letter[li]:.2f}, "
            f"{self.behaviour} {self.silhouette_behaviour[li]:.2f}, "
            f"within {self.silhouette_within_letter[li]:.2f}"
        )

    def plot(self) -> Any:
        """Matplotlib scatter per layer: colour = letter, marker = behaviour."""
        from mechlens.viz.steering import plot_pca_view

        return plot_pca_view(self)

    def plot_interactive(self) -> Any:
        """The same scatter as an interactive plotly figure (one panel per layer)."""
        from mechlens.viz.steering import plot_pca_view_interactive

        return plot_pca_view_interactive(self)


def pca_view(
    acts: AnswerActivations, *, seed: int = 0, max_samples: int = 2000, progress: bool = True
) -> PCAView:
    """2-D PCA per layer (exact SVD, signs fixed by scikit-learn's ``svd_flip``) and silhouettes.

    Args:
        acts: from :func:`answer_activations`.
        seed: used when more than ``max_samples`` points are subsampled for silhouettes, so
            the numbers are reproducible.
        max_samples: silhouettes are O(n^2); above this many prompts they use a seeded sample.
    """
    from sklearn.decomposition import PCA

    if not isinstance(acts, AnswerActivations):
        raise TypeError(f"acts must be AnswerActivations (from answer_activations), not {type(acts).__name__}")
    if acts.acts.shape[1] < 3:
        raise ValueError(f"pca_view needs at least 3 prompts, got {acts.acts.shape[1]}")
    letters = np.array(acts.letters)
    labels = acts.labels.numpy()
    coords, explained, s_let, s_beh, s_within = [], [], [], [], []
    for li in progress_iter(range(len(acts.layers)), progress, "pca view", leave=True):
        x = acts.acts[li].double().numpy()
        pca = PCA(n_components=2, svd_solver="full", random_state=seed)
        coords.append(torch.from_numpy(pca.fit_transform(x)).float())
        explained.append(torch.from_numpy(pca.explained_variance_ratio_).float())
        s_let.append(_silhouette(x, letters, seed, max_samples))
        s_beh.append(_silhouette(x, labels, seed, max_samples))
        within = [
            _silhouette(x[letters == letter], labels[letters == letter], seed, max_samples)
            for letter in ("A", "B")
        ]
        s_within.append(float(np.nanmean(within)) if not all(np.isnan(within)) else float("nan"))
    return PCAView(
        coords=torch.stack(coords),
        explained=torch.stack(explained),
        silhouette_letter=torch.tensor(s_let),
        silhouette_behaviour=torch.tensor(s_beh),
        silhouette_within_letter=torch.tensor(s_within),
        layers=list(acts.layers),
        letters=list(acts.letters),
        labels=acts.labels.clone(),
        behaviour=acts.behaviour,
        opposite=acts.opposite,
        site=acts.site,
        seed=seed,
        model_name=acts.model_name,
        dataset=acts.dataset,
    )


# --------------------------------------------------------------------------- steering


@dataclass
class SteeringVector(Result):
    """A direction to add to the residual stream at ``layer`` (hook ``blocks.{layer}.hook_{site}``)."""

    vector: Float[Tensor, " d_model"]
    layer: int
    site: str = "resid_post"
    name: str = "steering"
    behaviour: str = "behaviour"
    opposite: str = "opposite"
    n: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame({"dim": range(len(self.vector)), "value": self.vector.tolist()})

    def plot(self) -> Any:
        """The vector's components, largest magnitude first."""
        from mechlens.viz.steering import plot_steering_vector

        return plot_steering_vector(self)


def caa_vector(
    model: Any,
    ds: ChoiceDataset,
    layer: int,
    *,
    site: str = "resid_post",
    batch_size: int | None = None,
    progress: bool = True,
) -> SteeringVector:
    """The CAA steering vector: mean activation at the letter when the behaviour answer is
    picked minus when the opposite is picked, at ``layer``/``site``."""
    if not isinstance(layer, int):
        raise TypeError(f"layer must be one int, got {layer!r}; use answer_activations for several")
    acts = answer_activations(model, ds, layer, site=site, batch_size=batch_size, progress=progress)
    return acts.caa_vector(acts.layers[0])


@contextmanager
def steer(
    model: Any,
    vector: SteeringVector | Float[Tensor, " d_model"],
    coeff: float = 1.0,
    layers: int | Sequence[int] | None = None,
    *,
    site: str | None = None,
) -> Iterator[Any]:
    """``with steer(model, vec, coeff):`` adds ``coeff * vec`` to the activation at every
    position, for forward passes and ``model.generate`` inside the block.

    Args:
        vector: a :class:`SteeringVector` (its layer and site are the defaults) or a
            ``[d_model]`` tensor (then ``layers`` is required).
        coeff: the multiplier; negative steers away from the behaviour.
        layers: layer index or list of them (default: the vector's layer).
        site: hook site (default: the vector's site, else ``"resid_post"``).
    """
    if isinstance(vector, SteeringVector):
        vec = vector.vector
        layers = vector.layer if layers is None else layers
        site = site or vector.site
    elif isinstance(vector, Tensor):
        vec = vector
        if layers is None:
            raise ValueError("steer(vector=<tensor>) needs layers=...; only a SteeringVector knows its layer")
    else:
        raise TypeError(f"vector must be a SteeringVector or a tensor, not {type(vector).__name__}")
    site = site or "resid_post"
    check_vector(vec, "vector", d_model=model.cfg.d_model)
    coeff = check_coefficient(coeff, "coeff")
    delta = coeff * vec.detach()

    def add(act: Tensor, hook: Any) -> Tensor:
        return act + delta.to(act.device, act.dtype)  # the layer's device on a model split over GPUs

    hooks = [(hook_name(x, site), add) for x in _layers(model, layers)]
    with hooked(model, hooks):
        yield model
