"""mechlens: mechanistic interpretability on TransformerLens.

Load a model, build a contrast dataset, run a method, get a labelled result::

    import mechlens
    model = mechlens.load_model("smollm2-135m")
    ds = mechlens.data.toy_movie_review(model, "test")
"""

from mechlens._compat import check_versions

check_versions()

from mechlens import data, metrics, viz  # noqa: E402
from mechlens.data import ContrastDataset  # noqa: E402
from mechlens.models import ModelNotAvailableError, load_model  # noqa: E402

__version__ = "0.1.0"

__all__ = ["ContrastDataset", "ModelNotAvailableError", "data", "load_model", "metrics", "viz"]
