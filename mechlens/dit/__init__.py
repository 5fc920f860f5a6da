"""Diff interpretation tuning (DIT): teach a model to say what a weight difference does.

See :mod:`mechlens.dit.core` for the method and ``docs/dit.md`` for a measured run::

    from mechlens import dit
    result, family, adapter = dit.run(model, n_diffs=160, n_heldout=40)
    print(result.to_dataframe()); result.plot()
"""

from mechlens.dit.core import (
    METHODS,
    DiffFamily,
    DITAdapter,
    DITResult,
    evaluate,
    hf_copy,
    make_diffs,
    run,
    score_answer,
    split,
    train_adapter,
)
from mechlens.dit.data import QUESTIONS, TOPICS, Behaviour, make_behaviours

__all__ = [
    "METHODS",
    "QUESTIONS",
    "TOPICS",
    "Behaviour",
    "DITAdapter",
    "DITResult",
    "DiffFamily",
    "evaluate",
    "hf_copy",
    "make_behaviours",
    "make_diffs",
    "run",
    "score_answer",
    "split",
    "train_adapter",
]
