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


def test_every_exported_name_exists():
    """``from mechlens.X import *`` works: each subpackage defines every name its __all__ lists."""
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(ml.__path__, "mechlens."):
        mod = importlib.import_module(info.name)
        missing = [n for n in getattr(mod, "__all__", ()) if not hasattr(mod, n)]
        assert not missing, f"{info.name}.__all__ lists undefined names: {missing}"


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


# --------------------------------------------------------------------------- layout rules

_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1] / "mechlens"


def _modules():
    import ast

    for path in sorted(_ROOT.rglob("*.py")):
        rel = path.relative_to(_ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts), ast.parse(path.read_text())


def _package(module: str) -> str:
    """``mechlens.engine.fast`` -> ``mechlens.engine``; a top-level module is its own package."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_module_imports_another_packages_private_names():
    import ast

    bad = []
    for path, module, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("mechlens"):
                continue
            target = node.module
            if module == "mechlens" or _package(target) == _package(module):
                continue  # the root package's __init__ wires its own private modules
            private_module = any(p.startswith("_") for p in target.split("."))
            private_names = [a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")]
            if private_module or private_names:
                bad.append(f"{path.relative_to(_ROOT.parent)}:{node.lineno} from {target} import "
                           f"{', '.join(a.name for a in node.names)}")
    assert not bad, "imports of another package's private module or name:\n" + "\n".join(bad)


# Attributes of TransformerBridge (and the torch modules it wraps) that only
# mechlens/engine/bridge.py may touch: when TransformerLens changes, that is the one module to update.
_BRIDGE_INTERNALS = ("original_component", "original_model", "_original_component", "_capture_hook_handles",
                     "_capture_hooks_wired", "_forward_pre_hooks", "_forward_hooks")


def test_bridge_internals_live_in_one_module():
    import ast

    bad = []
    for path, module, tree in _modules():
        if module == "mechlens.engine.bridge":
            continue
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in _BRIDGE_INTERNALS:
                bad.append(f"{path.name}:{node.lineno} .{node.attr}")
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                  and any(name in node.value for name in _BRIDGE_INTERNALS)):
                bad.append(f"{path.name}:{node.lineno} {node.value!r}")
    assert not bad, "TransformerBridge internals outside mechlens/engine/bridge.py:\n" + "\n".join(bad)


def _engine_rule_breaks(module: str, tree) -> list[str]:
    """What ``module`` does that only the engine may do: call the model's hook runners
    (``run_with_hooks`` / ``run_with_cache``) or draw its own progress bars with tqdm."""
    import ast

    if module == "mechlens.engine" or module.startswith("mechlens.engine."):
        return []
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("run_with_hooks", "run_with_cache"):
            bad.append(f"{node.lineno} .{node.attr}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if any(n == "tqdm" or n.startswith("tqdm.") for n in names):
                bad.append(f"{node.lineno} imports tqdm")
    return bad


def test_model_passes_and_progress_bars_come_from_the_engine():
    bad = [f"{path.relative_to(_ROOT.parent)}:{b}" for path, module, tree in _modules()
           for b in _engine_rule_breaks(module, tree)]
    assert not bad, ("hook runs or progress bars outside mechlens/engine/ (use its cache_iter, "
                     "padded_iter, run_grid, ... and progress_iter / progress_bar):\n" + "\n".join(bad))


def test_layout_rules_catch_a_violation(tmp_path, monkeypatch):
    """The two scans above find what they look for (a test that cannot fail is a defect)."""
    import ast

    src = "from mechlens.patching._x import y\nm.blocks[0].original_component\n"
    tree = ast.parse(src)
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    attrs = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    assert imports[0].module.split(".")[2].startswith("_") and "original_component" in attrs
    assert _package("mechlens.engine.fast") == "mechlens.engine" and _package("mechlens.lens") == "mechlens.lens"
    breaks = _engine_rule_breaks("mechlens.lens", ast.parse(
        "from tqdm.auto import tqdm\n_, cache = model.run_with_cache(toks)\n"))
    assert breaks == ["1 imports tqdm", "2 .run_with_cache"]
    assert _engine_rule_breaks("mechlens.engine.grid", ast.parse("model.run_with_hooks(t)")) == []
