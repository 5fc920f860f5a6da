"""Batched greedy generation with left padding and the KV cache, under any hooks.

Generating for several prompts at once needs three things that one-prompt generation does
not: the prompts are *left*-padded (so that every row's next token is at the last column),
an attention mask keeps the pads out of attention, and the position of every real token is
counted from its row's first real token (not from the pad). With the KV cache, each step
after the first feeds only the new token, the mask grows by one column, and positions carry
on from the row's last one.

:func:`generate_batched` does this through the model's public forward on both backends:

- TransformerBridge (TransformerLens 4.3): ``model(tokens, attention_mask=mask,
  return_type="logits_and_cache")`` for the prompt, then ``model(next_token,
  attention_mask=mask, past_key_values=cache, return_type="logits_and_cache")`` per step; the
  mask spans the cached prefix and the new token, and the bridge derives each row's position
  ids from it.
- HookedTransformer (TransformerLens 3.9): ``model(tokens, attention_mask=mask,
  past_kv_cache=cache)`` with a ``TransformerLensKeyValueCache``, which keeps the mask of the
  cached prefix itself (each call passes the new tokens' mask only).

Hooks (``hooks=[(name, fn), ...]``, e.g. adding a steering vector) are attached for the whole
generation; with the KV cache they see only the new positions at each step, which for an
intervention applied at every position is the same as rerunning the whole sequence. Weight
steering needs nothing here: run inside ``apply_weights``. Decoding is greedy; the tokens
equal one-prompt-at-a-time greedy generation (tested on three architectures and SmolLM2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mechlens.hooks import hooked
from mechlens.model_protocol import is_bridge
from mechlens.models import model_device

__all__ = ["generate_batched"]


def _prompt_tokens(model: Any, prompts: Sequence[str | Tensor], prepend_bos: bool | None) -> list[Tensor]:
    if isinstance(prompts, (str, Tensor)):
        raise TypeError("prompts must be a list of strings or of 1-D token tensors (wrap a single prompt in a list)")
    if not len(prompts):
        raise ValueError("prompts is empty: give at least one prompt")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            kw = {} if prepend_bos is None else {"prepend_bos": prepend_bos}
            t = model.to_tokens(p, truncate=False, **kw)[0].cpu()
        elif isinstance(p, Tensor) and p.ndim == 1 and not p.is_floating_point():
            t = p.detach().long().cpu()
        else:
            raise TypeError(f"prompts[{i}] must be a string or a 1-D integer token tensor, not {type(p).__name__}")
        if len(t) == 0:
            raise ValueError(f"prompts[{i}] has no tokens")
        out.append(t)
    return out


@torch.no_grad()
def _generate_rows(model: Any, toks: list[Tensor], max_new_tokens: int, pad: int) -> Tensor:
    """Greedy continuation ``[rows, max_new_tokens]`` of left-padded ``toks`` in one batch."""
    dev = model_device(model)
    n, width = len(toks), max(len(t) for t in toks)
    ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, t in enumerate(toks):
        ids[i, width - len(t) :] = t
        mask[i, width - len(t) :] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    new = torch.empty((n, max_new_tokens), dtype=torch.long)
    if is_bridge(model):
        logits, cache = model(ids, attention_mask=mask, return_type="logits_and_cache")
        for step in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1)
            new[:, step] = nxt.cpu()
            if step + 1 == max_new_tokens:
                break
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=dev)], 1)
            logits, cache = model(nxt[:, None], attention_mask=mask, past_key_values=cache,
                                  return_type="logits_and_cache")
        return new
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, n)
    logits = model(ids, attention_mask=mask, past_kv_cache=cache)
    for step in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1)
        new[:, step] = nxt.cpu()
        if step + 1 == max_new_tokens:
            break
        one = torch.ones((n, 1), dtype=mask.dtype, device=dev)
        logits = model(nxt[:, None], attention_mask=one, past_kv_cache=cache)
    return new


def generate_batched(
    model: Any,
    prompts: Sequence[str | Tensor],
    max_new_tokens: int = 20,
    *,
    hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
    batch_size: int | None = None,
    prepend_bos: bool | None = None,
    stop_at_eos: bool = False,
    progress: bool = False,
) -> list[Tensor]:
    """Greedy generation for many prompts at once: left padding, attention mask, KV cache.

    Args:
        model: a TransformerBridge or a HookedTransformer.
        prompts: strings (tokenized with the model's ``to_tokens``, BOS per the model's
            default unless ``prepend_bos``) or 1-D token tensors; any lengths.
        max_new_tokens: tokens to generate per prompt.
        hooks: ``(hook name, fn)`` pairs attached for the whole generation (an activation
            intervention such as a steering vector added at every position).
        batch_size: prompts per forward pass (default ``mechlens.engine.DEFAULT_BATCH_SIZE``);
            prompts of similar length share a pass.
        stop_at_eos: cut each continuation after its first end-of-sequence token.
        progress: a progress bar over the batches.

    Returns:
        The generated tokens of each prompt (new tokens only), in the order of ``prompts``:
        the same tokens as greedy generation of each prompt on its own.
    """
    from mechlens.engine import pad_id, progress_iter, rows_per_pass

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive int")
    size = rows_per_pass(batch_size)
    toks = _prompt_tokens(model, prompts, prepend_bos)
    order = sorted(range(len(toks)), key=lambda i: len(toks[i]))
    groups = [order[i : i + size] for i in range(0, len(order), size)]
    out: list[Tensor | None] = [None] * len(toks)
    pad = pad_id(model)
    with hooked(model, list(hooks)):
        for g in progress_iter(groups, progress, "generating"):
            rows = _generate_rows(model, [toks[i] for i in g], max_new_tokens, pad)
            for r, i in enumerate(g):
                out[i] = rows[r]
    if stop_at_eos:
        eos = getattr(getattr(model, "tokenizer", None), "eos_token_id", None)
        if eos is None:
            raise ValueError("stop_at_eos=True needs a tokenizer with an eos_token_id")
        for i, t in enumerate(out):
            hit = (t == eos).nonzero()
            if len(hit):
                out[i] = t[: int(hit[0]) + 1]
    return out  # type: ignore[return-value]
