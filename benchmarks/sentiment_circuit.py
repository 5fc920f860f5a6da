"""Benchmark: ``discover_sentiment_circuit(model, train)`` with default arguments on
smollm2-135m (ToyMovieReview train, 42 prompts), stage by stage.

Prints the seconds of the call and of its parts: the sentiment direction, path patching
every head into the final residual stream (direct heads), path patching every head below
them into their q/k/v (movers), the roles and the faithfulness runs (circuit against random
head sets). ``--compare`` also runs the call on the hooks backend (full ``run_with_hooks``
passes) in the same process and prints the ratio and whether the heads and numbers agree.

Usage:
  python benchmarks/sentiment_circuit.py                 # the fast backend (the default "auto")
  python benchmarks/sentiment_circuit.py --compare       # and the hooks backend (several minutes more)
  python benchmarks/sentiment_circuit.py --threads 1

Measure on an idle machine: beside another torch job the seconds mean little.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


@contextmanager
def timed_parts(seconds: dict[str, float]):
    """Add up the seconds spent in the circuit's parts (the functions it calls)."""
    import mechlens.circuits.sentiment as sentiment
    import mechlens.patching as patching

    parts = [  # (module, function, the part a call belongs to)
        (sentiment, "resolve_direction", lambda args: "direction"),
        (sentiment, "head_roles", lambda args: "roles"),
        (patching, "path_patch",
         lambda args: "path patching, direct heads" if args[3] == "resid_final" else "path patching, movers"),
    ]

    def timed(fn, part):
        def inner(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[part(args)] += time.perf_counter() - t

        return inner

    with ExitStack() as stack:
        for mod, name, part in parts:
            stack.enter_context(mock.patch.object(mod, name, timed(getattr(mod, name), part)))
        yield


def run(model, train, backend: str):
    from mechlens.circuits import discover_sentiment_circuit

    seconds: dict[str, float] = defaultdict(float)
    t = time.perf_counter()
    with timed_parts(seconds):
        circuit = discover_sentiment_circuit(model, train, progress=False, backend=backend)
    total = time.perf_counter() - t
    seconds["faithfulness and the rest"] = total - sum(seconds.values())
    return total, seconds, circuit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", action="store_true", help="also run the hooks backend and compare")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import mechlens
    from mechlens.data import toy_movie_review

    model = mechlens.load_model("smollm2-135m")
    train = toy_movie_review(model, "train")
    print(f"smollm2-135m, ToyMovieReview train ({train.batch} prompts), {torch.get_num_threads()} threads")
    total, parts, circuit = run(model, train, "auto")
    print(f"discover_sentiment_circuit (fast backend): {total:.1f} s")
    for label, s in parts.items():
        print(f"  {label}: {s:.1f} s")
    print(f"  heads: {circuit.heads}")
    if args.compare:
        h_total, _, h_circuit = run(model, train, "hooks")
        diff = max(
            float((circuit.direct_effect - h_circuit.direct_effect).abs().max()),
            float((circuit.mover_effect - h_circuit.mover_effect).abs().max()),
        )
        print(f"discover_sentiment_circuit (hooks backend): {h_total:.1f} s; fast is {h_total / total:.2f}x")
        print(f"  same heads: {circuit.heads == h_circuit.heads}; largest path-patching difference {diff:.2e}")


if __name__ == "__main__":
    main()
