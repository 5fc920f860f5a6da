"""Attention patterns of one text, as an interactive offline page and as static heatmaps.

What an attention pattern is
----------------------------
Each attention head ``h`` of layer ``l`` mixes information between positions. For a
destination position ``q`` (the token being predicted from) and a source position ``k <= q``
the head's *pattern* is ``A[h, q, k] = softmax_k(q_q . k_k / sqrt(d_head))``: row ``q`` is a
probability distribution saying how much of each earlier token the head reads (TransformerLens
hook ``blocks.{l}.attn.hook_pattern``). Rows sum to one; the upper triangle is zero because
the models are causal.

How to read one
---------------
A bright diagonal just below the main one is a *previous-token head*; a bright first column
is a head "resting" on the BOS token (it reads nothing useful); a bright column under one
content word is a head that moves that word's information onward. In Tigges et al. (2023)
the sentiment of a review is read from the adjective and verb into the comma and the final
position by a few such heads ("summarization motif"): ``attention(model, prompt)`` on a
ToyMovieReview prompt shows those heads' columns at ADJ and VRB.

What this module gives
----------------------
``attention(model, text, layers=..., heads=...)`` runs the model once, caching only the
pattern hooks it needs, and returns an :class:`AttentionPatterns` result with:

* ``.html`` / ``.save_html(path)``: a self-contained page built on circuitsvis'
  ``AttentionHeads`` view, one view per layer (a layer selector; head thumbnails to hover or
  click), with circuitsvis' JavaScript *inlined*: the page makes no network request and
  works offline and from ``file://``;
* ``.figure(layer, heads=..., crop=(start, end))`` / ``.save_png(path, layer=...)``: a grid
  of heatmaps, one per head, tokens on both axes (CJK tokens render; see
  ``mechlens.viz.fonts`` and ``mechlens.viz.tokens``), optionally cropped to a window of
  positions for long texts;
* ``.to_dataframe()`` (one row per layer, head, destination and source) and ``.save(dir)``.
"""

from __future__ import annotations

import functools
import html as html_lib
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from matplotlib.figure import Figure
from torch import Tensor

from mechlens.engine import cached_run
from mechlens.fileio import write_text
from mechlens.models import model_device, model_name
from mechlens.results import Result
from mechlens.validate import check_head, check_layer, check_token_ids, prompt_tokens
from mechlens.viz.fonts import cjk_fonts
from mechlens.viz.heatmap import heatmap, save_figure
from mechlens.viz.tokens import token_labels

__all__ = ["AttentionPatterns", "attention", "circuitsvis_js"]

# Probabilities are written to the page with this many decimals: enough for colour and hover
# values, and it keeps a 30-layer page of a short text under a megabyte of data.
_HTML_DECIMALS = 4


# --------------------------------------------------------------------------- the result


@dataclass
class AttentionPatterns(Result):
    """Attention patterns of one text for some layers and heads.

    Attributes:
        model_name: the model the patterns come from.
        text: the input text (decoded from the tokens when ids were given).
        tokens: a readable label for each kept position (``mechlens.viz.token_labels``).
        token_ids: the token id at each kept position.
        start: the absolute position of the first kept position (non-zero after ``crop``).
        layers, heads: the layers and heads kept, in order.
        patterns: ``[layer, head, dest, src]`` probabilities over the kept positions.
    """

    text: str
    tokens: list[str]
    token_ids: list[int]
    start: int
    layers: list[int]
    heads: list[int]
    patterns: Float[Tensor, "layer head dest src"]

    def __post_init__(self) -> None:
        n = len(self.tokens)
        want = (len(self.layers), len(self.heads), n, n)
        if tuple(self.patterns.shape) != want:
            raise ValueError(
                f"AttentionPatterns.patterns has shape {tuple(self.patterns.shape)}; layers, heads "
                f"and tokens say {want}"
            )
        if len(self.token_ids) != n:
            raise ValueError("AttentionPatterns.token_ids and tokens differ in length")

    # ---------------------------------------------------------------- access

    @property
    def positions(self) -> list[int]:
        """Absolute positions of the kept tokens."""
        return list(range(self.start, self.start + len(self.tokens)))

    def layer(self, layer: int) -> Float[Tensor, "head dest src"]:
        """The ``[head, dest, src]`` patterns of one layer (by its model layer number)."""
        return self.patterns[self._layer_index(layer)]

    def _layer_index(self, layer: int | None) -> int:
        if layer is None:
            return 0
        if layer not in self.layers:
            raise ValueError(f"layer={layer!r} is not in this view; it holds layers {self.layers}")
        return self.layers.index(layer)

    def _head_indices(self, heads: int | Sequence[int] | None) -> list[int]:
        if heads is None:
            return list(range(len(self.heads)))
        wanted = [heads] if isinstance(heads, int) else list(heads)
        bad = [h for h in wanted if h not in self.heads]
        if bad or not wanted:
            raise ValueError(f"heads={heads!r}: this view holds heads {self.heads}")
        return [self.heads.index(h) for h in wanted]

    def _crop_slice(self, crop: tuple[int | None, int | None] | None) -> slice:
        lo, hi = self.start, self.start + len(self.tokens)
        if crop is None:
            return slice(0, hi - lo)
        a, b = _normalise_crop(crop, hi, "crop")
        if a < lo or b > hi:
            raise ValueError(f"crop={crop!r} reaches outside the kept positions {lo}..{hi - 1}")
        return slice(a - lo, b - lo)

    # ---------------------------------------------------------------- tables and figures

    def to_dataframe(self) -> pd.DataFrame:
        """Long table: layer, head, dest_pos, src_pos, dest_token, src_token, attention."""
        n_l, n_h, n, _ = self.patterns.shape
        idx = np.indices((n_l, n_h, n, n)).reshape(4, -1)
        pos = np.asarray(self.positions)
        toks = np.asarray(self.tokens, dtype=object)
        return pd.DataFrame({
            "layer": np.asarray(self.layers)[idx[0]],
            "head": np.asarray(self.heads)[idx[1]],
            "dest_pos": pos[idx[2]],
            "src_pos": pos[idx[3]],
            "dest_token": toks[idx[2]],
            "src_token": toks[idx[3]],
            "attention": self.patterns.detach().float().cpu().numpy().reshape(-1),
        })

    def figure(
        self,
        layer: int | None = None,
        *,
        heads: int | Sequence[int] | None = None,
        crop: tuple[int | None, int | None] | None = None,
        ncols: int | None = None,
        cmap: str = "Blues",
        vmax: float | None = 1.0,
    ) -> Figure:
        """Heatmaps of one layer's heads: destination tokens down, source tokens across.

        Args:
            layer: a model layer held by this view (default: the first one).
            heads: head numbers to draw (default: all heads held).
            crop: ``(start, end)`` absolute positions, end exclusive, Python-style negatives
                and ``None`` allowed: draw only that window (rows and columns). Attention to
                positions before the window is not shown, so rows may sum to less than one.
            ncols: panels per row (default: up to 3).
            cmap: colour map.
            vmax: top of the scale (``None`` = each panel's maximum; the default 1.0 keeps
                panels comparable).
        """
        li = self._layer_index(layer)
        hi = self._head_indices(heads)
        sl = self._crop_slice(crop)
        labels = self.tokens[sl]
        pats = self.patterns[li][hi][:, sl, sl].detach().float().cpu().numpy()
        # The causal upper triangle is not data: leave it blank instead of "zero attention".
        n = pats.shape[-1]
        pats = np.where(np.triu(np.ones((n, n), dtype=bool), k=1), np.nan, pats)
        ncols = ncols or min(3, len(hi))
        nrows = -(-len(hi) // ncols)
        longest = max((len(t) for t in labels), default=1)
        panel = max(2.6, 0.22 * n + 0.07 * longest + 0.8)
        with cjk_fonts():
            fig = Figure(figsize=(panel * ncols + 0.8, panel * nrows + 0.6), layout="constrained")
            axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
            lay = self.layers[li]
            for k, (ax, h) in enumerate(zip(axes, hi)):
                heatmap(
                    pats[k], labels, labels, ax=ax, cmap=cmap, vmin=0.0, vmax=vmax,
                    colorbar=False, title=f"L{lay}H{self.heads[h]}",
                    xlabel="source token" if k // ncols == nrows - 1 else None,
                    ylabel="destination token" if k % ncols == 0 else None,
                )
            for ax in axes[len(hi):]:
                ax.set_axis_off()
            window = ""
            if sl.start > 0 or sl.stop < len(self.tokens):
                window = f", positions {self.start + sl.start}-{self.start + sl.stop - 1}"
            fig.suptitle(f"{self.model_name}: attention patterns, layer {lay}{window}")
            images = [ax.images[0] for ax in axes[: len(hi)]]
            fig.colorbar(images[0], ax=list(axes), shrink=0.6, label="attention probability")
        return fig

    def plot(self) -> Figure:
        """The first layer's heads (see :meth:`figure`)."""
        return self.figure()

    def save_png(
        self,
        path: str | Path,
        layer: int | None = None,
        *,
        heads: int | Sequence[int] | None = None,
        crop: tuple[int | None, int | None] | None = None,
        dpi: int = 150,
    ) -> Path:
        """Write :meth:`figure` for ``layer`` to ``path`` (PNG, or SVG/PDF by suffix)."""
        return save_figure(self.figure(layer, heads=heads, crop=crop), path, dpi=dpi)

    # ---------------------------------------------------------------- HTML

    def html_fragment(self) -> str:
        """The view as an HTML fragment (for embedding in a page or a notebook)."""
        return _render_fragment(self, "mechlens-attn-" + uuid.uuid4().hex[:10])

    @property
    def html(self) -> str:
        """A complete, self-contained HTML page (inlined JavaScript, no network access)."""
        title = html_lib.escape(f"Attention patterns: {self.model_name}")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{title}</title>\n</head>\n<body>\n{self.html_fragment()}\n</body>\n</html>\n"
        )

    def save_html(self, path: str | Path) -> Path:
        """Write :attr:`html` to ``path`` (UTF-8), making parent folders."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, self.html)
        return path

    def _repr_html_(self) -> str:
        return self.html_fragment()


# --------------------------------------------------------------------------- computing


def _normalise_crop(crop: Any, n: int, name: str) -> tuple[int, int]:
    if not (isinstance(crop, (tuple, list)) and len(crop) == 2):
        raise ValueError(f"{name}={crop!r} must be a (start, end) pair of positions")
    a, b = crop
    if not all(x is None or isinstance(x, int) for x in (a, b)):
        raise ValueError(f"{name}={crop!r}: start and end must be ints or None")
    a, b, _ = slice(a, b).indices(n)
    if a >= b:
        raise ValueError(f"{name}={crop!r} selects no positions of a {n}-token text")
    return a, b


def _as_list(x: int | Sequence[int] | None, n: int, name: str, model: Any) -> list[int]:
    if x is None:
        return list(range(n))
    items = [x] if isinstance(x, int) else list(x)
    if not items:
        raise ValueError(f"{name}= is empty; pass None for all, or some numbers")
    if name == "layers":
        out = [check_layer(model, i, what="layers") for i in items]
    else:
        out = [check_head(h, n, what="heads=") for h in items]
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={x!r} repeats a value")
    return out


@torch.no_grad()
def attention(
    model: Any,
    text: str | Int[Tensor, " pos"] | Sequence[int],
    *,
    layers: int | Sequence[int] | None = None,
    heads: int | Sequence[int] | None = None,
    crop: tuple[int | None, int | None] | None = None,
    prepend_bos: bool | None = None,
) -> AttentionPatterns:
    """Attention patterns of ``text`` for the chosen layers and heads.

    Args:
        model: a model from ``mechlens.load_model`` (or any TransformerLens model).
        text: a string, or the token ids of one sequence (1-D, or ``[1, pos]``).
        layers: layer numbers (default: all); negatives count from the end.
        heads: head numbers (default: all), the same for every layer.
        crop: ``(start, end)`` positions to keep (end exclusive; negatives and ``None`` as in
            Python slices), for long texts: the page and figures then show that window.
        prepend_bos: for a string, whether to put BOS first (default: the model's setting).

    Returns:
        :class:`AttentionPatterns` with ``.html``, ``.save_html``, ``.figure``, ``.save_png``.
    """
    if isinstance(text, str):
        tokens = prompt_tokens(model, text, what="attention(text=...)", prepend_bos=prepend_bos)
    else:
        tokens = torch.as_tensor(text)
        if tokens.ndim == 2 and tokens.shape[0] == 1:
            tokens = tokens[0]
        if tokens.ndim != 1 or tokens.numel() == 0 or tokens.is_floating_point():
            raise ValueError(
                f"attention(text=...) takes a string or the integer token ids of one sequence; "
                f"got a tensor of shape {tuple(tokens.shape)} and dtype {tokens.dtype}"
            )
        tokens = check_token_ids(model, tokens, "attention(text=...) token ids")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and tokens.numel() > n_ctx:
        raise ValueError(
            f"attention(text=...) has {tokens.numel()} tokens but the model's context is {n_ctx}; "
            "shorten the text"
        )
    layer_list = _as_list(layers, model.cfg.n_layers, "layers", model)
    head_list = _as_list(heads, model.cfg.n_heads, "heads", model)
    n_pos = tokens.numel()
    a, b = _normalise_crop(crop, n_pos, "crop") if crop is not None else (0, n_pos)

    names = [f"blocks.{layer}.attn.hook_pattern" for layer in layer_list]
    _, cache = cached_run(model, tokens[None].to(model_device(model)), names)
    patterns = torch.stack(
        [cache[f"blocks.{layer}.attn.hook_pattern"][0, head_list] for layer in layer_list]
    )[:, :, a:b, a:b]
    ids = tokens.tolist()
    labels = token_labels(model, ids)
    decoded = text if isinstance(text, str) else model.tokenizer.decode(ids)
    return AttentionPatterns(
        model_name=model_name(model),
        text=decoded,
        tokens=labels[a:b],
        token_ids=ids[a:b],
        start=a,
        layers=layer_list,
        heads=head_list,
        patterns=patterns.detach().float().cpu().contiguous(),
    )


# --------------------------------------------------------------------------- HTML rendering


@functools.lru_cache(maxsize=1)
def circuitsvis_js() -> str:
    """circuitsvis' browser bundle (``dist/cdn/iife.js`` in the installed package), made safe to
    inline in a ``<script>`` element.

    The bundle defines the global ``CircuitsVis`` (``render`` and the React views) and loads
    nothing else, so a page that carries it needs no CDN.
    """
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not path.exists():
        raise FileNotFoundError(
            f"circuitsvis {circuitsvis.__version__} has no bundled JavaScript at {path}; "
            "reinstall circuitsvis (pip install --force-reinstall circuitsvis)"
        )
    js = path.read_text(encoding="utf-8")
    # "</script" would end the inline element early; "<\/script" is the same string in JS.
    js = re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)
    # The source map is not shipped next to the page; drop the pointer so nothing asks for it.
    return re.sub(r"//# sourceMappingURL=\S*\s*$", "", js)


def _json_for_script(obj: Any) -> str:
    # Inside <script type="application/json"> only "</script" matters; escaping every "<"
    # (valid JSON) also keeps "<!--" out.
    return json.dumps(obj, ensure_ascii=False).replace("<", "\\u003c")


_CSS = """
.mechlens-attention {font-family: system-ui, -apple-system, "Segoe UI", "Noto Sans",
  "Noto Sans CJK JP", sans-serif; max-width: 960px; margin: 0 auto; color: #222;}
.mechlens-attention h1 {font-size: 1.3em; margin: 0.4em 0;}
.mechlens-attention h2 {font-size: 1.1em; margin: 0.6em 0 0.2em;}
.mechlens-attention .ml-meta {color: #555; font-size: 0.9em; margin: 0.2em 0;}
.mechlens-attention .ml-text {background: #f6f6f6; padding: 0.4em 0.6em; border-radius: 4px;
  white-space: pre-wrap; font-size: 0.95em;}
.mechlens-attention .ml-controls {position: sticky; top: 0; background: #fff; padding: 0.4em 0;
  border-bottom: 1px solid #ddd; z-index: 200;}
.mechlens-attention .ml-controls button, .mechlens-attention .ml-controls select
  {font-size: 1em; margin-right: 0.3em;}
.mechlens-attention .ml-hint {color: #666; font-size: 0.85em;}
"""

_JS = """
(function () {
  var uid = %(uid)s;
  var root = document.getElementById(uid);
  var data = JSON.parse(document.getElementById(uid + "-data").textContent);
  var select = document.getElementById(uid + "-select");
  var rendered = {};
  function draw(layer) {
    if (rendered[layer]) return;
    rendered[layer] = true;
    var names = data.heads.map(function (h) { return "L" + layer + "H" + h; });
    CircuitsVis.render(uid + "-view-" + layer, CircuitsVis.AttentionHeads, {
      attention: data.patterns[layer], tokens: data.tokens, attentionHeadNames: names,
      maskUpperTri: true, minValue: 0, maxValue: 1
    });
  }
  function show(choice) {
    var sections = root.querySelectorAll("section[data-layer]");
    for (var i = 0; i < sections.length; i++) {
      var layer = sections[i].getAttribute("data-layer");
      var visible = choice === "all" || layer === choice;
      sections[i].hidden = !visible;
      if (visible) draw(layer);
    }
    select.value = choice;
  }
  select.addEventListener("change", function () { show(select.value); });
  root.querySelectorAll("button[data-step]").forEach(function (button) {
    button.addEventListener("click", function () {
      var i = data.layers.indexOf(Number(select.value));
      if (i < 0) i = 0;
      var j = Math.min(data.layers.length - 1, Math.max(0, i + Number(button.getAttribute("data-step"))));
      show(String(data.layers[j]));
    });
  });
  var initial = String(data.layers[0]);
  var m = /^#layer-(all|\\d+)$/.exec(window.location.hash);
  if (m && (m[1] === "all" || data.layers.indexOf(Number(m[1])) >= 0)) initial = m[1];
  show(initial);
})();
"""


def _render_fragment(view: AttentionPatterns, uid: str) -> str:
    esc = html_lib.escape
    pats = np.round(view.patterns.detach().float().cpu().numpy(), _HTML_DECIMALS)
    data = {
        "layers": view.layers,
        "heads": view.heads,
        "tokens": view.tokens,
        "patterns": {str(layer): pats[i].tolist() for i, layer in enumerate(view.layers)},
    }
    options = "".join(f'<option value="{layer}">Layer {layer}</option>' for layer in view.layers)
    if len(view.layers) > 1:
        options += '<option value="all">All layers</option>'
    sections = "\n".join(
        f'<section class="ml-layer" data-layer="{layer}" id="{uid}-layer-{layer}" hidden>'
        f"<h2>Layer {layer}</h2><div class=\"ml-view\" id=\"{uid}-view-{layer}\"></div></section>"
        for layer in view.layers
    )
    window = ""
    if view.start:
        window = f" (positions {view.start}-{view.start + len(view.tokens) - 1} of the text)"
    heads = ", ".join(map(str, view.heads))
    meta = f"{esc(view.model_name)} · {len(view.tokens)} tokens{window} · heads {heads}"
    return f"""<div class="mechlens-attention" id="{uid}">
<style>{_CSS}</style>
<h1>Attention patterns</h1>
<p class="ml-meta">{meta}</p>
<p class="ml-text">{esc(view.text)}</p>
<div class="ml-controls">
<label for="{uid}-select">Layer</label> <select id="{uid}-select">{options}</select>
<button type="button" data-step="-1" title="previous layer">&#9664;</button><button type="button" data-step="1" title="next layer">&#9654;</button>
<span class="ml-hint">Rows: destination token; columns: source token. Hover over a head to preview it, click to lock it.</span>
</div>
{sections}
<script type="application/json" id="{uid}-data">{_json_for_script(data)}</script>
<script>{circuitsvis_js()}</script>
<script>{_JS % {"uid": json.dumps(uid)}}</script>
</div>"""

