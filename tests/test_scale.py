"""mechlens.scale: a sweep split over 2 local Ray workers equals the serial run, survives a
worker dying mid-sweep, and resumes from saved chunks. One Ray session for the module
(starting Ray takes ~15 s on a small machine)."""

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from mechlens.ablation import ablate_sweep  # noqa: E402
from mechlens.data import toy_movie_review  # noqa: E402
from mechlens.patching import activation_patch  # noqa: E402
from mechlens.scale import ModelSpec, Workers, merge_results, sweep  # noqa: E402

pytestmark = pytest.mark.subprocess  # starts Ray and its worker processes

SPEC = ModelSpec.tiny("gpt2", n_layers=4, seed=0)


def logged_patch(model, ds, *, log, crash_layer=None, crash_marker=None, **kwargs):
    """activation_patch that records each call's layers in ``log``; with ``crash_marker``
    present, the call whose layers hold ``crash_layer`` kills its process once."""
    with open(log, "a") as f:
        f.write(json.dumps(kwargs["layers"]) + "\n")
    if crash_marker and os.path.exists(crash_marker) and crash_layer in kwargs["layers"]:
        os.remove(crash_marker)
        os._exit(1)  # the worker process dies mid-sweep, as on an out-of-memory kill
    return activation_patch(model, ds, **kwargs)


def _calls(log: Path) -> list[list[int]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _same(a, b, skip=("settings", "version")) -> None:
    """Every field equal (tensors bit for bit), whatever the result class."""
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in skip:
            continue
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f.name
        elif isinstance(x, dict) and x and all(isinstance(v, torch.Tensor) for v in x.values()):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f.name
        else:
            assert x == y, f.name


@pytest.fixture(scope="module")
def ray_session():
    # the workers get this test module by value (it is not importable from their sys.path)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(ray_session):
    with Workers(SPEC, workers=2) as p:
        yield p


@pytest.fixture(scope="module")
def model_ds():
    model = SPEC.load()
    return model, toy_movie_review(model, "train")[:4]


def test_sweep_equals_serial(ray_session, model_ds):
    model, ds = model_ds
    res = sweep(SPEC, "activation_patch", ds, workers=2, progress=False, site="resid_pre")
    _same(res, activation_patch(model, ds, "resid_pre", progress=False))


def test_sweep_survives_a_killed_worker(pool, model_ds, tmp_path):
    model, ds = model_ds
    serial = activation_patch(model, ds, "resid_pre", progress=False)
    log, marker = tmp_path / "calls.log", tmp_path / "crash"
    marker.touch()
    # chunks [0] [1] [2] [3]: layer 3 is the last chunk, run by a worker that already finished one
    res = pool.sweep(logged_patch, ds, chunk_size=1, progress=False,
                     site="resid_pre", log=str(log), crash_layer=3, crash_marker=str(marker))
    _same(res, serial)
    assert not marker.exists()  # the crash did happen
    calls = _calls(log)
    assert sorted(map(tuple, calls)) == [(0,), (1,), (2,), (3,), (3,)]  # chunk [3] ran twice


def test_head_sweep_and_ablation_equal_serial(pool, model_ds):
    model, ds = model_ds
    serial = activation_patch(model, ds, "z", positions="all", metric="logit_diff", progress=False)
    res = pool.sweep("activation_patch", ds, chunk_axis="heads", progress=False,
                     site="z", positions="all", metric="logit_diff")
    _same(res, serial)
    assert res.axes == ("layer", "head") and res.labels["head"] == [0, 1, 2, 3]
    abl = pool.sweep("ablate_sweep", ds, progress=False, how="zero")
    _same(abl, ablate_sweep(model, ds, how="zero", progress=False))


def test_any_sweep_splits_and_merges_along_its_own_axis(pool, model_ds):
    """Logit lens split over layers; edge attribution and DLA split over examples: the merged
    result equals the serial one (one generic merge, mechlens.results.concat)."""
    from mechlens.circuits.eap import edge_attribution_patch
    from mechlens.lens import direct_logit_attribution, logit_lens

    model, ds = model_ds
    lens = pool.sweep("logit_lens", ds, progress=False, positions=None)
    _same(lens, logit_lens(model, ds, positions=None, progress=False))
    eap = pool.sweep("edge_attribution_patch", ds, chunk_axis="examples", chunk_size=2, progress=False)
    serial = edge_attribution_patch(model, ds, progress=False)
    assert eap.labels == serial.labels and eap.dataset == serial.dataset and eap.fingerprint == serial.fingerprint
    torch.testing.assert_close(eap.per_example, serial.per_example, atol=1e-5, rtol=1e-4)
    dla = pool.sweep("direct_logit_attribution", ds, chunk_axis="examples", chunk_size=3, progress=False)
    torch.testing.assert_close(dla.per_example, direct_logit_attribution(model, ds, progress=False).per_example,
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="fraction_recovered"):
        pool.sweep("activation_patch", ds, chunk_axis="examples", progress=False, site="resid_pre")


def test_direction_evaluation_splits_over_layers(pool, model_ds):
    """directions.evaluate on 2 workers, split along layers (a result of [method, layer] tables,
    merged by the same concat): every table equals the serial run's."""
    from mechlens.directions import evaluate

    model, _ = model_ds
    # fit on the test split, patch on the train split: on this random tiny model the test split's
    # clean and corrupt accuracies are equal, which leaves the logit flip undefined
    train, test = toy_movie_review(model, "test"), toy_movie_review(model, "train")
    kw = dict(methods=["mean_diff", "pca"], n_random=2, seed=0)
    serial = evaluate(model, train, test, progress=False, **kw)
    res = pool.sweep("evaluate_directions", train, chunk_size=1, progress=False, test_ds=test, **kw)
    # The directions are fitted bit for bit alike; the patched runs start at the first position
    # where clean and corrupt differ when the process's engine verified position skipping for
    # these prompts, else they run whole sequences: the same numbers to float rounding.
    patched = ("ld_recovered", "logit_flip", "random_ld_recovered", "random_logit_flip")
    _same(res, serial, skip=("settings", "version", "meta", *patched))
    for name in patched:
        torch.testing.assert_close(getattr(res, name), getattr(serial, name), atol=1e-5, rtol=0)
    assert res.layers == [0, 1, 2, 3]
    timing = ("fit_seconds", "total_seconds")
    assert {k: v for k, v in res.meta.items() if k not in timing} == {
        k: v for k, v in serial.meta.items() if k not in timing}


def test_resume_reuses_saved_chunks(pool, model_ds, tmp_path):
    model, ds = model_ds
    out, log = tmp_path / "run", tmp_path / "calls.log"
    kw = dict(chunk_size=1, out=out, progress=False, site="resid_pre", log=str(log))
    first = pool.sweep(logged_patch, ds, **kw)
    assert len(_calls(log)) == 4
    assert sorted(p.name for p in out.iterdir()) == ["chunk-0000", "chunk-0001", "chunk-0002", "chunk-0003",
                                                     "sweep.json"]
    # an interrupted sweep: one chunk was never saved
    import shutil

    shutil.rmtree(out / "chunk-0002")
    again = pool.sweep(logged_patch, ds, **kw)
    assert _calls(log)[4:] == [[2]]  # only the missing chunk was computed
    _same(again, first)
    _same(again, activation_patch(model, ds, "resid_pre", progress=False))
    # other settings are not mixed with the saved chunks
    with pytest.raises(ValueError, match="other settings.*kwargs"):
        pool.sweep(logged_patch, ds, **{**kw, "metric": "logit_diff"})
    assert len(_calls(log)) == 5  # refused before any work


def test_bad_arguments_fail_before_any_work(model_ds, tmp_path):
    model, ds = model_ds
    with pytest.raises(TypeError, match="model \\*spec\\*"):
        sweep(model, "activation_patch", ds, site="resid_pre")
    with pytest.raises(ValueError, match="workers=0"):
        sweep(SPEC, "activation_patch", ds, workers=0, site="resid_pre")
    with pytest.raises(ValueError, match="chunk_axis='rows'"):
        sweep(SPEC, "activation_patch", ds, chunk_axis="rows", site="resid_pre")
    with pytest.raises(ValueError, match="method='patch_all'"):
        sweep(SPEC, "patch_all", ds, site="resid_pre")
    with pytest.raises(TypeError, match="ContrastDataset"):
        sweep(SPEC, "activation_patch", [1, 2], site="resid_pre")


def test_errors_from_the_method_come_back_as_themselves(pool, model_ds):
    _, ds = model_ds
    with pytest.raises(ValueError, match="layer"):
        pool.sweep("activation_patch", ds, site="resid_pre", layers=[0, 9], progress=False)
    with pytest.raises(ValueError, match="chunk_axis='positions' needs a swept positions axis"):
        pool.sweep("activation_patch", ds, site="z", positions="all", chunk_axis="positions", progress=False)


def test_gpus_per_worker_beyond_the_cluster_is_an_error(ray_session, model_ds):
    _, ds = model_ds
    with pytest.raises(ValueError, match="more GPUs than the cluster has"):
        sweep(SPEC, "activation_patch", ds, workers=2, gpus_per_worker=1, site="resid_pre")


def test_merge_refuses_parts_of_different_sweeps(model_ds):
    model, ds = model_ds
    a = activation_patch(model, ds, "resid_pre", layers=[0], metric="logit_diff", progress=False)
    b = activation_patch(model, ds, "resid_pre", layers=[1], metric="logit_diff", progress=False)
    c = activation_patch(model, ds, "resid_pre", layers=[1], progress=False)
    merged = merge_results([a, b], "layer")
    assert merged.labels["layer"] == [0, 1]
    assert torch.equal(merged.per_example, torch.cat([a.per_example, b.per_example]))
    with pytest.raises(ValueError, match="differs from part 0 in .*metric"):
        merge_results([a, c], "layer")
    with pytest.raises(ValueError, match="cannot be merged along 'head'"):
        merge_results([a, b], "head")


def test_reproduce_patching_stage_on_workers_equals_serial(pool, model_ds, tmp_path, monkeypatch):
    from mechlens.patching import PatchResult
    from mechlens.reproduce import reproduce_sentiment

    model, _ = model_ds
    reproduce_sentiment(model, tmp_path / "serial", fast=True, stages=["patching"], progress=False)
    reproduce_sentiment(model, tmp_path / "ray", fast=True, stages=["patching"], progress=False, workers=pool)
    for site in ("resid_pre", "z"):
        a = PatchResult.load(tmp_path / "serial" / "patching" / site)
        b = PatchResult.load(tmp_path / "ray" / "patching" / site)
        _same(b, a)
    with pytest.raises(ValueError, match="needs model_spec"):
        reproduce_sentiment(model, tmp_path / "x", stages=["patching"], workers=2)
    # a second pool while this one holds every CPU: a clear error, not actors waiting for ever
    with pytest.raises(RuntimeError, match="CPUs free"):
        reproduce_sentiment(model, tmp_path / "y", stages=["patching"], workers=2, model_spec=SPEC)
    # Ray's free-resource count is a snapshot; a stale one must not place actors that wait for ever
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 2.0})
    with pytest.raises(RuntimeError, match="could not reserve 1 CPUs for each of 2 workers"):
        Workers(SPEC, workers=2)
