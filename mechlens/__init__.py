"""mechlens: mechanistic interpretability on TransformerLens.

Load a model, build a contrast dataset, run a method, get a labelled result::

    import mechlens
    model = mechlens.load_model("smollm2-135m")
    ds = mechlens.data.toy_movie_review(model, "test")
"""

from mechlens._compat import check_versions

check_versions()

from mechlens.engine.threads import set_threads, threads_from_env  # noqa: E402

threads_from_env()

from mechlens import data, metrics, viz  # noqa: E402
from mechlens.data import ContrastDataset  # noqa: E402
from mechlens.models import ModelNotAvailableError, load_model  # noqa: E402

__version__ = "0.1.0"

# Imported on first use (``import mechlens as ml; ml.patching.activation_patch(...)``), so
# ``import mechlens`` stays light.
_SUBPACKAGES = (
    "ablation", "baseline", "circuits", "directions", "dit", "engine", "hooks", "lens", "model_protocol",
    "models", "patching", "reproduce", "results", "scale", "stages", "steering", "study", "validate",
)

__all__ = ["ContrastDataset", "ModelNotAvailableError", "data", "load_model", "metrics", "set_threads", "viz",
           *_SUBPACKAGES]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"mechlens.{name}")
    raise AttributeError(f"module 'mechlens' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBPACKAGES))
