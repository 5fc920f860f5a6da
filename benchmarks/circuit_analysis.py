"""Benchmark: mechlens's ablation sweep and edge attribution patching against the same
computations written with plain TransformerLens hooks, on IOI.

Cases (each prints seconds for mechlens and for the plain version, their ratio and the
largest absolute difference of the per-example values):

  ablation  mean ablation of every head of ``--layers`` (``ablate_sweep(..., "heads", how="mean")``,
            fast backend) against a loop of ``model.run_with_hooks`` with one head's ``hook_z``
            replaced by its mean over the clean and corrupt prompts per position (in float64,
            rounded to float32), one head per pass.
  ablation-hooks  the same sweep on mechlens's hooks backend (full passes, heads stacked on
            the batch axis); with ``ablation`` in the same run it also prints fast / hooks.
  eap       ``edge_attribution_patch`` against a hand EAP: ``run_with_cache`` on the corrupt
            prompts, one clean forward with forward and backward hooks on the q/k/v inputs,
            MLP inputs and final residual, one backward, and the edge scores by einsum.
  eap-ig    ``eap_ig(..., interpolate="inputs", ig_steps=5)`` against the same hand EAP run
            five times with a forward hook interpolating the input embeddings from the corrupt
            to the clean prompt, the backward hooks accumulating the mean gradient.

Usage:
  python benchmarks/circuit_analysis.py                       # smollm2-135m, 16 IOI prompts
  python benchmarks/circuit_analysis.py --model tiny          # a 4-layer tiny GPT-2, seconds
  python benchmarks/circuit_analysis.py --threads 2 --layers 20-29 --n-prompts 16

The CPU is often shared: compare the ratios measured in one process, not absolute seconds
across runs.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

TINY_NAMES = ["John", "Mary", "Anna", "Tom", "Question"]


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


# ----------------------------------------------------------------------------- ablation


def plain_mean_ablation(model, ds, layers):
    """[layer, head, batch]: logit_diff(ablated) - logit_diff(clean), one run_with_hooks per head."""
    from mechlens.metrics import logit_diff

    names = [f"blocks.{layer}.attn.hook_z" for layer in layers]
    with torch.no_grad():
        ref = torch.cat([ds.clean_tokens, ds.corrupt_tokens])
        _, cache = model.run_with_cache(ref, names_filter=lambda n: n in names)
        # the mean rounded once from float64, as mechlens takes it (a float32 running sum
        # rounds differently in the last bit)
        means = {n: cache[n].double().mean(0, keepdim=True).float() for n in names}
        base = logit_diff(model(ds.clean_tokens), ds.answers)
        out = torch.empty(len(layers), model.cfg.n_heads, ds.batch)
        for i, layer in enumerate(layers):
            name = f"blocks.{layer}.attn.hook_z"
            for h in range(model.cfg.n_heads):
                def hook(z, hook, h=h, name=name):
                    z = z.clone()
                    z[:, :, h] = means[name][:, :, h]
                    return z

                logits = model.run_with_hooks(ds.clean_tokens, fwd_hooks=[(name, hook)])
                out[i, h] = logit_diff(logits, ds.answers) - base
    return out


def ours_mean_ablation(model, ds, layers, backend="auto"):
    from mechlens.ablation import ablate_sweep

    return ablate_sweep(model, ds, "heads", how="mean", layers=layers, progress=False, backend=backend).per_example


# ----------------------------------------------------------------------------- EAP


def plain_eap(model, ds, steps=1):
    """[sender, receiver, batch] edge scores, written with plain TransformerLens hooks; with
    ``steps > 1`` EAP-IG (inputs): the clean run repeated with the input embeddings
    interpolated from corrupt to clean (alpha = k / steps, k = 1..steps), gradients averaged."""
    from mechlens.metrics import logit_diff
    from mechlens.model_protocol import is_bridge

    n = model.cfg.n_layers
    bridge = is_bridge(model)
    q_in = (lambda layer, w: f"blocks.{layer}.attn.hook_{w}_input") if bridge else (
        lambda layer, w: f"blocks.{layer}.hook_{w}_input")
    mlp_in = (lambda layer: f"blocks.{layer}.ln2.hook_in") if bridge else (lambda layer: f"blocks.{layer}.hook_mlp_in")
    senders = ["blocks.0.hook_resid_pre"] + [x for layer in range(n) for x in
                                             (f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out")]
    receivers = [x for layer in range(n) for x in (q_in(layer, "q"), q_in(layer, "k"), q_in(layer, "v"), mlp_in(layer))]
    receivers.append(f"blocks.{n - 1}.hook_resid_post")
    model.set_use_split_qkv_input(True)
    if not bridge:
        model.set_use_hook_mlp_in(True)
    try:
        with torch.no_grad():
            _, corrupt = model.run_with_cache(ds.corrupt_tokens, names_filter=lambda x: x in senders)
            if steps > 1:
                _, clean_cache = model.run_with_cache(ds.clean_tokens, names_filter=lambda x: x in senders)
        clean, grads = {}, {}

        def save(name):  # keyed by the name asked for (a bridge's hook may carry another name)
            def hook(act, hook):
                clean[name] = act.detach()
                if name == "blocks.0.hook_resid_pre" and not act.requires_grad:
                    return act.detach().requires_grad_(True)
                return act

            return hook

        def save_grad(name):
            def hook(grad, hook):
                grads[name] = grads.get(name, 0) + grad.detach() / steps

            return hook

        def interpolate(alpha):
            def hook(act, hook):
                e_clean, e_corrupt = clean_cache[senders[0]], corrupt[senders[0]]
                return (e_corrupt + alpha * (e_clean - e_corrupt)).requires_grad_(True)

            return hook

        for k in range(1, steps + 1):
            model.reset_hooks()
            if steps > 1:
                model.add_hook(senders[0], interpolate(k / steps))
            for s in senders:
                model.add_hook(s, save(s))
            for r in receivers:
                model.add_hook(r, save_grad(r), dir="bwd")
            with torch.enable_grad():
                logits = model(ds.clean_tokens)
                logit_diff(logits, ds.answers).sum().backward()
        if steps > 1:
            clean = dict(clean_cache)
    finally:
        model.reset_hooks()
        model.set_use_split_qkv_input(False)
        if not bridge:
            model.set_use_hook_mlp_in(False)
    ups = [(corrupt[senders[0]] - clean[senders[0]])[:, :, None]]
    for layer in range(n):
        z = f"blocks.{layer}.attn.hook_z"
        dz = corrupt[z] - clean[z]
        ups.append(torch.einsum("bphe,hem->bphm", dz, model.blocks[layer].attn.W_O.detach()))
        m = f"blocks.{layer}.hook_mlp_out"
        ups.append((corrupt[m] - clean[m])[:, :, None])
    up = torch.cat(ups, 2)
    downs = [grads[r] if grads[r].ndim == 4 else grads[r][:, :, None] for r in receivers]
    down = torch.cat(downs, 2)
    s = torch.einsum("bpud,bprd->urb", up, down)
    # keep only real edges (a receiver after its sender), as mechlens does
    from mechlens.circuits.eap import eap_nodes

    valid = torch.tensor(eap_nodes(model)[2])
    return s * valid[:, :, None]


def ours_eap(model, ds):
    from mechlens.circuits.eap import edge_attribution_patch

    return edge_attribution_patch(model, ds, progress=False).per_example


def ours_eap_ig(model, ds, steps):
    from mechlens.circuits.eap import eap_ig

    return eap_ig(model, ds, interpolate="inputs", ig_steps=steps, progress=False).per_example


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="'smollm2-135m' (default) or 'tiny' (4-layer GPT-2)")
    ap.add_argument("--n-prompts", type=int, default=16)
    ap.add_argument("--layers", default=None, help="ablation layers, e.g. 20-29 (default: all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cases", default="ablation,ablation-hooks,eap,eap-ig")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from mechlens.data import ioi
    from mechlens.models import load_model, tiny

    warnings.simplefilter("ignore")
    if args.model == "tiny":
        model = tiny("gpt2", n_layers=4, seed=0)
        ds = ioi(model, args.n_prompts, names=TINY_NAMES)
    else:
        model = load_model(args.model)
        ds = ioi(model, args.n_prompts)
    n = model.cfg.n_layers
    if args.layers:
        a, _, b = args.layers.partition("-")
        layers = list(range(int(a), int(b or a) + 1))
    else:
        layers = list(range(n))
    print(f"model {args.model}: {n} layers x {model.cfg.n_heads} heads; IOI {ds.batch} prompts x {ds.seq_len} tokens; "
          f"torch threads {torch.get_num_threads()}")
    print("| case | mechlens | plain TransformerLens hooks | ratio (plain / mechlens) | max abs diff |")
    print("|---|---:|---:|---:|---:|")
    seconds = {}
    plain_ablation = None
    for case in args.cases.split(","):
        if case in ("ablation", "ablation-hooks"):
            backend = "fast" if case == "ablation" else "hooks"
            t_ours, ours = _timed(lambda b=backend: ours_mean_ablation(model, ds, layers, b))
            if plain_ablation is None:
                plain_ablation = _timed(lambda: plain_mean_ablation(model, ds, layers))
            t_plain, plain = plain_ablation
            what = f"mean ablation ({backend} backend), {len(layers)} layers x {model.cfg.n_heads} heads"
        elif case == "eap":
            ours_eap(model, ds[:2])  # warm-up (hook set-up, allocator)
            t_ours, ours = _timed(lambda: ours_eap(model, ds))
            t_plain, plain = _timed(lambda: plain_eap(model, ds))
            what = f"edge attribution patching, {ours.shape[0]} x {ours.shape[1]} edges"
        elif case == "eap-ig":
            ours_eap(model, ds[:2])  # warm-up (hook set-up, allocator)
            t_ours, ours = _timed(lambda: ours_eap_ig(model, ds, 5))
            t_plain, plain = _timed(lambda: plain_eap(model, ds, steps=5))
            what = f"EAP-IG (inputs, 5 steps), {ours.shape[0]} x {ours.shape[1]} edges"
        else:
            raise SystemExit(f"unknown case {case!r}")
        seconds[case] = t_ours
        diff = float((ours.float() - plain.float()).abs().max())
        print(f"| {what} | {t_ours:.2f} s | {t_plain:.2f} s | {t_plain / t_ours:.2f}x | {diff:.2g} |", flush=True)
    if "ablation" in seconds and "ablation-hooks" in seconds:
        print(f"\nablation, fast backend vs hooks backend: {seconds['ablation-hooks'] / seconds['ablation']:.2f}x")


if __name__ == "__main__":
    main()
