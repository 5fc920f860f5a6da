"""The package surface: subpackages reachable from ``import mechlens``, the model contract."""

import subprocess
import sys

import pytest
import torch

import mechlens as ml
from mechlens.model_protocol import TransformerLensModel, check_model, is_bridge, qkv_input_hook


@pytest.mark.parametrize("name", ["patching", "directions", "circuits", "steering", "engine", "data", "viz",
                                  "metrics", "models", "results", "ablation", "lens", "dit", "validate", "scale"])
def test_subpackages_reachable_after_import_mechlens(name):
    mod = getattr(ml, name)
    assert mod.__name__ == f"mechlens.{name}"
    assert name in dir(ml)


def test_lazy_attributes_work_in_a_fresh_interpreter():
    code = "import mechlens as ml; print(ml.patching.activation_patch.__name__, ml.directions.fit.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["activation_patch", "fit"]


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'patchng'"):
        ml.patchng  # noqa: B018


def test_models_satisfy_the_contract(tiny_gpt2):
    assert isinstance(tiny_gpt2, TransformerLensModel)
    assert check_model(tiny_gpt2) is tiny_gpt2
    assert is_bridge(tiny_gpt2)
    assert qkv_input_hook(tiny_gpt2, 1, "k") == "blocks.1.attn.hook_k_input"


def test_unsupported_model_gets_a_clear_error(tiny_gpt2):
    from mechlens.data import toy_movie_review
    from mechlens.patching import activation_patch

    ds = toy_movie_review(tiny_gpt2, "train")[:2]
    from mechlens.patching import attribution_patch, path_patch

    for method in (activation_patch, attribution_patch):
        with pytest.raises(TypeError, match=r"needs a TransformerLens model.*this Linear has no cfg, blocks, to_tokens"):
            method(torch.nn.Linear(2, 2), ds, "resid_pre", progress=False)
    with pytest.raises(TypeError, match=r"needs a TransformerLens model.*this Linear has no cfg, blocks, to_tokens"):
        path_patch(torch.nn.Linear(2, 2), ds, progress=False)


def test_tiny_hooked_needs_transformer_lens_3():
    from mechlens.model_protocol import has_hooked_transformer

    if has_hooked_transformer():
        pytest.skip("TransformerLens 3.x: tests/test_hooked_transformer.py covers it")
    with pytest.raises(ImportError, match=r"HookedTransformer was removed in 4.0.*setup.sh --tl39"):
        ml.models.tiny("gpt2", model_class="hooked")
