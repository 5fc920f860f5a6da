"""The engine: the only code that runs the model.

Every method in mechlens compiles what it does into *configurations* (interventions applied
together in one run of the dataset) plus a *metric*, and asks the engine to run them. The
engine batches (``batch_size`` = sequences per forward pass bounds memory), shows progress,
and picks a backend:

- ``"fast"`` (TransformerBridge, :mod:`mechlens.engine.fast`): a configuration whose earliest
  intervention sits at layer ``L`` starts from the residual stream cached at ``L`` and runs
  only blocks ``L..n-1`` (and only the positions it can change); many configurations share a
  pass, stacked on the batch axis;
- ``"hooks"`` (any model with the TransformerLens hook API, ``HookedTransformer`` included,
  :mod:`mechlens.engine.hooks`): full ``run_with_hooks`` passes, configurations stacked on
  the batch axis.

``backend="auto"`` picks the fast path where it applies and the hooks path elsewhere; both
give the same numbers (tested against each other and against ``transformer_lens.patching``
on every site and architecture).

The package:

- :mod:`~mechlens.engine.batching`: the one batching rule and the one progress helper;
- :mod:`~mechlens.engine.interventions`: interventions as values (replace, add, zero, mean,
  project out / onto, scale) at typed locations (:class:`Location`: site, layer, head,
  positions) and :func:`run_patches`, which runs configurations of them on either backend;
- :mod:`~mechlens.engine.hooks` and :mod:`~mechlens.engine.fast`: the two backends behind one
  runner interface (``run(joins, hooks=..., output=...)``);
- :mod:`~mechlens.engine.grid`: grids of hook interventions (:func:`run_grid`) and the one
  batched caching run (:func:`cache_batched`), and runs of sequences of different lengths
  (:func:`padded_iter`);
- :mod:`~mechlens.engine.grad`: gradient runs (attribution patching, edge attribution);
- :mod:`~mechlens.engine.generate`: batched greedy generation (left padding, KV cache);
- :mod:`~mechlens.engine.metric`: the per-example metric of a patched run, dataset checks;
- :mod:`~mechlens.engine.bridge`: every TransformerBridge internal mechlens uses;
- :mod:`~mechlens.engine.threads`: how many CPU threads torch uses.
"""

from __future__ import annotations

from mechlens.engine.backend import BACKENDS, resolve_backend
from mechlens.engine.batching import (
    DEFAULT_BATCH_SIZE,
    batches,
    chunks,
    copies_per_pass,
    pad_id,
    padded_batches,
    progress_bar,
    progress_iter,
    rows_per_pass,
)
from mechlens.engine.bridge import split_qkv_input
from mechlens.engine.fast import (
    BaseRun,
    SuffixRunner,
    base_run,
    block_runner,
    fast_runner_or_none,
    overhead_tokens,
    plan_passes,
    prefix_kv,
)
from mechlens.engine.generate import generate_batched
from mechlens.engine.grad import GradBatch, grad_run, ig_alphas, interpolate_hook, train_forward
from mechlens.engine.grid import (
    cache_batched,
    cache_iter,
    first_changed_position,
    logit_diff_metric,
    padded_iter,
    run_grid,
)
from mechlens.engine.hooks import (
    Hook,
    HooksRunner,
    Patch,
    cached_run,
    first_block,
    first_true,
    hook_layer,
    patch_mask,
    patch_rows,
    run_with_patches,
    saver,
)
from mechlens.engine.interventions import (
    HOWS,
    Add,
    Intervention,
    Location,
    ProjectOnto,
    ProjectOut,
    Replace,
    Scale,
    Zero,
    patch,
    run_patches,
)
from mechlens.engine.metric import METRICS, MODES, PatchMetric, check_mode, prepare_dataset
from mechlens.model_protocol import is_bridge

__all__ = [
    "BACKENDS", "DEFAULT_BATCH_SIZE", "METRICS", "BaseRun", "Hook", "HooksRunner", "Patch", "PatchMetric",
    "SuffixRunner", "base_run", "batches", "block_runner", "cache_batched", "cached_run", "check_mode", "chunks",
    "copies_per_pass", "hook_layer", "is_bridge", "logit_diff_metric", "overhead_tokens", "pad_id",
    "padded_batches", "padded_iter", "patch_mask", "patch_rows", "plan_passes", "prepare_dataset", "progress_bar",
    "progress_iter", "first_block", "resolve_backend", "rows_per_pass", "run_grid", "run_with_patches", "saver",
    "split_qkv_input", "Location", "Intervention", "Replace", "Zero", "Add", "Scale", "ProjectOut",
    "ProjectOnto", "patch", "run_patches", "cache_iter", "HOWS", "MODES", "generate_batched",
    "GradBatch", "grad_run", "ig_alphas", "interpolate_hook", "train_forward", "first_changed_position", "prefix_kv",
    "first_true", "fast_runner_or_none",
]
