"""One vocabulary: study-file keys, docs/api.md names and method arguments agree, and study
choices are the methods' own registries."""

import importlib
import inspect
import re
from pathlib import Path

import pytest

from mechlens.study import ANALYSES, COMMON

ROOT = Path(__file__).resolve().parents[1]

# analysis -> the method(s) whose arguments its keys are
METHOD_OF = {
    "baseline": ["mechlens.baseline:baseline"],
    "activation_patching": ["mechlens.patching.activation:activation_patch"],
    "attribution_patching": ["mechlens.patching.attribution:attribution_patch"],
    "ablation": ["mechlens.ablation:ablate_sweep"],
    "knockout_curve": ["mechlens.ablation:knockout_curve"],
    "logit_lens": ["mechlens.lens:logit_lens"],
    "direct_logit_attribution": ["mechlens.lens:direct_logit_attribution"],
    "edge_attribution_patching": ["mechlens.circuits.eap:edge_attribution_patch",
                                  "mechlens.circuits.eap:eap_faithfulness"],
    "path_patching": ["mechlens.patching.path:path_patch"],
    "directions": ["mechlens.directions.evaluate:evaluate"],
    "steering": ["mechlens.steering.steerability:steerability", "mechlens.steering.steerability:prompt_baseline",
                 "mechlens.steering.steerability:at_equal_effect", "mechlens.directions.fit:fit"],
    "eap_ig": ["mechlens.circuits.eap:eap_ig"],
    "faithfulness_curve": ["mechlens.circuits.faithfulness:faithfulness_curve", "mechlens.circuits.eap:eap_ig"],
    "circuit_stability": ["mechlens.circuits.stability:circuit_stability"],
}

# keys a study file has that are not a method argument, and why
STUDY_ONLY = {
    "logit_lens": {"top_tokens"},           # also runs lens.top_tokens(k=...)
    "edge_attribution_patching": {"faithfulness"},  # eap_faithfulness(ks=...)
    "directions": {"test_fraction"},        # splits the dataset before evaluate(train, test)
    "activation_patching": {"site"},        # a list of sites runs one sweep each
    "attribution_patching": {"site"},
    "steering": {"test_fraction"},          # splits the dataset into fit and test prompts
    "faithfulness_curve": {"methods"},      # which scorings get a curve (one call each)
}


def _fn(path):
    mod, _, name = path.partition(":")
    return getattr(importlib.import_module(mod), name)


def _vocabulary():
    text = (ROOT / "docs" / "api.md").read_text()
    table = text[text.index("| argument |"):].split("\n\n", 1)[0]  # the vocabulary table
    return set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))


def test_every_analysis_has_its_method():
    for name in ANALYSES:
        assert name in METHOD_OF or name in EXTRA_METHODS, (
            f"study analysis {name!r}: add its method to METHOD_OF in tests/test_vocabulary.py")


EXTRA_METHODS: dict[str, list[str]] = {}


@pytest.mark.parametrize("analysis", sorted(ANALYSES))
def test_study_keys_are_method_arguments(analysis):
    methods = METHOD_OF.get(analysis) or EXTRA_METHODS.get(analysis)
    if methods is None:
        pytest.fail(f"no method recorded for {analysis!r}")
    params = set()
    for m in methods:
        params |= set(inspect.signature(_fn(m)).parameters)
    keys = set(ANALYSES[analysis]) - STUDY_ONLY.get(analysis, set())
    common = {k for k in COMMON if k in ("batch_size",)}
    missing = sorted((keys | common) - params)
    assert not missing, f"study analysis {analysis!r} has keys its method does not take: {missing}"


def test_vocabulary_names_are_method_arguments():
    """Every argument named in docs/api.md's vocabulary table is an argument of some method,
    and every study key that is a vocabulary name keeps that name in its method."""
    vocab = _vocabulary()
    assert {"layers", "positions", "position", "metric", "mode", "how", "batch_size", "backend", "seed"} <= vocab
    params = set()
    for methods in list(METHOD_OF.values()) + list(EXTRA_METHODS.values()):
        for m in methods:
            params |= set(inspect.signature(_fn(m)).parameters)
    from mechlens.steering import evaluate_steering

    params |= set(inspect.signature(evaluate_steering).parameters)
    unused = sorted(vocab - params - {"model", "ds", "workers", "layer", "coeff", "site", "heads"})
    assert not unused, f"docs/api.md names arguments no method takes: {unused}"


def test_study_choices_are_the_method_registries():
    from mechlens.ablation import COMPONENTS, HOWS, RANKED_COMPONENTS
    from mechlens.circuits.eap import EAP_METHODS, INTERPOLATIONS
    from mechlens.circuits.faithfulness import LEVELS
    from mechlens.directions import ABLATION_MODES
    from mechlens.engine import BACKENDS, METRICS, MODES
    from mechlens.lens import GROUPS

    assert ANALYSES["ablation"]["component"].choices == COMPONENTS
    assert ANALYSES["ablation"]["how"].choices == HOWS == ABLATION_MODES
    assert ANALYSES["knockout_curve"]["component"].choices == RANKED_COMPONENTS
    assert ANALYSES["activation_patching"]["metric"].choices == METRICS
    assert ANALYSES["activation_patching"]["mode"].choices == MODES
    assert ANALYSES["activation_patching"]["backend"].choices == BACKENDS
    assert ANALYSES["direct_logit_attribution"]["group"].choices == GROUPS
    assert ANALYSES["circuit_stability"]["method"].choices == EAP_METHODS
    assert ANALYSES["faithfulness_curve"]["methods"].choices == EAP_METHODS
    assert ANALYSES["faithfulness_curve"]["level"].choices == LEVELS
    assert ANALYSES["eap_ig"]["interpolate"].choices == INTERPOLATIONS


def test_a_renamed_argument_is_caught(monkeypatch):
    """The agreement test fails when a method argument is renamed (a test that cannot fail is
    a defect)."""
    import mechlens.lens as lens

    def logit_lens(model, ds, *, layer_list=None, positions="END", batch_size=None, progress=True):
        raise AssertionError

    monkeypatch.setattr(lens, "logit_lens", logit_lens)
    with pytest.raises(AssertionError, match="does not take"):
        test_study_keys_are_method_arguments("logit_lens")
