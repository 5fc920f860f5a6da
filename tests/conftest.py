"""Shared fixtures. Tests run offline; tiny models are built here, and the bundled
smollm2-135m is loaded once per session and shared by every test that needs it."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from mechlens.models import load_model, tiny  # noqa: E402

torch.set_grad_enabled(True)


@pytest.fixture(scope="session")
def smollm2():
    """The real offline model; tests must not change its weights (or must restore them)."""
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def movie_train(smollm2):
    from mechlens.data import toy_movie_review

    return toy_movie_review(smollm2, "train")


@pytest.fixture(scope="session")
def movie_test(smollm2):
    from mechlens.data import toy_movie_review

    return toy_movie_review(smollm2, "test")


@pytest.fixture(scope="session", params=["gpt2", "neox", "llama"])
def tiny_model(request):
    """One tiny random model of each architecture (2 layers)."""
    return tiny(request.param, n_layers=2, seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2():
    return tiny("gpt2", n_layers=2, seed=0)


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny("llama", n_layers=2, seed=0)


def _load_script(name: str):
    """Import ``scripts/<name>.py`` (scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"mechlens_scripts_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def notebook_tools():
    """``scripts/notebooks.py``: the notebook sources, pairing check and FAST execution."""
    pytest.importorskip("jupytext")
    pytest.importorskip("nbclient")
    return _load_script("notebooks")


@pytest.fixture(scope="session")
def executed_notebook(notebook_tools):
    """``executed_notebook(source) -> (notebook, new files in notebooks/)``.

    Each notebook runs once per session (FAST settings, temporary working directory); the
    notebook tests and the documentation-site test share the runs. A failed run raises
    again for every caller.
    """
    runs: dict = {}

    def run(source):
        if source not in runs:
            before = set(source.parent.iterdir())
            try:
                runs[source] = notebook_tools.execute(source)
            except Exception as e:  # re-raised for every caller
                runs[source] = e
            runs[source, "new"] = set(source.parent.iterdir()) - before
        if isinstance(runs[source], Exception):
            raise runs[source]
        return runs[source], runs[source, "new"]

    return run
