"""Benchmark: mechlens.patching.activation_patch against transformer_lens.patching and nnsight.

The same sweep, five ways, each in its own subprocess (so peak memory is each method's own):

  tl       transformer_lens.patching on the TransformerBridge
  fast     mechlens, fast backend (the default on a TransformerBridge), 1 process
  hooks    mechlens, hooks backend (full ``run_with_hooks`` passes, what a HookedTransformer gets)
  ray2     mechlens fast backend split over 2 local Ray workers (``mechlens.scale``), models
           already loaded when the clock starts
  nnsight  nnsight 0.8 on the same weights (the Hugging Face model read from the same local
           cache as the bridge), written as nnsight's activation-patching guide writes it: one
           trace caches the clean activations, then one trace per layer with one invoke per
           position (resid_pre) or per head (z, patched on ``o_proj.input``)

Per case and method it prints the seconds of the sweep (model loading excluded), its time
over mechlens fast's timed again in the same process (the CPU is often shared and its speed
drifts between processes; the speed-ups over TransformerLens and over nnsight are ratios of
these same-process ratios), the largest absolute difference between
the per-example logit differences and mechlens fast's, and peak memory: resident set (RSS)
of the process (for ray2: the driver plus both workers), and with ``--device cuda`` the
peak CUDA memory allocated. It also prints mechlens fast's *compute floor*: the time a plain
batched forward pass would need for the share of layers the sweep must recompute.

Cases:
  a  tiny Llama-shaped model (4 layers), ToyMovieReview (2 prompts), resid_pre, every layer x position
  b  smollm2-135m, ToyMovieReview (2 prompts), resid_pre, all 30 layers x every position
  c  smollm2-135m, ToyMovieReview (2 prompts), head z over all positions (30 layers x 9 heads)

Usage:  python benchmarks/patching.py [--cases abc] [--methods tl,fast,hooks,ray2,nnsight]
                                      [--device cpu|cuda] [--threads N] [--repeats 1]

nnsight and Ray come with ``pip install 'mechlens[bench,ray]'``. The CPU is often shared:
compare ratios measured in one run rather than absolute seconds across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

METHODS = ("tl", "fast", "hooks", "ray2", "nnsight")
NAMES = {"tl": "TransformerLens", "fast": "mechlens fast", "hooks": "mechlens hooks",
         "ray2": "mechlens fast, 2 Ray workers", "nnsight": "nnsight"}
CASES = {"a": ("tiny Llama (4 layers), resid_pre", "resid_pre"),
         "b": ("smollm2-135m, resid_pre", "resid_pre"),
         "c": ("smollm2-135m, head z, all positions", "z")}
TINY = {"arch": "llama", "n_layers": 4, "seed": 0}


# --------------------------------------------------------------------------- the methods


def _positions(site):
    return None if site == "resid_pre" else "all"


def _tl_sweep(model, ds, site):
    import transformer_lens.patching as tlp

    from mechlens.metrics import logit_diff

    fn = {"resid_pre": tlp.get_act_patch_resid_pre, "z": tlp.get_act_patch_attn_head_out_all_pos}[site]
    dev = next(model.parameters()).device
    clean, corrupt = ds.clean_tokens.to(dev), ds.corrupt_tokens.to(dev)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        res = fn(model, corrupt, clean_cache, lambda lg: logit_diff(lg, ds.answers), reduce="none")
    return res.values


def _mechlens_sweep(model, ds, site, batch_size, backend):
    from mechlens.patching import activation_patch

    return activation_patch(model, ds, site, metric="logit_diff", positions=_positions(site),
                            batch_size=batch_size, progress=False, backend=backend).per_example


def _logit_diff(last, answers):
    picked = last.gather(-1, answers.flatten(1)).view(answers.shape)
    return picked[..., 0].mean(-1) - picked[..., 1].mean(-1)


def _nnsight_sweep(nn_model, ds, site):
    """Activation patching as nnsight's guide writes it (docs/patterns/activation-patching.md,
    'Layer x position map'; per head: per-head-attention.md, slicing the projection's input)."""
    import nnsight

    dev = next(nn_model._module.parameters()).device
    clean, corrupt, answers = ds.clean_tokens.to(dev), ds.corrupt_tokens.to(dev), ds.answers.to(dev)
    layers = nn_model.model.layers
    n = len(layers)
    grid = []
    with torch.no_grad():
        if site == "resid_pre":
            # resid_pre of layer L is the embedding output (L = 0) or block L-1's output
            with nn_model.trace(clean):
                cache = nnsight.save([nn_model.model.embed_tokens.output.detach()]
                                     + [layers[i].output.detach() for i in range(n - 1)])
            for layer in range(n):
                module = nn_model.model.embed_tokens if layer == 0 else layers[layer - 1]
                with nn_model.trace() as tracer:
                    row = nnsight.save([])
                    for pos in range(ds.seq_len):
                        with tracer.invoke(corrupt):
                            module.output[:, pos, :] = cache[layer][:, pos, :]
                            row.append(nn_model.output.logits[:, -1].detach())
                grid.append(torch.stack([_logit_diff(x, answers) for x in row]))
        else:  # z: each head's slice of o_proj's input, all positions
            cfg = nn_model._module.config
            d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            with nn_model.trace(clean):
                cache = nnsight.save([layers[i].self_attn.o_proj.input.detach() for i in range(n)])
            for layer in range(n):
                with nn_model.trace() as tracer:
                    row = nnsight.save([])
                    for head in range(cfg.num_attention_heads):
                        lo, hi = head * d_head, (head + 1) * d_head
                        with tracer.invoke(corrupt):
                            layers[layer].self_attn.o_proj.input[:, :, lo:hi] = cache[layer][:, :, lo:hi]
                            row.append(nn_model.output.logits[:, -1].detach())
                grid.append(torch.stack([_logit_diff(x, answers) for x in row]))
    return torch.stack(grid).float().cpu()


def _floor(model, ds, site, rows, repeats):
    """Seconds a plain batched forward needs for the sweep's share of layers."""
    n = model.cfg.n_layers
    dev = next(model.parameters()).device
    tokens = ds.clean_tokens[:1].repeat(rows, 1).to(dev)
    with torch.no_grad():
        model(tokens)  # warm-up
        dt, _ = _timed(lambda: model(tokens), repeats, dev)
    n_pos = ds.seq_len if site == "resid_pre" else 1
    n_heads = model.cfg.n_heads if site == "z" else 1
    share = sum((n - layer) / n for layer in range(n)) / n  # a patch at L recomputes L..n-1
    return n * n_pos * n_heads * ds.batch * share / (rows / dt)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, repeats, dev):
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        out = fn()
        _sync(dev)
        best = min(best, time.perf_counter() - t)
    return best, out


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --------------------------------------------------------------------------- one method, one process


def _child(args) -> None:
    """Run one method on the requested cases; write timings, memory and values to --out."""
    warnings.simplefilter("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    from mechlens.data import toy_movie_review
    from mechlens.models import cache_dir, load_model, tiny

    method, out = args.child, Path(args.out)
    small = args.cases == "a"
    device = torch.device(args.device)
    t0 = time.perf_counter()
    model = tiny(**TINY, device=args.device) if small else load_model("smollm2-135m", device=args.device)
    ds = toy_movie_review(model, "train")[:2]
    runner, extra_mb = None, []
    if method == "nnsight":
        from nnsight import TransformersModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if small:  # the tiny model's Hugging Face weights, rebuilt (the bridge processed its copy)
            from transformers import LlamaConfig, LlamaForCausalLM

            from mechlens.models import tiny_tokenizer

            tok = tiny_tokenizer()
            hf = _tiny_hf(LlamaConfig, LlamaForCausalLM, tok)
        else:  # the same local conversion cache load_model("smollm2-135m") reads
            folder = cache_dir() / "smollm2-135m-instruct"
            tok = AutoTokenizer.from_pretrained(folder)
            hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
        hf.eval().to(device)
        runner = TransformersModel(hf, tokenizer=tok)
    elif method == "ray2":
        from mechlens.scale import ModelSpec, Workers

        spec = ModelSpec.tiny(**TINY) if small else ModelSpec("smollm2-135m")
        runner = Workers(spec, workers=2)
        runner.peak_rss_mb()  # wait until both workers hold their model
    load_s = time.perf_counter() - t0
    loaded_mb = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    report = {"load_s": load_s, "loaded_rss_mb": loaded_mb, "cases": {}}
    from mechlens.engine import DEFAULT_BATCH_SIZE as ROWS_DEFAULT

    def sweep(site, how=method):
        if how == "tl":
            return _tl_sweep(model, ds, site)
        if how in ("fast", "hooks"):
            return _mechlens_sweep(model, ds, site, args.batch_size, how)
        if how == "ray2":
            return runner.sweep("activation_patch", ds, site=site, metric="logit_diff", positions=_positions(site),
                                batch_size=args.batch_size, progress=False).per_example
        return _nnsight_sweep(runner, ds, site)

    for case in args.cases:
        site = CASES[case][1]
        seconds, values = _timed(lambda s=site: sweep(s), args.repeats, device)
        torch.save(values.detach().float().cpu(), out / f"{method}-{case}.pt")
        report["cases"][case] = {"seconds": seconds}
    # peak memory of the method alone, before the reference runs below
    report["peak_rss_mb"] = _rss_mb()
    if device.type == "cuda":
        report["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if method == "ray2":
        extra_mb = runner.peak_rss_mb()
        report["workers_peak_rss_mb"] = extra_mb
        report["peak_rss_mb"] += sum(extra_mb)
        runner.close()
    for case in args.cases:
        site = CASES[case][1]
        entry = report["cases"][case]
        # mechlens fast again in this process: the shared CPU's speed drifts between
        # processes, so ratios are taken against this reference, measured minutes apart at most
        entry["reference_s"] = entry["seconds"] if method == "fast" else _timed(
            lambda s=site: sweep(s, "fast"), args.repeats, device)[0]
        if method == "fast":
            rows = min(args.batch_size or ROWS_DEFAULT,
                       model.cfg.n_layers * ds.batch * (ds.seq_len if site == "resid_pre" else model.cfg.n_heads))
            entry["floor_s"] = _floor(model, ds, site, rows, max(1, args.repeats))
    (out / f"{method}.json").write_text(json.dumps(report))


def _tiny_hf(config_cls, model_cls, tok):
    """The Hugging Face model inside ``tiny(**TINY)`` (same seed, same shapes)."""
    torch.manual_seed(TINY["seed"])
    d, heads = 64, 4
    cfg = config_cls(
        vocab_size=len(tok), max_position_embeddings=128, hidden_size=d, num_hidden_layers=TINY["n_layers"],
        num_attention_heads=heads, num_key_value_heads=heads // 2, intermediate_size=4 * d,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    hf = model_cls(cfg)
    hf.config._attn_implementation = "eager"
    return hf


# --------------------------------------------------------------------------- the table


def _run(method, cases, args, out) -> dict | None:
    cmd = [sys.executable, __file__, "--child", method, "--cases", cases, "--out", str(out),
           "--device", args.device, "--repeats", str(args.repeats)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    print(f"  running {NAMES[method]} ({cases}) ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        print(f"  {NAMES[method]} failed:\n{tail}", file=sys.stderr, flush=True)
        return None
    return json.loads((out / f"{method}.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="abc")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {','.join(METHODS)}")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=1, help="time each sweep this many times, keep the best")
    ap.add_argument("--batch-size", type=int, default=None, help="mechlens sequences per forward pass")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS] + [c for c in args.cases if c not in CASES]
    if bad or not methods:
        ap.error(f"unknown method(s)/case(s) {bad}; methods are {METHODS}, cases {list(CASES)}")
    if "fast" not in methods:
        ap.error("the table compares every method with mechlens fast: keep 'fast' in --methods")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available here")

    # the tiny case and the smollm2 cases load different models: one process per method and model
    groups = [g for g in ("a" if "a" in args.cases else "", "".join(c for c in args.cases if c != "a")) if g]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        reports = {(m, g): _run(m, g, args, out) for g in groups for m in methods}
        print(f"device: {args.device}, torch threads per process: {args.threads or 'default'}, "
              f"CPUs: {os.cpu_count()}")
        mem = "peak CUDA MB" if args.device.startswith("cuda") else "peak RSS MB"
        header = ["case", "method", "seconds", "/ fast (same process)", "vs TL", "vs nnsight", "max abs diff", mem,
                  "load s"]
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|")
        for g in groups:
            for case in g:
                got = {m: reports[(m, g)] for m in methods if reports[(m, g)] is not None}
                if "fast" not in got:
                    continue
                ref = torch.load(out / f"fast-{case}.pt")
                secs = {m: r["cases"][case]["seconds"] for m, r in got.items()}
                # each method's time in units of mechlens fast timed in the same process
                rel = {m: secs[m] / r["cases"][case]["reference_s"] for m, r in got.items()}
                for m, r in got.items():
                    vals = torch.load(out / f"{m}-{case}.pt")
                    diff = (vals - ref).abs().max().item() if vals.shape == ref.shape else float("nan")
                    vs_tl = f"{rel['tl'] / rel[m]:.1f}x" if "tl" in rel else "-"
                    vs_nn = f"{rel['nnsight'] / rel[m]:.1f}x" if "nnsight" in rel else "-"
                    peak = r.get("cuda_peak_mb", r["peak_rss_mb"])
                    print(f"| {CASES[case][0]} | {NAMES[m]} | {secs[m]:.2f} | {rel[m]:.2f} | {vs_tl} | {vs_nn} | "
                          f"{diff:.1e} | {peak:.0f} | {r['load_s']:.1f} |", flush=True)
        for g in groups:
            r = reports[("fast", g)]
            for case in g if r else ():
                c = r["cases"][case]
                print(f"compute floor, {CASES[case][0]}: {c['floor_s']:.2f} s "
                      f"(mechlens fast / floor = {c['seconds'] / c['floor_s']:.2f}x)")


if __name__ == "__main__":
    main()
