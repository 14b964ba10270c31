"""Loading local models once per process: device/dtype choice, the cache, and clear errors.

A model is keyed by (resolved path or hub id, device, dtype) and shared by every backend, step and
thread in the process. Loading is serialised per key, so concurrent first requests load it once.
A name ending in `.gguf` is a GGUF file, loaded from its dequantized checkpoint (see `gguf`).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charter.backends.base import BackendError

if TYPE_CHECKING:
    import torch

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}

# What `from_pretrained` accepts as a hub id: "name" or "namespace/name" (no leading dot or slash).
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.\-]*/)?[A-Za-z0-9][\w.\-]*$")


@dataclass
class LoadedModel:
    """A model with its tokenizer on one device, as shared by every backend in the process."""

    name: str
    key: tuple[str, str, str]
    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    pad_token_id: int
    eos_token_ids: frozenset[int]
    # The batching engine for this model, created on first use (see engine.get_engine).
    engine: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Fast tokenizers reconfigure themselves on every encode call and fail with "Already borrowed"
    # when two threads use one at once (huggingface/tokenizers#537): all use goes through this.
    tokenizer_lock: threading.RLock = field(default_factory=threading.RLock)


_cache: dict[tuple[str, str, str], LoadedModel] = {}
_cache_lock = threading.Lock()
_key_locks: dict[tuple[str, str, str], threading.Lock] = {}


def resolve_device(device: str | None = None) -> torch.device:
    """`device` if given, else cuda if available, else mps, else cpu."""
    import torch

    if device and device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """`dtype` if given; else bfloat16 on a CUDA device that supports it, float32 elsewhere.

    float32 on CPU and MPS because half-precision matmuls there are slow or inexact.
    """
    import torch

    if dtype and dtype != "auto":
        name = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
        if name is None:
            raise BackendError(
                f"unknown dtype {dtype!r} for a local model (use one of: float32, bfloat16, float16, auto)"
            )
        return getattr(torch, name)  # type: ignore[no-any-return]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def offline() -> bool:
    """Whether the Hugging Face hub is in offline mode (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    truthy = {"1", "on", "yes", "true"}
    return any(
        os.environ.get(v, "").strip().lower() in truthy for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


# GGUF model name -> its dequantized checkpoint directory, resolved once per process: requests
# call get_model each time, and hashing (or even an index lookup) per request is wasted work.
_gguf_dirs: dict[str, str] = {}


def _source(name: str) -> str:
    """The cache identity of `name`: an absolute path for an existing directory, else the hub id.

    A GGUF name becomes the directory of its dequantized checkpoint (converted on first use).
    """
    from charter_transformers.gguf import GGUFError, dequantized_dir, is_gguf_name

    if is_gguf_name(name):
        with _cache_lock:
            known = _gguf_dirs.get(name)
        if known is not None:
            return known
        try:
            directory = str(dequantized_dir(name))
        except GGUFError as exc:
            raise BackendError(str(exc), retryable=False) from exc
        with _cache_lock:
            _gguf_dirs[name] = directory
        return directory
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def _not_found(name: str, reason: str | None) -> BackendError:
    if not _HUB_ID.match(name):
        message = f"local model {name!r} not found: no such directory, and not a Hugging Face hub id (network not tried)"
    elif offline():
        message = (
            f"local model {name!r} not found: no such directory, and not a Hugging Face hub id in the local "
            "cache (HF_HUB_OFFLINE=1, network not tried)"
        )
    else:
        message = (
            f"local model {name!r} not found: no such directory, and the Hugging Face hub could not provide it "
            f"(network tried: {reason or 'no such model'})"
        )
    return BackendError(message, retryable=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _load(name: str, source: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    is_dir = Path(source).is_dir()
    if not is_dir and not _HUB_ID.match(name):
        raise _not_found(name, None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        if is_dir:
            raise BackendError(
                f"local model {name!r} could not be loaded: {_first_line(exc)}", retryable=False
            ) from exc
        raise _not_found(name, _first_line(exc)) from exc
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise BackendError(
            f"local model {name!r} could not be loaded: {_first_line(exc)}", retryable=False
        ) from exc
    model.to(device)
    model.eval()
    return model, tokenizer


def _special_ids(model: Any, tokenizer: Any) -> tuple[int, frozenset[int]]:
    eos: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            eos.add(value)
        elif isinstance(value, (list, tuple)):
            eos.update(int(v) for v in value)
    pad = tokenizer.pad_token_id
    if pad is None:
        # Padded positions are masked out, so any id works; eos is the conventional choice.
        pad = min(eos) if eos else 0
    return int(pad), frozenset(eos)


def get_model(name: str, *, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """The process-wide `LoadedModel` for a path or hub id, loading it on first use.

    With neither `device` nor `dtype` given, a copy already loaded for the same path is reused
    whatever its device, so scoring and generation through different backends share weights.
    Raises `BackendError` (not retryable) with one clear line when the model cannot be found.
    """
    source = _source(name)
    if device is None and dtype is None:
        with _cache_lock:
            for key, loaded in _cache.items():
                if key[0] == source:
                    return loaded
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    key = (source, str(dev), str(torch_dtype).removeprefix("torch."))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        model, tokenizer = _load(name, source, dev, torch_dtype)
        pad, eos = _special_ids(model, tokenizer)
        loaded = LoadedModel(
            name=name,
            key=key,
            model=model,
            tokenizer=tokenizer,
            device=dev,
            dtype=torch_dtype,
            pad_token_id=pad,
            eos_token_ids=eos,
        )
        with _cache_lock:
            _cache[key] = loaded
        return loaded


def loaded_models() -> list[tuple[str, str, str]]:
    """Keys (source, device, dtype) of the models loaded in this process."""
    with _cache_lock:
        return list(_cache)


def clear_cache() -> None:
    """Forget every loaded model (their engines stop); mainly for tests and notebooks."""
    with _cache_lock:
        models = list(_cache.values())
        _cache.clear()
        _key_locks.clear()
        _gguf_dirs.clear()
    for loaded in models:
        if loaded.engine is not None:
            loaded.engine.close()
