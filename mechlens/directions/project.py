"""The correlational view of a direction: how much each token of a text projects on it.

Run a text, take the residual stream at the direction's layer and site, and read off
``h . d`` at every token. For a sentiment direction, positive words (and, in later layers,
the tokens that summarise them, such as commas and full stops) should light up positive,
negative words negative. This is a *correlational* check (the patching and ablation in
:mod:`mechlens.directions.interventions` are the causal ones).

The result gives a DataFrame (one row per token) and coloured-token HTML (circuitsvis,
with its JavaScript inlined, so the file opens offline).
"""

from __future__ import annotations

import html as _html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechlens.directions.fit import Direction, hook_name
from mechlens.directions.interventions import _check_model_dir, as_direction
from mechlens.engine import padded_iter
from mechlens.fileio import write_text
from mechlens.models import model_name as _model_name
from mechlens.results import Result
from mechlens.validate import prompt_tokens

__all__ = ["Projection", "project"]


@dataclass(repr=False)
class Projection(Result):
    """Per-token projections of some texts on a direction."""

    texts: list[str]
    tokens: list[list[str]]
    values: list[list[float]]
    method: str = ""
    layer: int = 0
    site: str = "resid_pre"

    def to_dataframe(self) -> Any:
        import pandas as pd

        rows = [
            {"text": t, "text_index": i, "position": j, "token": tok, "projection": v}
            for i, (t, toks, vals) in enumerate(zip(self.texts, self.tokens, self.values))
            for j, (tok, v) in enumerate(zip(toks, vals))
        ]
        return pd.DataFrame(rows, columns=["text", "text_index", "position", "token", "projection"])

    def _scale(self) -> float:
        m = max((abs(v) for vals in self.values for v in vals), default=1.0)
        return m or 1.0

    def html(self) -> str:
        """One self-contained HTML document: each text's tokens coloured by projection
        (red negative, blue positive, one shared symmetric scale); circuitsvis's
        ``ColoredTokens`` with its JavaScript bundle inlined, so it works offline."""
        import circuitsvis
        from circuitsvis.utils.convert_props import convert_props

        # circuitsvis's own offline renderer (render_local) inlines this same bundle; one
        # copy serves every text here instead of one copy per text.
        bundle = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
        if not bundle.exists():
            raise FileNotFoundError(f"circuitsvis's JavaScript bundle {bundle} is missing; reinstall circuitsvis")
        js = bundle.read_text(encoding="utf-8").replace("</script>", "")
        m = self._scale()
        divs, calls = [], []
        for i, (text, toks, vals) in enumerate(zip(self.texts, self.tokens, self.values)):
            uid = f"mechlens-projection-{i}"
            divs.append(f"<h4>{_html.escape(text)}</h4>\n<div id=\"{uid}\"></div>")
            props = convert_props(
                {"tokens": toks, "values": vals, "minValue": -m, "maxValue": m,
                 "negativeColor": "red", "positiveColor": "blue"}
            )
            calls.append(f'CircuitsVis.render("{uid}", CircuitsVis.ColoredTokens, {props});')
        title = _html.escape(f"{self.method} direction, {hook_name(self.layer, self.site)}, {self.model_name}")
        return (
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{title}</title></head><body>\n<h3>{title}</h3>\n"
            + "\n".join(divs)
            + "\n<script type=\"module\">\n"
            + js
            + "\n"
            + "\n".join(calls)
            + "\n</script>\n</body></html>\n"
        )

    def save_html(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, self.html())
        return path

    def plot(self) -> Any:
        """Matplotlib version of the coloured tokens: one row per text."""
        from mechlens.viz.directions import plot_projection

        return plot_projection(self)

    def _summary_lines(self) -> list[str]:
        return [f"method={self.method!r}, layer={self.layer}, site={self.site!r}, texts={len(self.texts)}"]


@torch.no_grad()
def project(
    model: Any,
    direction: Direction | Float[Tensor, " d_model"],
    texts: str | Sequence[str],
    *,
    layer: int | None = None,
    skip_bos: bool = True,
    progress: bool = True,
) -> Projection:
    """Per-token projection of ``texts`` on ``direction`` at its layer and site.

    Args:
        direction: a :class:`Direction` or a raw vector (then ``layer`` is required).
        texts: one string or several (each is run on its own, so lengths may differ).
        layer: override the direction's layer.
        skip_bos: leave out the BOS token the model prepends (its huge norm would dominate
            the colour scale).

    Returns:
        :class:`Projection`: ``.to_dataframe()``, ``.html()`` / ``.save_html(path)``, ``.plot()``.
    """
    d = as_direction(direction, layer=layer)
    _check_model_dir(model, d, own_layer=layer is None)
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError("texts must be a non-empty string or a non-empty list of non-empty strings")
    where = d.layer if layer is None else layer
    if not 0 <= where < model.cfg.n_layers:
        raise ValueError(f"layer={where} is out of range: the model has layers 0..{model.cfg.n_layers - 1}")
    name = hook_name(where, d.site)
    unit = d.unit()
    bos = getattr(model.tokenizer, "bos_token_id", None) if getattr(model, "tokenizer", None) else None
    seqs = [prompt_tokens(model, t, what=f"texts[{i}]") for i, t in enumerate(texts)]  # refused, not cut, when too long
    stop = where + 1 if where + 1 < model.cfg.n_layers else None
    all_tokens: list[list[str]] = [[] for _ in texts]
    all_values: list[list[float]] = [[] for _ in texts]
    # one text per pass: no padding, each text exactly as it runs alone
    for idx, _, _, cache in padded_iter(model, seqs, [name], batch_size=1, progress=progress and len(texts) >= 2,
                                        desc="projecting", stop_at_layer=stop):
        i = idx[0]
        vals = (cache[name][0].float() @ unit.to(cache[name].device)).cpu()
        strs = model.to_str_tokens(seqs[i])
        if skip_bos and bos is not None and int(seqs[i][0]) == bos:
            strs, vals = strs[1:], vals[1:]
        all_tokens[i], all_values[i] = list(strs), vals.tolist()
    return Projection(
        texts=texts,
        tokens=all_tokens,
        values=all_values,
        method=d.method,
        layer=where,
        site=d.site,
        model_name=_model_name(model),
    )
