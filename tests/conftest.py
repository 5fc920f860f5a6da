"""Shared fixtures and the test tiers. Tests run offline; tiny models are built here, and the
bundled smollm2-135m is loaded once per test process and shared by every test that needs it.

Tiers (see CONTRIBUTING.md): ``pytest_collection_modifyitems`` below marks every test that
uses the ``smollm2``, ``movie_train`` or ``movie_test`` fixture (directly or through another
fixture) ``smollm2``, and every ``smollm2``, ``docs``, ``notebooks`` or ``subprocess`` test
``slow``. ``-m "not slow"`` (``bash scripts/test.sh --quick``) is the quick tier: tiny models
only. A new test that takes the ``smollm2`` fixture is classified without a marker.
"""

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


def fingerprint(model) -> torch.Tensor:
    """One number per parameter tensor (its sum in float64): equal before and after means
    the weights were not changed."""
    with torch.no_grad():
        return torch.stack([p.detach().double().sum() for p in model.parameters()])


@pytest.fixture
def shared_smollm2(smollm2, monkeypatch):
    """``load_model("smollm2-135m")``, wherever it is called from (the command line, a study,
    a documentation example), returns the session's model instead of loading a second copy;
    other names load as usual. Fails the test if the weights changed. Returns the model."""
    import mechlens
    import mechlens.models

    real = mechlens.models.load_model

    def load_model(name, *args, **kwargs):
        plain = not args and all(v is None or (k == "device" and v == "cpu") for k, v in kwargs.items())
        if isinstance(name, str) and name.lower() == mechlens.models.OFFLINE_MODEL and plain:
            return smollm2
        return real(name, *args, **kwargs)

    monkeypatch.setattr(mechlens, "load_model", load_model)
    monkeypatch.setattr(mechlens.models, "load_model", load_model)
    before = fingerprint(smollm2)
    yield smollm2
    assert torch.equal(fingerprint(smollm2), before), "the test changed smollm2-135m's weights"


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


# ----------------------------------------------------------------------------- tiers

# fixtures that load smollm2-135m (a fixture built on one of these is caught too: pytest lists
# the whole closure in item.fixturenames)
SMOLLM2_FIXTURES = {"smollm2", "movie_train", "movie_test"}
# markers whose tests stay out of the quick tier
NOT_QUICK = ("smollm2", "docs", "notebooks", "subprocess")
# Units of work under pytest-xdist (scripts/test.sh: -n auto --dist loadgroup; the scheduler
# below): a test file's tests run in one worker, so its module fixtures run once, except the
# tests named in SPREAD, which share only the session's smollm2 (each is its own unit), and the
# files in SHARED, which share session fixtures (the notebook runs) and form one unit.
SPREAD = {"test_docs.py::test_doc_code_blocks_run"}
SHARED = {"test_notebooks.py": "notebooks", "test_site.py": "notebooks"}
# tiny-model files whose module fixtures take a minute or more (the slowest-20 list at the end of
# a run shows them): started before the other tiny-model files, so no worker ends alone on one
LONG = ("test_study.py", "test_reproduce.py", "test_errors.py")


def work_unit(nodeid: str) -> str:
    """The unit of work of the test ``nodeid``."""
    path, _, rest = nodeid.partition("::")
    name = path.rsplit("/", 1)[-1]
    if f"{name}::{rest.split('[')[0]}" in SPREAD:
        return nodeid
    return SHARED.get(name, path)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` with the units above. (pytest-xdist 3.8's own loadgroup reads
    ``xdist_group`` markers through a node-id suffix that pytest 9.2 no longer keeps, so it
    spreads every test; this scheduler needs no marker.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    # the units in the order pytest_collection_modifyitems gives them (longest first); xdist's
    # default reorder would sort them by their number of tests, one-test documentation pages last
    config.option.loadscopereorder = False
    return UnitScheduling(config, log)


def pytest_itemcollected(item):
    """Mark each test as it is collected, before any ``pytest_collection_modifyitems`` (``-m``
    deselects by these markers)."""
    if SMOLLM2_FIXTURES & set(getattr(item, "fixturenames", ())):
        item.add_marker(pytest.mark.smollm2)
    if any(item.get_closest_marker(m) is not None for m in NOT_QUICK):
        item.add_marker(pytest.mark.slow)


@pytest.hookimpl(trylast=True)  # after -m and -k deselected: order what runs
def pytest_collection_modifyitems(config, items):
    groups = {item: work_unit(item.nodeid) for item in items}
    # the longest units first, so that the workers finish together: the notebooks and the site,
    # then the documentation pages, the other smollm2 tests, the LONG files, then the rest. A unit's tests
    # stay together and in order (so module fixtures are set up once without xdist too).
    def rank(item):
        for r, marker in enumerate(("notebooks", "docs", "smollm2")):
            if item.get_closest_marker(marker) is not None:
                return r
        return 3 if item.path.name in LONG else 4

    group_rank: dict = {}
    for item in items:
        group_rank[groups[item]] = min(group_rank.get(groups[item], 4), rank(item))
    order = {g: i for i, g in enumerate(sorted(group_rank, key=group_rank.get))}  # stable
    items.sort(key=lambda item: order[groups[item]])
