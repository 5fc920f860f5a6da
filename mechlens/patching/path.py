"""Path patching: how much of an effect travels from sender nodes to receiver nodes directly.

**The method** (Wang et al. 2022, appendix B; ARENA 1.4.1). Activation patching a head
measures its *total* effect, through every later component. Path patching isolates the
paths from a set of *sender* nodes to a set of *receiver* nodes:

1. Cache both runs. The *base* run is the one being edited (the corrupt prompts for
   ``mode="denoise"``, the clean prompts for ``mode="noise"``, which is Wang et al.'s
   setting: "orig" = base, "new" = source); the *source* run supplies the senders' values.
2. Run the base input with the senders' outputs taken from the source run and **every
   other attention head frozen** to its base-run output (``hook_z``), so the senders'
   change cannot travel through other heads. MLPs are recomputed as in Wang et al. and
   ARENA (``freeze_mlps=False``, the default; effects may pass through MLPs, which those
   works treat as part of the direct path), or also frozen (``freeze_mlps=True``: the
   path is strictly direct, sender -> residual stream -> receiver).
3. Receivers:

   - ``"resid_final"``: the final residual stream of step 2 goes through the final norm
     and unembedding; the metric is read there.
   - heads' ``q``/``k``/``v`` inputs ``[(layer, head, "q"), ...]``: their input residual
     from step 2 is stored, and a *second* pass runs the base input with only those
     inputs replaced (nothing frozen); the metric is read at the output. A receiver that
     no sender can reach (its layer is not after any sender's) is not changed; if no
     receiver can be reached the result is exactly the base run's metric (0 for
     ``fraction_recovered`` in denoise mode).

With ``freeze_mlps=True`` step 2 needs no forward pass: the residual stream at layer ``R``
is the base run's plus the senders' changed writes (``(z_src - z_base)[head] @ W_O[head]``
for a head, ``mlp_out_src - mlp_out_base`` for an MLP) from layers before ``R``. For
``"resid_final"`` the result is then exactly each sender's *direct effect*:
``unembed(ln_final(resid_final_base + delta))``, the final norm recomputing its scale on
the changed residual (not frozen).

**Senders.** ``"all_heads"`` (each head separately; result axes ``("layer", "head")``),
``"all_mlps"`` (axes ``("layer",)``), or a list whose entries are nodes -- ``(layer, head)``
for a head, ``(layer, "mlp")`` for an MLP, or the strings ``"L3H2"`` / ``"MLP3"`` -- or
lists of nodes patched *together* (axis ``("sender",)``, labels like ``"L3H2+L4H1"``).
The sweep is batched over senders: many sender groups share each forward pass.

**Receivers.** ``"resid_final"`` or a list of ``(layer, head, inputs)``, ``inputs`` a
string of ``q``, ``k``, ``v`` (``"q"``, ``"v"``, ``"qkv"``...). On grouped-query models
the head index of ``k``/``v`` receivers counts key/value heads (as for the ``k``/``v``
sites of :func:`~mechlens.patching.activation_patch`); use separate tuples for ``q`` and
``k``/``v`` there. All receivers are patched together.

Example (circuit discovery: which heads feed the sentiment readers' values?)::

    direct = path_patch(model, ds, "all_heads", "resid_final")        # (layer, head)
    movers = path_patch(model, ds, "all_heads", [(10, 1, "v"), (10, 4, "v")])
    pair = path_patch(model, ds, [[(6, 4), (7, 1)]], "resid_final")  # a group at once
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechlens.engine import (
    HooksRunner,
    PatchMetric,
    SuffixRunner,
    base_run,
    cached_run,
    check_mode,
    chunks,
    copies_per_pass,
    first_true,
    prepare_dataset,
    progress_iter,
    resolve_backend,
)
from mechlens.engine.sites import get_site, resolve_layers
from mechlens.model_protocol import check_model
from mechlens.patching.result import PatchResult
from mechlens.results import provenance
from mechlens.validate import check_layer

__all__ = ["path_patch", "Node", "parse_node"]


@dataclass(frozen=True)
class Node:
    """A sender: attention head ``(layer, head)`` or the MLP of ``layer`` (``head=None``)."""

    layer: int
    head: int | None = None

    @property
    def is_mlp(self) -> bool:
        return self.head is None

    def __str__(self) -> str:
        return f"MLP{self.layer}" if self.is_mlp else f"L{self.layer}H{self.head}"


def parse_node(model: Any, spec: Any) -> Node:
    """``(layer, head)``, ``(layer, "mlp")``, ``"L3H2"``, ``"MLP3"`` or a :class:`Node` -> Node."""
    if isinstance(spec, Node):
        layer, head = spec.layer, spec.head
    elif isinstance(spec, str):
        m = re.fullmatch(r"\s*L(\d+)H(\d+)\s*|\s*(?:MLP|M)(\d+)\s*|\s*L(\d+)\s*MLP\s*", spec, re.IGNORECASE)
        if not m:
            raise ValueError(f"sender {spec!r} is not a node: write 'L3H2' (head), 'MLP3', (3, 2) or (3, 'mlp')")
        if m.group(1) is not None:
            layer, head = int(m.group(1)), int(m.group(2))
        else:
            layer, head = int(m.group(3) or m.group(4)), None
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], int):
        layer = spec[0]
        if isinstance(spec[1], str):
            if spec[1].lower() != "mlp":
                raise ValueError(f"sender {spec!r}: the second entry is a head index or 'mlp'")
            head = None
        else:
            head = spec[1]
    else:
        raise ValueError(f"sender {spec!r} is not a node: write (layer, head), (layer, 'mlp'), 'L3H2' or 'MLP3'")
    layer = check_layer(model, layer, what="sender layer")
    if head is not None:
        n = model.cfg.n_heads
        if not isinstance(head, int) or isinstance(head, bool) or not -n <= head < n:
            raise ValueError(f"sender head {head!r} is out of range: the model has heads 0..{n - 1}")
        head %= n
    return Node(layer, head)


def _is_node(e: Any) -> bool:
    return isinstance(e, (str, Node)) or (
        isinstance(e, (tuple, list)) and len(e) == 2 and isinstance(e[0], int) and not isinstance(e[0], bool)
    )


def _sender_groups(model: Any, senders: Any, layers: Any) -> tuple[list[list[Node]], tuple[str, ...], dict, list[int]]:
    """-> (groups, axes, labels, result shape)."""
    if isinstance(senders, str) and senders in ("all_heads", "all_mlps"):
        layer_list = resolve_layers(model, layers)
        if senders == "all_heads":
            heads = list(range(model.cfg.n_heads))
            groups = [[Node(lay, h)] for lay in layer_list for h in heads]
            return groups, ("layer", "head"), {"layer": layer_list, "head": heads}, [len(layer_list), len(heads)]
        if "blocks.0.hook_mlp_out" not in model.hook_dict:
            raise ValueError("senders='all_mlps' but this model has no MLP outputs (blocks.{l}.hook_mlp_out)")
        return [[Node(lay)] for lay in layer_list], ("layer",), {"layer": layer_list}, [len(layer_list)]
    if layers is not None:
        raise ValueError("layers= only applies to senders='all_heads' or 'all_mlps'")
    if _is_node(senders):
        senders = [senders]
    if not isinstance(senders, (list, tuple)) or not senders:
        raise ValueError(
            "senders must be 'all_heads', 'all_mlps' or a non-empty list of nodes ((layer, head), "
            "(layer, 'mlp'), 'L3H2', 'MLP3') or of lists of nodes to patch together"
        )
    groups = []
    for entry in senders:
        nodes = [parse_node(model, entry)] if _is_node(entry) else [parse_node(model, e) for e in entry]
        if not nodes:
            raise ValueError("a sender group is empty")
        groups.append(sorted(set(nodes), key=lambda x: (x.layer, -1 if x.head is None else x.head)))
    names = ["+".join(str(x) for x in g) for g in groups]
    return groups, ("sender",), {"sender": names}, [len(groups)]


@dataclass(frozen=True)
class _Receiver:
    layer: int
    head: int
    which: str  # "q", "k" or "v"

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}.{self.which}"


def _receivers(model: Any, receivers: Any) -> list[_Receiver] | None:
    if isinstance(receivers, str):
        if receivers in ("resid_final", "final", "logits"):
            return None
        raise ValueError(f"receivers={receivers!r}: use 'resid_final' or a list of (layer, head, 'q'|'k'|'v')")
    if isinstance(receivers, tuple) and len(receivers) == 3 and isinstance(receivers[0], int):
        receivers = [receivers]
    if not isinstance(receivers, (list, tuple)) or not receivers:
        raise ValueError("receivers must be 'resid_final' or a non-empty list of (layer, head, inputs)")
    n_h = model.cfg.n_heads
    n_kv = int(getattr(model.cfg, "n_key_value_heads", None) or n_h)
    out = []
    for r in receivers:
        if not (isinstance(r, (tuple, list)) and len(r) == 3 and isinstance(r[2], str)):
            raise ValueError(f"receiver {r!r} must be (layer, head, inputs) with inputs like 'q', 'v' or 'qkv'")
        layer, head, which = r
        layer = check_layer(model, layer, what="receiver layer")
        letters = which.lower()
        if not letters or set(letters) - set("qkv"):
            raise ValueError(f"receiver {r!r}: inputs must be letters of 'qkv', got {which!r}")
        for w in sorted(set(letters), key="qkv".index):
            n = n_h if w == "q" else n_kv
            if not isinstance(head, int) or isinstance(head, bool) or not -n <= head < n:
                kind = "key/value heads" if w != "q" and n_kv != n_h else "heads"
                raise ValueError(f"receiver {r!r}: head {head!r} is out of range for {w!r} ({kind} 0..{n - 1})")
            if len(letters) > 1 and n_kv != n_h and w != "q":
                raise ValueError(
                    f"receiver {r!r}: on this grouped-query model k/v receivers index the {n_kv} key/value "
                    "heads and q receivers the query heads; give them as separate tuples"
                )
            out.append(_Receiver(layer, head % n, w))
    return sorted(set(out), key=lambda x: (x.layer, x.which, x.head))


def path_patch(
    model: Any,
    ds: Any,
    senders: Any = "all_heads",
    receivers: Any = "resid_final",
    *,
    metric: str | Callable[..., Tensor] = "fraction_recovered",
    mode: str = "denoise",
    position: Any = "all",
    receiver_position: Any = "all",
    layers: Any = None,
    freeze_mlps: bool = False,
    batch_size: int | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> PatchResult:
    """Path patching from senders to receivers (see the module docstring for the semantics).

    Args:
        model: a TransformerLens model.
        ds: a :class:`~mechlens.data.ContrastDataset`.
        senders: ``"all_heads"``, ``"all_mlps"``, or a list of nodes / node groups.
        receivers: ``"resid_final"`` or a list of ``(layer, head, "q"|"k"|"v"|"qkv"...)``.
        metric: ``"fraction_recovered"``, ``"logit_diff"`` or ``metric(logits, ds) -> [batch]``.
        mode: ``"denoise"`` (base = corrupt, senders from clean) or ``"noise"`` (base =
            clean, senders from corrupt: Wang et al.'s setting).
        position: where the senders are patched, together: ``"all"`` (the default), a
            position name, an index, a list of them (their union) or a ``[batch, pos]`` mask
            (:meth:`ContrastDataset.position_mask`).
        receiver_position: where receivers' q/k/v inputs are patched (same forms; default all).
        layers: with ``"all_heads"`` / ``"all_mlps"``: only senders in these layers.
        freeze_mlps: also freeze MLP outputs (strictly direct paths); default ``False`` as in
            Wang et al. / ARENA.
        batch_size: sequences per forward pass (default 128).
        progress: progress bar.
        backend: ``"fast"``, ``"hooks"`` or ``"auto"`` (see :mod:`mechlens.engine`); the same
            numbers either way.

    Returns:
        :class:`PatchResult` with ``method="path"``, ``site="path"``; axes ``("layer", "head")``
        for ``"all_heads"``, ``("layer",)`` for ``"all_mlps"``, else ``("sender",)``.
        ``meta`` records the receivers, positions and ``freeze_mlps``.
    """
    args = dict(locals())  # the call's settings, recorded in the result
    check_model(model)
    check_mode(mode)
    ds = prepare_dataset(model, ds)
    groups, axes, labels, shape = _sender_groups(model, senders, layers)
    recv = _receivers(model, receivers)
    b, n = ds.batch, model.cfg.n_layers
    send_mask = ds.position_mask(position)
    recv_mask = ds.position_mask(receiver_position)
    if recv is None and ds.position_label(receiver_position) != "all":
        raise ValueError("receiver_position only applies to q/k/v receivers (the final residual is read at the end)")
    if freeze_mlps and any(x.head is not None for g in groups for x in g):
        _check_head_writes(model)

    recv_layers = sorted({r.layer for r in recv}) if recv is not None else [n]
    head_layers = {x.layer for g in groups for x in g if not x.is_mlp}
    mlp_layers = {x.layer for g in groups for x in g if x.is_mlp}
    starts = {g[0].layer for g in groups}
    names = {f"blocks.{lay}.attn.hook_z" for lay in head_layers}
    names |= {f"blocks.{lay}.hook_mlp_out" for lay in mlp_layers}
    if recv is not None:
        names |= {f"blocks.{lay}.hook_resid_pre" for lay in recv_layers} | set(_receiver_hooks(model, recv))
    if freeze_mlps:
        if recv is None:
            names.add(f"blocks.{n - 1}.hook_resid_post")
    else:
        names |= {f"blocks.{lay}.attn.hook_z" for lay in range(min(starts), n)}
        names |= {f"blocks.{lay}.hook_resid_pre" for lay in starts}
        if resolve_backend(model, backend) == "fast":  # attention outputs the fast backend can stand in
            names |= {f"blocks.{lay}.hook_attn_out" for lay in range(min(starts), n)}
    # the base run holds the clean and the corrupt prompts: datasets larger than half a pass
    # run in chunks of examples, normalised by the whole dataset's means (the same numbers)
    parts, means = PatchMetric.example_parts(model, ds, metric, batch_size)
    outs, bases = [], []
    for part in progress_iter(parts, progress and len(parts) > 1, "path patching, examples"):
        one = len(parts) == 1
        sub = ds if one else ds[list(part)]
        out, pm = _path_part(
            model, sub, groups, recv, send_mask if one else send_mask[part.start : part.stop],
            recv_mask if one else recv_mask[part.start : part.stop], recv_layers, names, starts, freeze_mlps,
            mode, metric, backend, batch_size, progress and one, means,
        )
        outs.append(out)
        bases.append(pm.baselines)
    per_example = torch.cat(outs, dim=1)

    return PatchResult(
        per_example=per_example.view(*shape, b),
        axes=axes,
        labels=labels,
        metric=pm.name,
        site="path",
        mode=mode,
        method="path",
        **provenance(model, ds, args=args),
        baselines={kk: torch.cat([bl[kk].float().cpu() for bl in bases]) for kk in bases[0]},
        meta={
            "receivers": "resid_final" if recv is None else [str(r) for r in recv],
            "senders": senders if isinstance(senders, str) else labels.get("sender", []),
            "position": ds.position_label(position),
            "receiver_position": ds.position_label(receiver_position),
            "freeze_mlps": freeze_mlps,
        },
    )


def _path_part(
    model: Any, ds: Any, groups: list[list[Node]], recv: Any, send_mask: Tensor, recv_mask: Tensor,
    recv_layers: list[int], names: set[str], starts: set[int], freeze_mlps: bool, mode: str, metric: Any,
    backend: str, batch_size: int | None, progress: bool, means: tuple[Tensor, Tensor] | None,
) -> tuple[Tensor, PatchMetric]:
    """Every sender group on the examples of ``ds`` (a chunk of the dataset, or all of it)."""
    b, n = ds.batch, model.cfg.n_layers
    tokens = torch.cat([ds.clean_tokens, ds.corrupt_tokens])
    runner: SuffixRunner | HooksRunner
    if resolve_backend(model, backend) == "fast":
        run = base_run(model, tokens, names)
        logits, cache = run.logits, run.cache
        runner = run.runner(model, slice(b, None) if mode == "denoise" else slice(0, b))
    else:
        logits, cache = cached_run(model, tokens, names)
        runner = HooksRunner(model, ds.corrupt_tokens if mode == "denoise" else ds.clean_tokens)
    clean = {k: v[:b] for k, v in cache.items()}
    corrupt = {k: v[b:] for k, v in cache.items()}
    base, source = (corrupt, clean) if mode == "denoise" else (clean, corrupt)
    base_logits = logits[b:] if mode == "denoise" else logits[:b]
    pm = PatchMetric(metric, ds, logits[:b], logits[b:], means=means)
    per_example = torch.empty(len(groups), b)

    # Groups that reach no receiver, or whose senders' source values equal the base values
    # wherever they are patched, leave the base run unchanged: its metric, exactly.
    first_change = _first_changes(model, groups, base, source, send_mask)
    reach = [
        first_change[i] is not None and (recv is None or any(x.layer < r.layer for x in g for r in recv))
        for i, g in enumerate(groups)
    ]
    base_metric = pm(base_logits).detach().float().cpu()
    for i, ok in enumerate(reach):
        if not ok:
            per_example[i] = base_metric
    todo = [i for i, ok in enumerate(reach) if ok]
    todo.sort(key=lambda i: groups[i][0].layer)  # rows join the pass at their first sender's layer
    k_max = copies_per_pass(batch_size, b)
    # Position skipping (fast backend): with every head frozen nothing moves between
    # positions in step 2, so it needs only the positions read afterwards (the last one for
    # a metric read there, the receivers' positions) where the senders change something;
    # step 3 is causal, so it starts at the first receiver position the senders changed.
    # Earlier positions take the base run's keys and values.
    frozen_from = receive_from = 0
    if runner.can_skip_positions:
        first_recv = int(recv_mask.any(0).nonzero().min()) if recv_mask.any() else 0
        if recv is not None:
            frozen_from = first_recv
            receive_from = first_recv if pm.output == "last" else 0
        elif pm.output == "last":
            frozen_from = ds.seq_len - 1

    def writes(g: list[Node], layer: int) -> Tensor:
        """Freeze-all residual change at the input of ``layer`` (``n`` = final) for group g."""
        total = torch.zeros(b, ds.seq_len, model.cfg.d_model, dtype=base_logits.dtype, device=base_logits.device)
        for x in g:
            if x.layer >= layer:
                continue
            if x.is_mlp:
                name = f"blocks.{x.layer}.hook_mlp_out"
                d = source[name] - base[name]
            else:
                name = f"blocks.{x.layer}.attn.hook_z"
                dz = (source[name] - base[name])[:, :, x.head]
                d = dz @ model.blocks[x.layer].attn.W_O[x.head].to(dz.dtype)
            total = total + torch.where(send_mask[..., None], d, torch.zeros_like(d))
        return total

    with torch.no_grad():
        for chunk in progress_iter(chunks(len(todo), k_max), progress, "path patching"):
            idx = [todo[i] for i in chunk]
            gs = [groups[i] for i in idx]
            k = len(gs)
            changed_from = min(first_change[i] for i in idx) if runner.can_skip_positions else 0
            # ---- step 2: each group's receiver inputs (or final residual)
            offset = max(receive_from, changed_from) if pm.output == "last" else receive_from
            if freeze_mlps:
                patched = {
                    lay: torch.cat([
                        (base[f"blocks.{lay}.hook_resid_pre"] if lay < n else base[f"blocks.{n - 1}.hook_resid_post"])
                        + writes(g, lay)
                        for g in gs
                    ])
                    for lay in recv_layers
                }
                if recv is None:
                    x = patched[n] if pm.output == "all" else patched[n][:, -1:]
                    out = model.unembed(model.ln_final(x))
                else:
                    values = _receiver_values(model, runner, recv, patched, offset)
            else:
                # the logits of every position are read when the metric takes them all
                frozen_at = frozen_from if recv is None and pm.output == "all" else max(frozen_from, changed_from)
                out, values = _frozen_pass(model, runner, gs, base, source, send_mask, b, n, recv, pm.output,
                                           frozen_at)
                # positions offset..frozen_at are ones step 2 leaves unchanged or step 3 does not patch
                values = {nm: torch.cat([base[nm][:, offset:frozen_at].repeat(k, 1, 1, 1), v], dim=1)
                          for nm, v in values.items()}
            # ---- step 3: a normal pass with only the receivers' q/k/v replaced
            if recv is not None:
                out = _receiver_pass(model, runner, recv, values, base, recv_mask, gs, b, pm.output, offset)
            per_example[idx] = pm(out).detach().float().cpu().view(k, b)

    return per_example, pm


def _first_changes(
    model: Any, groups: list[list[Node]], base: dict, source: dict, send_mask: Tensor,
) -> list[int | None]:
    """Per group, the first position where a sender's source value differs from its base
    value (``None``: nowhere, the group changes nothing). Before it, every activation of the
    patched runs is the base run's (attention is causal)."""
    firsts: dict[Node, int | None] = {}
    for x in {x for g in groups for x in g}:
        if x.is_mlp:
            name = f"blocks.{x.layer}.hook_mlp_out"
            differs = (source[name] != base[name]).any(-1)
        else:
            name = f"blocks.{x.layer}.attn.hook_z"
            differs = (source[name][:, :, x.head] != base[name][:, :, x.head]).any(-1)
        f = int(first_true((differs & send_mask.to(differs.device)).any(0), 0))
        firsts[x] = f if f >= 0 else None
    out = []
    for g in groups:
        found = [firsts[x] for x in g if firsts[x] is not None]
        out.append(min(found) if found else None)
    return out


def _check_head_writes(model: Any) -> None:
    """A head's write must be z @ W_O (no norm or scale after the head sum) for frozen paths."""
    try:
        from transformer_lens.tools.analysis.attribution_patching import (
            _attention_write_obstruction,
        )
    except ImportError:  # pragma: no cover - older TransformerLens
        return
    detail = _attention_write_obstruction(model)
    if detail is not None:
        raise ValueError(
            f"freeze_mlps=True computes each head's write as z @ W_O, but on this model {detail}; "
            "use freeze_mlps=False"
        )


def _frozen_pass(
    model: Any, runner: SuffixRunner | HooksRunner, gs: list[list[Node]], base: dict, source: dict, send_mask: Tensor,
    b: int, n: int, recv: list[_Receiver] | None, output: str, offset: int = 0,
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Step 2 as a forward pass: senders from the source run, every other head frozen to the
    base run, MLPs recomputed. Returns logits (final receivers) or, for q/k/v receivers, the
    values the receivers' heads compute from it (``{hook name: [groups * batch, pos, head,
    d_head]}``, the base run's for a group that starts after the receiver's layer).
    ``offset``: run positions ``offset..`` only (earlier ones are unchanged or never read)."""
    starts = [g[0].layer for g in gs]
    at = slice(offset, None)
    joins = [(s, base[f"blocks.{s}.hook_resid_pre"][:, at]) for s in starts]
    first = min(starts)
    mask = send_mask[:, at]
    # Where no head of any group is a sender and no receiver reads, every head is frozen to
    # the base run: the attention output is the base run's, and the fast backend adds it
    # without running attention (only the MLP is recomputed).
    frozen = set()
    if runner.can_replace_attention:
        busy = {x.layer for g in gs for x in g if not x.is_mlp} | {r.layer for r in recv or ()}
        frozen = {lay for lay in range(first, n) if lay not in busy}
    attention = {lay: base[f"blocks.{lay}.hook_attn_out"][:, at] for lay in frozen}
    hooks = []
    for lay in range(first, n):
        members = [j for j, s in enumerate(starts) if s <= lay]  # rows present at this layer, in order
        if lay not in frozen:
            zname = f"blocks.{lay}.attn.hook_z"
            z_base, z_src = base[zname][:, at], source[zname][:, at]
            target = z_base.repeat(len(members), 1, 1, 1)
            for r, j in enumerate(members):
                for x in gs[j]:
                    if x.layer == lay and not x.is_mlp:
                        rows = slice(r * b, (r + 1) * b)
                        target[rows, :, x.head] = torch.where(mask[..., None], z_src[:, :, x.head], z_base[:, :, x.head])
            hooks.append((zname, _replace_with(target)))
        mlp_rows = [(r, j) for r, j in enumerate(members) if any(x.is_mlp and x.layer == lay for x in gs[j])]
        if mlp_rows:
            mname = f"blocks.{lay}.hook_mlp_out"
            hooks.append((mname, _mlp_sender_hook(mlp_rows, source[mname][:, at], mask, b)))
    if recv is None:
        out, _ = runner.run(joins, hooks=hooks, output=output, offset=offset, attention=attention)
        return out, {}
    # the receivers' heads read their step-2 input as this pass runs their layers
    names = _receiver_hooks(model, recv)
    seen: dict[str, Tensor] = {}
    runner.run(joins, hooks=hooks + [(nm, _keep(seen, nm)) for nm in names], output="none",
               stop=max(r.layer for r in recv) + 1, offset=offset, attention=attention)
    values = {}
    for nm in names:
        lay = int(nm.split(".")[1])
        present = sum(s <= lay for s in starts)
        later = base[nm][:, at].repeat(len(gs) - present, 1, 1, 1)
        values[nm] = torch.cat([seen[nm], later]) if nm in seen else later
    return None, values


def _receiver_hooks(model: Any, recv: list[_Receiver]) -> list[str]:
    """The hooks of the receivers' q/k/v values (``blocks.L.attn.hook_q`` ...)."""
    return sorted({get_site(model, r.which).hook_name(r.layer) for r in recv})


def _receiver_values(
    model: Any, runner: SuffixRunner | HooksRunner, recv: list[_Receiver], patched: dict[int, Tensor], offset: int,
) -> dict[str, Tensor]:
    """The receivers' q/k/v values computed from given input residuals (``freeze_mlps``:
    step 2 has no forward pass): one block run per receiver layer."""
    values: dict[str, Tensor] = {}
    for lay in sorted({r.layer for r in recv}):
        names = [nm for nm in _receiver_hooks(model, recv) if int(nm.split(".")[1]) == lay]
        runner.run([(lay, patched[lay][:, offset:])], hooks=[(nm, _keep(values, nm)) for nm in names],
                   output="none", stop=lay + 1, offset=offset)
    return values


def _replace_with(target: Tensor) -> Callable:
    def hook(act: Tensor, hook: Any) -> Tensor:
        return target.to(act.dtype)

    return hook


def _mlp_sender_hook(rows: list[tuple[int, int]], src: Tensor, mask: Tensor, b: int) -> Callable:
    def hook(act: Tensor, hook: Any) -> Tensor:
        out = act.clone()
        for r, _ in rows:
            sl = slice(r * b, (r + 1) * b)
            out[sl] = torch.where(mask[..., None], src.to(act.dtype), act[sl])
        return out

    return hook


def _receiver_pass(
    model: Any, runner: SuffixRunner | HooksRunner, recv: list[_Receiver], values: dict[str, Tensor], base: dict,
    mask: Tensor, gs: list[list[Node]], b: int, output: str, offset: int = 0,
) -> Tensor:
    """Step 3: run the base input from the first receiver layer with the receivers' q/k/v
    set to ``values`` (what their heads compute from the step-2 residual; rows in the
    groups' order, positions ``offset..``); everything else computed normally. ``offset``:
    run positions ``offset..`` only (nothing before it is patched).

    A head's q (k, v) reads its input residual only through ``ln1`` and its own projection,
    so replacing its q/k/v *input* (``use_split_qkv_input``) and replacing its q/k/v
    *value* by the one computed from that input are the same intervention; this pass runs
    attention unsplit (the split mode computes a d_model input per head in every layer)."""
    k = len(gs)
    at = slice(offset, None)
    # a group's rows join at the first receiver it reaches: receivers in its senders' layers
    # or before them keep their base inputs, so nothing changes there
    joins = [min(r.layer for r in recv if r.layer > min(x.layer for x in g)) for g in gs]
    order = sorted(range(k), key=lambda j: joins[j])
    hooks = []
    for r in recv:
        present = [j for j in order if joins[j] <= r.layer]
        if not present:  # every group joins later: this receiver keeps its base input
            continue
        nm = get_site(model, r.which).hook_name(r.layer)
        v = values[nm].view(k, b, *values[nm].shape[1:])[torch.tensor(present)].flatten(0, 1)  # in join order
        hooks.append((nm, _heads_hook([r.head], v, mask[:, at], len(present))))
    out, _ = runner.run(
        [(lay, base[f"blocks.{lay}.hook_resid_pre"][:, at].repeat(joins.count(lay), 1, 1)) for lay in sorted(set(joins))],
        hooks=hooks, output=output, offset=offset,
    )
    assert out is not None
    # rows come out in the order they joined; put them back in the groups' order
    back = torch.empty(k, dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(k)
    return out.view(k, b, *out.shape[1:])[back.to(out.device)].reshape(out.shape)


def _keep(store: dict[str, Tensor], name: str) -> Callable:
    def hook(act: Tensor, hook: Any) -> None:
        store[name] = act.detach()

    return hook


def _heads_hook(heads: list[int], value: Tensor, mask: Tensor, k: int) -> Callable:
    m = mask.repeat(k, 1)[..., None]

    def hook(act: Tensor, hook: Any) -> Tensor:  # act: [rows, pos, head, d_head]
        out = act.clone()
        for h in heads:
            out[:, :, h] = torch.where(m, value[:, :, h].to(act.dtype), act[:, :, h])
        return out

    return hook
