"""Steering: contrastive activation addition (activation space) and weight arithmetic.

- :mod:`mechlens.steering.caa`: answer-letter activations of A/B prompts, their PCA view,
  CAA vectors and the ``steer`` context manager.
- :mod:`mechlens.steering.weights`: fine-tuning, task vectors, contrastive weight vectors,
  ``apply_weights``, monitoring a fine-tune against a behaviour vector, update anatomy.
- :mod:`mechlens.steering.evaluate`: how a behaviour's logit difference moves with the
  steering coefficient.
- :mod:`mechlens.steering.steerability`: per-example steerability (slopes, anti-steerable
  fraction), side effects on neutral text (KL, perplexity), comparison at equal effect, a
  prompting baseline, batched steered generation.
"""

from mechlens.steering.caa import (
    SITES,
    AnswerActivations,
    PCAView,
    SteeringVector,
    answer_activations,
    caa_vector,
    pca_view,
    steer,
)
from mechlens.steering.evaluate import SteeringCurve, behaviour_logit_diff, evaluate_steering
from mechlens.steering.steerability import (
    PromptBaseline,
    SideEffects,
    Steerability,
    at_equal_effect,
    generate_steered,
    least_squares_slopes,
    prompt_baseline,
    side_effects,
    steerability,
)
from mechlens.steering.weights import (
    DiffAnatomy,
    MonitorResult,
    WeightMonitor,
    WeightVector,
    apply_weights,
    clone_model,
    contrastive_weight_vector,
    diff_anatomy,
    effective_rank,
    finetune,
    layer_group,
    monitor,
    parameters,
    task_vector,
)

__all__ = [
    "steerability",
    "side_effects",
    "prompt_baseline",
    "least_squares_slopes",
    "generate_steered",
    "at_equal_effect",
    "Steerability",
    "SideEffects",
    "PromptBaseline",
    "SITES",
    "AnswerActivations",
    "DiffAnatomy",
    "MonitorResult",
    "PCAView",
    "SteeringCurve",
    "SteeringVector",
    "WeightMonitor",
    "WeightVector",
    "answer_activations",
    "apply_weights",
    "behaviour_logit_diff",
    "caa_vector",
    "clone_model",
    "contrastive_weight_vector",
    "diff_anatomy",
    "effective_rank",
    "evaluate_steering",
    "finetune",
    "layer_group",
    "monitor",
    "parameters",
    "pca_view",
    "steer",
    "task_vector",
]
