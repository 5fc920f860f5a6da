"""Metrics, with exactly the definitions of Tigges et al. 2023 (the authors' circuit_analysis.py).

- ``logit_diff``: at the final position, logit(correct) - logit(incorrect) for each answer
  pair; correct and incorrect logits are each averaged over the pairs, then subtracted.
  Answers are ordered (correct, incorrect) *for the clean prompt*, so on a clean run the
  value is positive when the model is right, whatever the sentiment.
- ``fraction_recovered``: (x - corrupt) / (clean - corrupt); 1 = clean behaviour restored,
  0 = as corrupt. Not clipped. (The paper reports it x100 as "% logit difference recovered".)
- ``centre``: a model used as a binary classifier is biased (SmolLM2 prefers positive
  words); the bias is the mean of the logit differences signed by label, and it is removed
  with the label's sign.
- ``accuracy``: the fraction of (centred, by default) logit differences above zero.
- ``logit_flip``: (acc_patched - acc_corrupt) / (acc_clean - acc_corrupt), each accuracy on
  centred logit differences.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = [
    "final_logits",
    "logit_diff",
    "mean_logit_diff",
    "fraction_recovered",
    "centre",
    "accuracy",
    "logit_flip",
]


def final_logits(logits: Float[Tensor, "batch *pos vocab"]) -> Float[Tensor, "batch vocab"]:
    return logits[:, -1, :] if logits.ndim == 3 else logits


def logit_diff(
    logits: Float[Tensor, "batch *pos vocab"], answers: Int[Tensor, "batch *n_pairs 2"]
) -> Float[Tensor, " batch"]:
    """Per-example logit difference at the final position, averaged over answer pairs."""
    last = final_logits(logits)
    if answers.ndim == 2:
        answers = answers[:, None, :]
    answers = answers.to(last.device)  # logits come from the last layer's device on a split model
    if answers.shape[0] != last.shape[0]:
        # a batch stacked from several copies of the dataset (patching sweeps)
        reps = last.shape[0] // answers.shape[0]
        if reps * answers.shape[0] != last.shape[0]:
            raise ValueError(f"logits batch {last.shape[0]} is not a multiple of answers batch {answers.shape[0]}")
        answers = answers.repeat(reps, 1, 1)
    picked = last.gather(-1, answers.flatten(1)).view(answers.shape)
    return picked[..., 0].mean(-1) - picked[..., 1].mean(-1)


def mean_logit_diff(logits: Float[Tensor, "batch *pos vocab"], answers: Int[Tensor, "batch *n_pairs 2"]) -> Tensor:
    return logit_diff(logits, answers).mean()


def fraction_recovered(x: Tensor | float, clean: Tensor | float, corrupt: Tensor | float) -> Tensor:
    """(x - corrupt) / (clean - corrupt), not clipped."""
    x, clean, corrupt = (torch.as_tensor(v, dtype=torch.float32) for v in (x, clean, corrupt))
    denom = clean - corrupt
    if torch.any(denom == 0):
        raise ValueError(
            "clean and corrupt metric values are equal, so the fraction recovered is undefined; "
            "check that the corrupt prompts really change the answer"
        )
    return (x - corrupt) / denom


def _as_bool(labels: Tensor) -> Bool[Tensor, " batch"]:
    labels = torch.as_tensor(labels)
    if labels.dtype != torch.bool:
        values = set(labels.unique().tolist())
        if not values <= {0, 1}:
            raise ValueError(f"centring needs binary labels (0/1), got values {sorted(values)}")
        labels = labels.bool()
    return labels


def centre(ld: Float[Tensor, " batch"], labels: Tensor) -> tuple[Float[Tensor, " batch"], float]:
    """Remove the classifier bias: returns (centred logit diffs, bias)."""
    pos = _as_bool(labels).to(ld.device)
    bias = torch.where(pos, ld, -ld).mean()
    return ld - torch.where(pos, bias, -bias), float(bias.detach())


def accuracy(ld: Float[Tensor, " batch"], labels: Tensor | None = None, *, centred: bool = True) -> float:
    """Fraction of logit differences above zero (after centring when ``labels`` are given)."""
    ld = ld.detach()  # a count has no gradient: no "requires_grad to a scalar" warning
    if centred:
        if labels is None:
            raise ValueError("accuracy(centred=True) needs labels; pass centred=False for raw accuracy")
        ld, _ = centre(ld, labels)
    return float((ld > 0).float().mean())


def logit_flip(
    patched: Float[Tensor, " batch"],
    clean: Float[Tensor, " batch"],
    corrupt: Float[Tensor, " batch"],
    labels: Tensor,
) -> float:
    """Logit flip score: (acc_patched - acc_corrupt) / (acc_clean - acc_corrupt), centred."""
    a_p, a_c, a_k = (accuracy(v, labels) for v in (patched, clean, corrupt))
    if a_c == a_k:
        raise ValueError("clean and corrupt accuracies are equal, so the logit flip is undefined")
    return (a_p - a_k) / (a_c - a_k)
