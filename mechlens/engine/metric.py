"""The per-example metric of a patched run, and the dataset check every method starts with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechlens.engine.batching import batches, chunks, rows_per_pass
from mechlens.metrics import fraction_recovered, logit_diff
from mechlens.models import model_device
from mechlens.validate import check_dataset

__all__ = ["METRICS", "MODES", "PatchMetric", "check_mode", "prepare_dataset"]


#: which run is edited: denoise = run corrupt, patch in clean; noise = run clean, patch in corrupt
MODES = ("denoise", "noise")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(
            f"mode={mode!r}: choose 'denoise' (run the corrupt prompts, patch in clean activations) "
            "or 'noise' (run the clean prompts, patch in corrupt activations)"
        )
    return mode


def prepare_dataset(model: Any, ds: Any, what: str = "ds") -> Any:
    """Check a ContrastDataset against the model (``validate.check_dataset``) and move it
    to the model's device."""
    return check_dataset(ds, model, what).to(model_device(model))


METRICS = ("fraction_recovered", "logit_diff")


class PatchMetric:
    """The per-example metric of a patched run.

    - ``"logit_diff"``: the logit difference (correct - incorrect for the clean prompt).
    - ``"fraction_recovered"``: ``(LD_patched[b] - LD_corrupt[b]) / (mean LD_clean - mean
      LD_corrupt)``. Its mean over examples is exactly the paper's
      ``fraction_recovered(mean LD_patched, mean LD_clean, mean LD_corrupt)``; subtracting
      each example's own corrupt value makes the per-example numbers paired (smaller
      standard errors) without changing the mean.
    - a callable ``metric(logits, ds) -> [batch]``, called with the logits ``[batch, pos,
      vocab]`` of one patched copy of the dataset.

    Rows are stacked copies of the dataset: row ``k * batch + b`` is example ``b``.
    """

    def __init__(
        self,
        metric: str | Callable[..., Tensor],
        ds: Any,
        clean_logits: Tensor | None,
        corrupt_logits: Tensor | None,
        *,
        means: tuple[Tensor, Tensor] | None = None,
    ):
        self.ds = ds
        self.batch = ds.batch
        # the mean clean and corrupt logit differences fraction_recovered divides by: of ds,
        # or of the whole dataset when ds is one chunk of it (a sweep split to bound memory)
        self.means = None if means is None else (means[0].detach().float(), means[1].detach().float())
        if callable(metric):
            self.fn = metric
            self.name = getattr(metric, "__name__", "custom")
            self.output = "all"
        elif metric in METRICS:
            self.fn = None
            self.name = metric
            self.output = "last"
        else:
            raise ValueError(f"metric={metric!r}: choose one of {list(METRICS)} or pass a callable(logits, ds)")
        if clean_logits is None or corrupt_logits is None:
            return  # PatchMetric.measured fills in the rest batch by batch
        self.clean_logits, self.corrupt_logits = clean_logits.detach(), corrupt_logits.detach()
        self.ld_clean = logit_diff(clean_logits, ds.answers).detach()
        self.ld_corrupt = logit_diff(corrupt_logits, ds.answers).detach()
        self._check_contrast()
        self.baselines = {
            "clean": self(clean_logits).detach(),
            "corrupt": self(corrupt_logits).detach(),
        }

    def _check_contrast(self) -> None:
        if self.name == "fraction_recovered":
            # raises a clear error when clean and corrupt do not differ
            clean, corrupt = self._means(self.ld_clean.device)
            fraction_recovered(clean, clean, corrupt)

    @classmethod
    def measured(
        cls,
        model: Any,
        ds: Any,
        metric: str | Callable[..., Tensor],
        *,
        batch_size: int | None = None,
    ) -> PatchMetric:
        """The metric with its clean and corrupt baselines measured in passes of ``batch_size``
        sequences, keeping no logits (``clean_logits`` / ``corrupt_logits`` are ``None``)."""
        pm = cls(metric, ds, None, None)
        pm.clean_logits = pm.corrupt_logits = None
        pm.means = None
        ld = {"clean": [], "corrupt": []}
        vals: dict[str, list[Tensor]] = {"clean": [], "corrupt": []}
        with torch.no_grad():
            for sl in batches(ds.batch, batch_size):
                sub = ds[list(range(sl.start, sl.stop))]
                for which in ("clean", "corrupt"):
                    logits = model(getattr(sub, f"{which}_tokens"))
                    ld[which].append(logit_diff(logits, sub.answers).detach())
                    if pm.fn is not None:
                        vals[which].append(pm._custom(logits, sub))
                    del logits
        pm.ld_clean, pm.ld_corrupt = torch.cat(ld["clean"]), torch.cat(ld["corrupt"])
        pm._check_contrast()
        if pm.fn is not None:
            pm.baselines = {k: torch.cat(v) for k, v in vals.items()}
        else:
            pm.baselines = {"clean": pm.from_ld(pm.ld_clean), "corrupt": pm.from_ld(pm.ld_corrupt)}
        return pm

    @classmethod
    def example_parts(
        cls, model: Any, ds: Any, metric: str | Callable[..., Tensor], batch_size: int | None
    ) -> tuple[list[range], tuple[Tensor, Tensor] | None]:
        """How a sweep whose base run holds the clean *and* the corrupt prompts splits ``ds``
        so that no pass holds more than ``batch_size`` sequences: ``(chunks of examples,
        means)``. With one chunk ``means`` is ``None``; with several it is the whole
        dataset's mean clean and corrupt logit differences, which every chunk's
        ``PatchMetric(..., means=means)`` divides by, so the numbers equal one big run's."""
        half = max(1, rows_per_pass(batch_size) // 2)
        if ds.batch <= half:
            return [range(ds.batch)], None
        if callable(metric):
            cls(metric, ds, None, None)  # checks the metric before any work
        full = cls.measured(model, ds, "logit_diff", batch_size=batch_size)
        return chunks(ds.batch, half), (full.ld_clean.mean(), full.ld_corrupt.mean())

    def _custom(self, logits: Tensor, sub: Any) -> Tensor:
        assert self.fn is not None
        out = torch.as_tensor(self.fn(logits, sub))
        if out.shape != (sub.batch,):
            raise ValueError(
                f"metric {self.name!r} must return one value per example, shape ({sub.batch},), got {tuple(out.shape)}"
            )
        return out.float()

    def on_rows(self, logits: Float[Tensor, "rows pos vocab"], examples: Tensor) -> Float[Tensor, " rows"]:
        """The metric of rows that are copies of some examples: row ``r`` is example
        ``examples[r]`` (the engine's row-indexed metric interface)."""
        examples = examples.to(self.ds.answers.device)
        if self.fn is None:
            ld = logit_diff(logits, self.ds.answers[examples])
            if self.name == "logit_diff":
                return ld
            clean, corrupt = self._means(ld.device)
            return fraction_recovered(ld - self.ld_corrupt.to(ld.device)[examples.to(ld.device)] + corrupt, clean,
                                      corrupt)
        # a custom metric sees one copy of a sub-dataset at a time: rows come in runs of copies
        outs, start = [], 0
        while start < len(examples):
            stop = start + 1
            while stop < len(examples) and examples[stop] != examples[start]:
                stop += 1
            sub = self.ds[examples[start:stop].tolist()]
            outs.append(self._custom(logits[start:stop], sub))
            start = stop
        return torch.cat(outs)

    def __call__(self, logits: Float[Tensor, "rows pos vocab"]) -> Float[Tensor, " rows"]:
        rows = logits.shape[0]
        if rows % self.batch:
            raise ValueError(f"{rows} rows is not a whole number of copies of the {self.batch} examples")
        reps = rows // self.batch
        if self.fn is not None:
            outs = []
            for k in range(reps):
                out = torch.as_tensor(self.fn(logits[k * self.batch : (k + 1) * self.batch], self.ds))
                if out.shape != (self.batch,):
                    raise ValueError(
                        f"metric {self.name!r} must return one value per example, shape ({self.batch},), "
                        f"got {tuple(out.shape)}"
                    )
                outs.append(out.float())
            return torch.cat(outs)
        return self.from_ld(logit_diff(logits, self.ds.answers).view(reps, self.batch)).reshape(-1)

    def from_ld(self, ld: Float[Tensor, "*cells batch"]) -> Float[Tensor, "*cells batch"]:
        """A built-in metric from per-example logit differences (last axis = examples)."""
        if self.fn is not None:
            raise TypeError("from_ld only applies to the built-in metrics")
        if self.name == "logit_diff":
            return ld
        clean, corrupt = self._means(ld.device)
        return fraction_recovered(ld - self.ld_corrupt.to(ld.device) + corrupt, clean, corrupt)

    def _means(self, device: Any) -> tuple[Tensor, Tensor]:
        if self.means is not None:
            return self.means[0].to(device), self.means[1].to(device)
        return self.ld_clean.to(device).mean(), self.ld_corrupt.to(device).mean()
