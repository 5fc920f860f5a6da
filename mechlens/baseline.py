"""Baseline behaviour of a model on the sentiment contrast datasets.

Before any patching, check that the model does the task: on each dataset, the mean logit
difference on clean prompts (positive = right answer, for either sentiment), on corrupt
prompts (measured with the clean prompts' answers, so it should be negative), and the
centred accuracy (the classifier bias removed, as in Tigges et al.).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from mechlens import metrics
from mechlens.data.contrast import ContrastDataset
from mechlens.engine import logit_diff_metric, progress_iter, run_grid
from mechlens.models import model_name
from mechlens.results import Result, markdown_table
from mechlens.validate import check_batch_size, check_dataset, check_token_ids

__all__ = ["BaselineResult", "baseline", "run_logit_diffs", "default_datasets"]


def run_logit_diffs(
    model: Any, tokens: torch.Tensor, answers: torch.Tensor, *, batch_size: int | None = None
) -> torch.Tensor:
    """Per-example logit differences of ``model`` on ``tokens``, in batches, without grad."""
    check_batch_size(batch_size)
    tokens = check_token_ids(model, tokens, "tokens")
    return run_grid(model, tokens, logit_diff_metric(answers), batch_size=batch_size)[0]


@dataclass
class BaselineResult(Result):
    """Clean/corrupt logit differences per dataset (per example kept)."""

    datasets: list[str]
    clean: dict[str, torch.Tensor] = field(default_factory=dict)
    corrupt: dict[str, torch.Tensor] = field(default_factory=dict)
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dataframe(self) -> pd.DataFrame:
        rows = []
        for name in self.datasets:
            c, k, lab = self.clean[name], self.corrupt[name], self.labels[name]
            pos, neg = lab == 1, lab == 0
            rows.append(
                {
                    "dataset": name,
                    "n": len(c),
                    "clean_ld": float(c.mean()),
                    "corrupt_ld": float(k.mean()),
                    "clean_ld_positive": float(c[pos].mean()) if pos.any() else float("nan"),
                    "clean_ld_negative": float(c[neg].mean()) if neg.any() else float("nan"),
                    "bias": metrics.centre(c, lab)[1],
                    "clean_acc_raw": metrics.accuracy(c, centred=False),
                    "clean_acc_centred": metrics.accuracy(c, lab),
                    "corrupt_acc_centred": metrics.accuracy(k, lab),
                }
            )
        return pd.DataFrame(rows)

    def _summary_lines(self) -> list[str]:
        return [
            f"{r.dataset}: n={r.n}, clean LD {r.clean_ld:+.3f}, corrupt LD {r.corrupt_ld:+.3f}, "
            f"centred accuracy {r.clean_acc_centred:.3f}"
            for r in self.to_dataframe().itertuples()
        ]

    def to_markdown(self) -> str:
        df = self.to_dataframe()
        head = (
            f"# Baseline logit differences: {self.model_name}\n\n"
            "Logit difference = logit(correct) - logit(incorrect) at the final token, averaged "
            "over answer pairs; corrupt prompts are scored with the clean prompt's answers. "
            "Accuracy is centred (classifier bias removed) unless marked raw.\n\n"
        )
        return head + markdown_table(df) + "\n"

    def plot(self):
        from mechlens.viz.baseline import plot_baseline

        return plot_baseline(self)


def default_datasets(model: Any) -> dict[str, ContrastDataset]:
    from mechlens.data import toy_mood_story, toy_movie_review

    out = {
        "toy_movie_review/train": toy_movie_review(model, "train"),
        "toy_movie_review/test": toy_movie_review(model, "test"),
    }
    try:
        out["toy_mood_story"] = toy_mood_story(model)
    except ValueError as exc:  # its names must be single tokens; say so in the report
        warnings.warn(f"toy_mood_story left out of the baseline: {exc}", stacklevel=2)
    return out


def baseline(
    model: Any,
    datasets: dict[str, ContrastDataset] | Sequence[ContrastDataset] | None = None,
    *,
    batch_size: int | None = None,
    progress: bool = True,
) -> BaselineResult:
    """Clean and corrupt logit differences and accuracies on each dataset."""
    if datasets is None:
        datasets = default_datasets(model)
    if not isinstance(datasets, dict):
        datasets = {ds.name: ds for ds in datasets}
    if not datasets:
        raise ValueError("datasets is empty: give at least one ContrastDataset")
    check_batch_size(batch_size)
    for name, ds in datasets.items():
        check_dataset(ds, model, f"datasets[{name!r}]")
    res = BaselineResult(model_name=model_name(model), datasets=list(datasets))
    for name, ds in progress_iter(datasets.items(), progress, "baseline", leave=True):
        res.clean[name] = run_logit_diffs(model, ds.clean_tokens, ds.answers, batch_size=batch_size)
        res.corrupt[name] = run_logit_diffs(model, ds.corrupt_tokens, ds.answers, batch_size=batch_size)
        res.labels[name] = ds.labels.cpu()
        res.meta[name] = {k: v for k, v in ds.meta.items() if k in ("dropped", "n_dropped", "answer_pairs")}
    return res
