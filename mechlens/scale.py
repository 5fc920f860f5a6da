"""Sweeps on Ray: split one sweep over several processes or machines.

**The idea.** A sweep (activation patching over layers x positions x heads, an ablation
sweep, ...) measures one cell at a time, so it can be split along a swept axis: the
workers each run the same method on a slice of the axis (``layers=[0, 1, 2]``,
``layers=[3, 4, 5]``, ...), and the slices are put back together in order. Each worker
is a Ray actor that loads the model once, from a :class:`ModelSpec` (a model does not
pickle cheaply, a name and keyword arguments do), and then runs one chunk after another.

Example::

    from mechlens.data import toy_movie_review
    from mechlens.models import load_model
    from mechlens.scale import ModelSpec, sweep

    ds = toy_movie_review(load_model("smollm2-135m"), "train")
    res = sweep("smollm2-135m", "activation_patch", ds, workers=2, out="runs/resid",
                site="resid_pre", metric="logit_diff")
    res.plot()

``res`` is the :class:`~mechlens.patching.PatchResult` that ``activation_patch(model, ds,
site="resid_pre", metric="logit_diff")`` returns: the same axes, labels and provenance, and
``per_example`` concatenated along the chunked axis in the serial order.

**Exactness.** A chunk is the same method on fewer cells: its numbers equal the serial
run's up to float32 rounding, and bit for bit where each forward pass computes its rows as
in the serial run (measured: head z over all positions, ablation sweeps, and ``resid_pre``
on the tests' tiny models). Per-position sweeps on the fast backend trim each pass to the
positions its patches change, so a chunk's passes hold other rows, and CPU matrix kernels
round differently for different row counts: 2.9e-6 on smollm2-135m ``resid_pre`` (logit
difference). Labels, axes and provenance are always identical (docs/scale.md).

**Where it runs.** Locally by default (``ray.init`` on this machine, ``workers`` actors, the
CPUs shared between them); on a running Ray cluster with ``address="ray://host:10001"``
(or ``"auto"`` on a cluster node) or the ``MECHLENS_RAY_ADDRESS`` environment variable.
Where the cluster has GPUs each actor gets ``gpus_per_worker`` of them (default: one each,
or an equal share when there are fewer GPUs than workers) and loads its model on
``cuda``. If Ray is already initialised (``ray.init`` in your script), that session is used.

**Failures and resuming.** A chunk whose actor dies (out of memory, a lost node, a killed
process) is sent again to a fresh actor, up to ``retries`` times. With ``out=DIR`` every
finished chunk is saved there (``DIR/chunk-0003/``, written atomically) with a manifest of
the sweep's settings; running the same sweep with the same ``out`` loads the saved chunks
instead of recomputing them, and refuses to mix chunks of a sweep with other settings.

Any function ``fn(model, ds, **kwargs) -> Measurement`` whose result has the chunked axis
(or a result of tables that declares it, as :class:`~mechlens.directions.DirectionEvaluation`
declares ``layer``: ``sweep(spec, "evaluate_directions", train, test_ds=test)``) can be swept: pass it (a module-level function Ray can pickle) or its ``"module:function"``
path as ``method``.
"""

from __future__ import annotations

import importlib
import math
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechlens.engine import progress_bar
from mechlens.fileio import read_json, write_json
from mechlens.results import Result, concat, load_result

__all__ = [
    "ModelSpec", "Workers", "METHODS", "CHUNK_AXES", "sweep", "merge_results", "ray_address", "check_address",
    "RayClientMissingError",
]

#: sweeps known by name (any ``"module:function"`` path works too)
METHODS: dict[str, str] = {
    "activation_patch": "mechlens.patching.activation:activation_patch",
    "attribution_patch": "mechlens.patching.attribution:attribution_patch",
    "path_patch": "mechlens.patching.path:path_patch",
    "ablate_sweep": "mechlens.ablation:ablate_sweep",
    "logit_lens": "mechlens.lens:logit_lens",
    "direct_logit_attribution": "mechlens.lens:direct_logit_attribution",
    "edge_attribution_patch": "mechlens.circuits.eap:edge_attribution_patch",
    # ds is the training split; give test_ds=... (a DirectionEvaluation, split along layers)
    "evaluate_directions": "mechlens.directions.evaluate:evaluate",
}

#: the argument a chunk restricts -> the result axis it produces; ``"examples"`` splits the
#: dataset instead (any method whose per-example values do not depend on the other examples)
CHUNK_AXES: dict[str, str] = {
    "layers": "layer", "heads": "head", "positions": "pos", "neurons": "neuron", "examples": "example",
}

ADDRESS_ENV = "MECHLENS_RAY_ADDRESS"
#: seconds to wait for a cluster address to answer before giving up with a message
CONNECT_TIMEOUT_S = 10.0
#: seconds a new pool waits for its share (actors killed just before free theirs a moment later)
RESERVE_TIMEOUT_S = 10
_BUSY_HINT = (
    "(another Workers pool holds them?): close it (pool.close() or leave its with-block), "
    "or give sweep() the pool you have"
)


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads its model: ``load_model(name, **kwargs)``, or with ``name="tiny"``
    ``mechlens.models.tiny(**kwargs)``.

    ``ModelSpec("smollm2-135m")``, ``ModelSpec("EleutherAI/pythia-1.4b", {"dtype": "bfloat16"})``,
    ``ModelSpec.tiny("gpt2", n_layers=4)``. A dtype may be given as a string.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def tiny(cls, arch: str = "gpt2", **kwargs: Any) -> ModelSpec:
        return cls("tiny", {"arch": arch, **kwargs})

    @classmethod
    def coerce(cls, spec: Any) -> ModelSpec:
        if isinstance(spec, ModelSpec):
            return spec
        if isinstance(spec, (str, Path)):
            return cls(str(spec))
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            rest = {k: v for k, v in spec.items() if k != "name"}
            return cls(spec["name"], rest)
        if hasattr(spec, "cfg") and hasattr(spec, "run_with_hooks"):
            raise TypeError(
                "sweep() takes a model *spec*, not a loaded model (every worker loads its own copy): "
                "pass the name you gave load_model, e.g. ModelSpec('smollm2-135m'), or ModelSpec.tiny(...)"
            )
        raise TypeError(
            f"model_spec must be a ModelSpec, a load_model name or a dict with 'name', not {type(spec).__name__}"
        )

    def load(self, device: str | None = None) -> Any:
        from mechlens.models import load_model, tiny

        kw = dict(self.kwargs)
        if isinstance(kw.get("dtype"), str):
            dtype = getattr(torch, kw["dtype"], None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"ModelSpec dtype={kw['dtype']!r}: give a torch dtype name such as 'bfloat16'")
            kw["dtype"] = dtype
        split = kw.get("device_map") is not None or (kw.get("n_devices") or 1) > 1
        if device is not None and kw.get("device") is None and not split:
            kw["device"] = device
        if self.name == "tiny":
            return tiny(**kw)
        return load_model(self.name, **kw)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": {k: _describe(v) for k, v in sorted(self.kwargs.items())}}


def ray_address(address: str | None = None) -> str | None:
    """The cluster to use: ``address``, else ``$MECHLENS_RAY_ADDRESS``, else ``None`` (local)."""
    return address or os.environ.get(ADDRESS_ENV) or None


def _describe(v: Any) -> Any:
    """A JSON-able description of a sweep argument, for the resume manifest."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_describe(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _describe(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, torch.dtype):
        return str(v)
    if callable(v):
        return f"{getattr(v, '__module__', '?')}:{getattr(v, '__qualname__', repr(v))}"
    if hasattr(v, "fingerprint"):
        return f"{type(v).__name__}:{v.fingerprint()}"
    return repr(v)


def _resolve_method(method: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(method):
        return method
    path = METHODS.get(method, method)
    if ":" not in path:
        raise ValueError(
            f"method={method!r}: choose one of {sorted(METHODS)} or give 'module:function' (or the function)"
        )
    mod, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"method={method!r}: cannot import {path} ({exc})") from None


def _method_name(method: str | Callable[..., Any]) -> str:
    if callable(method):
        return f"{method.__module__}:{method.__qualname__}"
    return METHODS.get(method, method)


def full_axis(model: Any, ds: Any, chunk_axis: str, kwargs: dict[str, Any]) -> list[Any]:
    """Every value of the swept axis, in the order the serial sweep's result has them."""
    from mechlens.engine import prepare_dataset
    from mechlens.engine.sites import get_site, resolve_heads, resolve_layers

    given = kwargs.get(chunk_axis)
    if chunk_axis == "examples":
        return list(range(ds.batch))
    if chunk_axis == "layers":
        return resolve_layers(model, given)
    if chunk_axis == "heads":
        if "site" in kwargs:
            return resolve_heads(model, get_site(model, kwargs["site"]), given)
        n = int(model.cfg.n_heads)
    elif chunk_axis == "neurons":
        n = int(model.cfg.d_mlp)
    else:  # positions: None sweeps each position; a list sweeps its entries
        if given is None and "positions" in kwargs:
            return list(range(prepare_dataset(model, ds).seq_len))
        if isinstance(given, (list, tuple)):
            return list(given)
        raise ValueError(
            f"chunk_axis='positions' needs a swept positions axis: positions=None (each position) or a "
            f"list, not {given!r}" + ("" if "positions" in kwargs else " (pass positions=None explicitly)")
        )
    if given is None:
        return list(range(n))
    return [int(given)] if isinstance(given, int) else [int(x) for x in given]


# --------------------------------------------------------------------------- merging


def merge_results(parts: Sequence[Result], axis: str, ds: Any = None) -> Result:
    """Put chunk results back together along the result's own ``axis``
    (:func:`mechlens.results.concat`); with ``axis="example"`` the chunks ran on subsets of
    ``ds``, whose name and fingerprint the merged result takes."""
    if axis == "example":
        if parts and getattr(parts[0], "metric", None) == "fraction_recovered":
            raise ValueError(
                "chunk_axis='examples' splits the dataset, but metric='fraction_recovered' divides by the whole "
                "dataset's mean clean and corrupt logit differences, so chunks would differ from the serial run; "
                "use metric='logit_diff' or split along layers"
            )
        override = {} if ds is None else {"dataset": ds.name, "fingerprint": ds.fingerprint()}
        return concat(parts, "example", **override)
    return concat(parts, axis)


# --------------------------------------------------------------------------- the workers


class _Worker:
    """One Ray actor: loads the model once, then runs chunks of a sweep."""

    def __init__(self, spec: ModelSpec, threads: int, device: str | None) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        torch.set_num_threads(max(1, threads))
        self.model = spec.load(device)

    def peak_rss_mb(self) -> float:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB

    def axis(self, ds: Any, chunk_axis: str, kwargs: dict[str, Any]) -> list[Any]:
        return full_axis(self.model, ds, chunk_axis, kwargs)

    def run(self, method: Any, ds: Any, kwargs: dict[str, Any]) -> Result:
        res = _resolve_method(method)(self.model, ds, **kwargs)
        if not isinstance(res, Result):
            raise TypeError(f"method {_method_name(method)} returned {type(res).__name__}, not a mechlens Result")
        return res


def _chunk_dir(out: Path, i: int) -> Path:
    return out / f"chunk-{i:04d}"


def _save_chunk(out: Path, i: int, res: Result) -> None:
    # save to a temporary folder, then rename: a chunk folder is either complete or absent
    final = _chunk_dir(out, i)
    tmp = out / f".chunk-{i:04d}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    res.save(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _check_manifest(out: Path, settings: dict[str, Any], *, write: bool = True) -> None:
    """Refuse an ``out`` folder that holds a sweep with other settings (with ``write=False``
    only the keys given are compared: the check before the workers are started)."""
    path = out / "sweep.json"
    if path.exists():
        saved = read_json(path, fix=f"remove {out} or choose another out folder")
        if not write:
            saved = {k: v for k, v in saved.items() if k in settings}
        if saved != settings:
            keys = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            raise ValueError(
                f"{out} holds chunks of a sweep with other settings ({', '.join(keys)} differ); "
                f"use another out folder, or delete {out} to start again"
            )
    elif write:
        out.mkdir(parents=True, exist_ok=True)
        write_json(path, settings)


class RayClientMissingError(ImportError):
    """A ``ray://`` address was given but the Ray Client extra (``ray[client]``) is not installed."""


def check_address(address: str | None, *, source: str = "address", timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast, with a message naming ``source``, when ``address`` cannot work: a ``ray://``
    address without the Ray Client extra, a malformed address, or one where nothing answers
    within ``timeout`` seconds (Ray itself would retry for minutes)."""
    if address is None or address in ("auto", "local"):
        return
    named = f"{source}={address!r}" if source == "address" else f"${source}={address!r}"
    fix = f"fix address= or ${ADDRESS_ENV} (leave both unset to run Ray on this machine)"
    client = address.startswith("ray://")
    if client:
        try:
            importlib.import_module("grpc")
        except ImportError:
            raise RayClientMissingError(
                f"{named} is a Ray Client address (ray://...), which needs the client extra: "
                'pip install "ray[client]" (or, on a node of the cluster, use address="auto")'
            ) from None
    host, sep, port = address.removeprefix("ray://").rstrip("/").rpartition(":")
    if not sep:
        host, port = port, ("10001" if client else "6379")  # Ray's default ports
    if not host or not port.isdigit():
        raise ValueError(f"{named}: give host:port (e.g. '10.0.0.5:6379'), 'ray://host:10001' or 'auto'; {fix}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        why = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise ConnectionError(
            f"{named}: no Ray cluster answers at {host}:{port} ({why}, waited up to {timeout:g} s); "
            f"start one there (ray start --head) or {fix}"
        ) from None


def _init_ray(address: str | None, source: str = "address") -> bool:
    """Start (or connect to) Ray unless it is running; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    check_address(address, source=source)
    # quiet: no dashboard, no worker output on this terminal (errors still come back as exceptions)
    # (locally Ray counts the CPUs itself, container limits included)
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    return True


def _placement(workers: int, gpus_per_worker: float | None) -> tuple[float, float]:
    import ray

    total_gpus = float(ray.cluster_resources().get("GPU", 0))
    if gpus_per_worker is None:
        gpus_per_worker = min(1.0, total_gpus / workers) if total_gpus else 0.0
    if gpus_per_worker < 0 or (gpus_per_worker > 0 and gpus_per_worker * workers > total_gpus + 1e-9):
        raise ValueError(
            f"gpus_per_worker={gpus_per_worker} x {workers} workers needs more GPUs than the cluster has "
            f"({total_gpus:g})"
        )
    # what is free now: another Workers pool in this Ray session keeps its share reserved,
    # and actors asking for more than is free would wait for ever
    deadline = time.monotonic() + RESERVE_TIMEOUT_S
    while True:
        cpus = float(ray.available_resources().get("CPU", 0))
        if cpus >= 0.01 * workers or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if cpus < 0.01 * workers:
        raise RuntimeError(
            f"the Ray session has {cpus:g} CPUs free for {workers} workers {_BUSY_HINT}"
        )
    # share the free CPUs evenly (fractions where there are more workers than CPUs, so that
    # every actor can be placed)
    cpus_per_worker = max(0.01, min(cpus / workers, max(1.0, math.floor(cpus / workers))))
    return cpus_per_worker, gpus_per_worker


def _reserve(workers: int, cpus: float, gpus: float) -> Any:
    """Reserve every worker's share at once (a Ray placement group): the free resources read
    above are only a snapshot, and actors placed beyond what is free would wait for ever."""
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    group = placement_group([bundle] * workers, strategy="SPREAD")
    if not group.wait(timeout_seconds=RESERVE_TIMEOUT_S):
        remove_placement_group(group)
        raise RuntimeError(
            f"the Ray session could not reserve {cpus:g} CPUs{f' and {gpus:g} GPUs' if gpus else ''} for each of "
            f"{workers} workers within {RESERVE_TIMEOUT_S} s; fewer CPUs free than it reported {_BUSY_HINT}"
        )
    return group


def _positive_int(value: Any, name: str, *, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}: give an int >= {minimum}" + (" or None" if allow_none else ""))


class Workers:
    """A pool of Ray actors, each holding one loaded model; runs sweeps split across them.

    ``with Workers("smollm2-135m", workers=4) as pool:`` then ``pool.sweep(...)`` as often as
    needed (the models are loaded once). :func:`sweep` is the one-call form.

    Args:
        model_spec: what each worker loads: a :class:`ModelSpec`, a ``load_model`` name
            (``"smollm2-135m"``) or ``{"name": ..., **load_model_kwargs}``.
        workers: number of actors.
        address: a running Ray cluster (default ``$MECHLENS_RAY_ADDRESS``, else Ray on this
            machine). An already initialised Ray session is used as it is.
        gpus_per_worker: GPUs per actor (default: 1 each where the cluster has enough, an
            equal share where it has fewer, 0 without GPUs); with GPUs the model loads on cuda.
    """

    def __init__(
        self, model_spec: ModelSpec | str | dict, *, workers: int = 2, address: str | None = None,
        gpus_per_worker: float | None = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError("mechlens.scale needs Ray: pip install 'mechlens[ray]'") from None
        self.spec = ModelSpec.coerce(model_spec)
        _positive_int(workers, "workers")
        self.n = workers
        self._started = _init_ray(ray_address(address), "address" if address else ADDRESS_ENV)
        self._group = None
        try:
            self._cpus, self._gpus = _placement(workers, gpus_per_worker)
            self._group = _reserve(workers, self._cpus, self._gpus)
        except Exception:
            self.close()
            raise
        self._cls = ray.remote(_Worker)
        self.actors = [self._new_actor(slot) for slot in range(workers)]

    def _new_actor(self, slot: int) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        device = "cuda" if self._gpus > 0 else None
        # each actor lives in its slot's reserved bundle; a replacement takes the same bundle
        where = PlacementGroupSchedulingStrategy(self._group, placement_group_bundle_index=slot)
        return self._cls.options(
            num_cpus=self._cpus, num_gpus=self._gpus, max_restarts=0, scheduling_strategy=where
        ).remote(self.spec, max(1, int(self._cpus)), device)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the actors (and Ray, when this pool started it)."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for a in getattr(self, "actors", []):
            ray.kill(a, no_restart=True)
        self.actors = []
        if getattr(self, "_group", None) is not None:
            remove_placement_group(self._group)
            self._group = None
        if self._started:
            ray.shutdown()
            self._started = False

    def peak_rss_mb(self) -> list[float]:
        """Each worker's peak resident memory in MB (Linux); waits until every model is loaded."""
        import ray

        try:
            return ray.get([a.peak_rss_mb.remote() for a in self.actors])
        except ray.exceptions.RayActorError as exc:
            raise RuntimeError(f"a worker could not load the model {self.spec}: {exc}") from None

    def _get(self, ref: Any) -> Any:
        """``ray.get`` that re-raises a method's own error as itself."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None

    def sweep(
        self,
        method: str | Callable[..., Result],
        ds: Any,
        *,
        chunk_axis: str = "layers",
        chunk_size: int | None = None,
        out: str | Path | None = None,
        retries: int = 2,
        progress: bool = True,
        **kwargs: Any,
    ) -> Result:
        """Run ``method(model, ds, **kwargs)`` split along ``chunk_axis``; see :func:`sweep`."""
        import ray

        if not self.actors:
            raise RuntimeError("this Workers pool is closed; make a new one")
        _resolve_method(method)  # fail early on a bad name
        if chunk_axis not in CHUNK_AXES:
            raise ValueError(f"chunk_axis={chunk_axis!r}: choose one of {list(CHUNK_AXES)}")
        _positive_int(chunk_size, "chunk_size", allow_none=True)
        _positive_int(retries, "retries", minimum=0)
        if "model" in kwargs or "progress" in kwargs:
            raise TypeError("sweep() passes the model and progress itself; remove them from the method's arguments")
        from mechlens.data import ContrastDataset

        if not isinstance(ds, ContrastDataset):
            raise TypeError(f"ds must be a ContrastDataset, not {type(ds).__name__}")
        ds = ds.to("cpu")
        out_path = Path(out) if out is not None else None
        settings = {
            "method": _method_name(method), "model": self.spec.describe(), "dataset": ds.fingerprint(),
            "chunk_axis": chunk_axis, "kwargs": _describe(kwargs),
        }
        if out_path is not None:
            _check_manifest(out_path, settings, write=False)  # before any work

        try:
            values = self._get(self.actors[0].axis.remote(ds, chunk_axis, kwargs))
        except ray.exceptions.RayActorError as exc:
            raise RuntimeError(f"the worker could not load the model {self.spec}: {exc}") from None
        if not values:
            raise ValueError(f"{chunk_axis}: nothing to sweep")
        size = chunk_size or max(1, math.ceil(len(values) / (2 * self.n)))
        chunks = [values[i : i + size] for i in range(0, len(values), size)]
        if chunk_axis == "examples":
            kw_chunks = [{**kwargs, "progress": False} for _ in chunks]
            ds_chunks = [ds[list(c)] for c in chunks]
        else:
            kw_chunks = [{**kwargs, chunk_axis: list(c), "progress": False} for c in chunks]
            ds_chunks = [ds] * len(chunks)

        results: dict[int, Result] = {}
        if out_path is not None:
            _check_manifest(out_path, {**settings, "chunks": [_describe(c) for c in chunks]})
            for i in range(len(chunks)):
                if _chunk_dir(out_path, i).is_dir():
                    results[i] = load_result(_chunk_dir(out_path, i))

        todo = [i for i in range(len(chunks)) if i not in results]
        attempts = dict.fromkeys(todo, 0)
        idle = list(range(self.n))
        running: dict[Any, tuple[int, int]] = {}  # future -> (chunk, actor slot)
        dead = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError)
        with progress_bar(len(values), progress, f"sweep {chunk_axis} on {self.n} workers", leave=True) as bar:
            bar.update(sum(len(chunks[i]) for i in results))
            while todo or running:
                while todo and idle:
                    i, slot = todo.pop(0), idle.pop(0)
                    running[self.actors[slot].run.remote(method, ds_chunks[i], kw_chunks[i])] = (i, slot)
                (fut,), _ = ray.wait(list(running), num_returns=1)
                i, slot = running.pop(fut)
                try:
                    res = self._get(fut)
                except dead as exc:
                    attempts[i] += 1
                    if attempts[i] > retries:
                        raise RuntimeError(
                            f"chunk {i} ({chunk_axis}={chunks[i]}) failed {attempts[i]} times: its worker died "
                            f"({type(exc).__name__}); see the Ray logs (e.g. out of memory)"
                        ) from exc
                    ray.kill(self.actors[slot], no_restart=True)
                    self.actors[slot] = self._new_actor(slot)  # a fresh process loads the model again
                    todo.insert(0, i)
                    bar.set_postfix_str(f"retried chunk {i}")
                else:
                    if out_path is not None:
                        _save_chunk(out_path, i, res)
                    results[i] = res
                    bar.update(len(chunks[i]))
                idle.append(slot)
        return merge_results([results[i] for i in range(len(chunks))], CHUNK_AXES[chunk_axis], ds)


def sweep(
    model_spec: ModelSpec | str | dict,
    method: str | Callable[..., Result],
    ds: Any,
    *,
    workers: int = 2,
    chunk_axis: str = "layers",
    chunk_size: int | None = None,
    out: str | Path | None = None,
    address: str | None = None,
    gpus_per_worker: float | None = None,
    retries: int = 2,
    progress: bool = True,
    **kwargs: Any,
) -> Result:
    """Run ``method(model, ds, **kwargs)`` split along ``chunk_axis`` on ``workers`` Ray actors.

    Args:
        model_spec: what each worker loads: a :class:`ModelSpec`, a ``load_model`` name
            (``"smollm2-135m"``) or ``{"name": ..., **load_model_kwargs}``.
        method: ``"activation_patch"``, ``"ablate_sweep"``, a ``"module:function"`` path or a
            function ``fn(model, ds, **kwargs) -> Measurement`` (module-level, so Ray can send it);
            ``"evaluate_directions"`` (``ds`` the training split, ``test_ds=`` the test split).
        ds: the dataset (a ContrastDataset; sent to every worker).
        workers: number of actors (each holds one model).
        chunk_axis: the argument to split: ``"layers"`` (default), ``"heads"``,
            ``"positions"`` (give ``positions=None`` or a list) or ``"neurons"``; the result
            must have its axis. Or ``"examples"``: each worker runs the method on a subset of
            the prompts and the per-example values are concatenated (for methods whose
            per-example values do not depend on the other prompts: ``metric="logit_diff"``,
            edge attribution, logit lens, DLA; ``fraction_recovered`` is refused).
        chunk_size: axis entries per chunk (default: the axis split into ``2 * workers``
            chunks, so a slow chunk does not leave the other workers idle).
        out: a folder to save finished chunks in, and to resume from.
        address: a running Ray cluster (default ``$MECHLENS_RAY_ADDRESS``, else a local one).
        gpus_per_worker: GPUs per actor (default: 1 each where the cluster has enough, an
            equal share where it has fewer, 0 without GPUs).
        retries: times a chunk is resent after its worker died.
        progress: one progress bar over all workers, counting axis entries.
        **kwargs: the method's own arguments (``site``, ``metric``, ``positions``, ...).

    Returns:
        The result the serial ``method(model, ds, **kwargs)`` returns.
    """
    spec = ModelSpec.coerce(model_spec)
    _resolve_method(method)
    _positive_int(workers, "workers")
    if chunk_axis not in CHUNK_AXES:
        raise ValueError(f"chunk_axis={chunk_axis!r}: choose one of {list(CHUNK_AXES)}")
    from mechlens.data import ContrastDataset

    if not isinstance(ds, ContrastDataset):
        raise TypeError(f"ds must be a ContrastDataset, not {type(ds).__name__}")
    with Workers(spec, workers=workers, address=address, gpus_per_worker=gpus_per_worker) as pool:
        return pool.sweep(method, ds, chunk_axis=chunk_axis, chunk_size=chunk_size, out=out, retries=retries,
                          progress=progress, **kwargs)
