"""GGUF model files as local models: dequantized once into a normal checkpoint, reused after.

Two model strings name a GGUF file (after the `local/` prefix):

* `<path>.gguf`: a file on disk (absolute, relative or `~/...`);
* `<namespace>/<repo>/<file>.gguf`: a file of a Hugging Face hub repo, looked up in the local
  HF cache only (never downloaded), e.g. `local/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/x.gguf`.

transformers loads GGUF files (`from_pretrained(dir, gguf_file=NAME)`) by dequantizing every
tensor, which takes minutes for a 100M-parameter model on a small CPU, and the loaded model refuses
`save_pretrained`. So the weights are copied into a plain model built from the same config and
saved, with the tokenizer and its chat template, as an fp32 checkpoint in
`<cache>/gguf/<sha256[:16]>/`, where `<cache>` is `$CHARTER_CACHE_DIR`, else
`$XDG_CACHE_HOME/charter`, else `~/.cache/charter`. The directory is named by the file's content,
so a renamed or copied file reuses it; a small index keyed by (path, size, mtime) saves rehashing
the file on every run. The checkpoint is written into a temporary directory and renamed into place
when complete, so a killed conversion is never mistaken for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "GGUFError",
    "cache_root",
    "dequantized_dir",
    "file_sha256",
    "find_gguf",
    "is_gguf_name",
]

MAGIC = b"GGUF"
# Written last into a finished checkpoint: what it was made from.
RECORD_FILE = "charter_gguf.json"
_CHUNK = 1 << 20


class GGUFError(ValueError):
    """A GGUF model string that cannot be used: one line naming the file and the reason."""


def is_gguf_name(name: str | os.PathLike[str]) -> bool:
    """Whether a model name (without `local/`) names a GGUF file: it ends in `.gguf`."""
    return str(name).lower().endswith(".gguf")


def cache_root() -> Path:
    """charter's cache directory: $CHARTER_CACHE_DIR, else $XDG_CACHE_HOME/charter, else ~/.cache/charter."""
    explicit = os.environ.get("CHARTER_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "charter"


def find_gguf(name: str) -> Path:
    """The GGUF file a model name refers to: a path on disk, else `<ns>/<repo>/<file>` in the HF cache.

    Raises `GGUFError` when neither exists or the file does not start with the GGUF magic bytes.
    """
    path = Path(name).expanduser()
    if path.is_file():
        found = path.resolve()
    else:
        cached = _from_hf_cache(name)
        if cached is None:
            parts = name.split("/")
            hub = (
                f", and {'/'.join(parts[2:])!r} of the hub repo {'/'.join(parts[:2])!r} is not in the local "
                "Hugging Face cache (never downloaded)"
                if len(parts) >= 3 and not name.startswith(("/", ".", "~"))
                else ""
            )
            raise GGUFError(f"local model {name!r} not found: no such file {str(path.absolute())!r}{hub}")
        found = cached
    with open(found, "rb") as fh:
        head = fh.read(len(MAGIC))
    if head != MAGIC:
        raise GGUFError(
            f"local model {name!r}: {str(found)!r} is not a GGUF file (it does not start with the GGUF magic bytes)"
        )
    return found


def _from_hf_cache(name: str) -> Path | None:
    parts = name.split("/")
    if len(parts) < 3 or not all(parts) or name.startswith(("/", ".", "~")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache("/".join(parts[:2]), "/".join(parts[2:]))
    except Exception:  # a malformed repo id is simply not in the cache
        return None
    return Path(hit).resolve() if isinstance(hit, str) and Path(hit).is_file() else None


def file_sha256(path: Path) -> str:
    """The file's SHA-256 (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _index_path() -> Path:
    return cache_root() / "gguf" / "index.json"


def _read_index() -> dict[str, Any]:
    try:
        data = json.loads(_index_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: it is only a shortcut
        return {}
    return data if isinstance(data, dict) else {}


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _content_hash(path: Path) -> str:
    """The file's SHA-256, from the index when its size and mtime are unchanged since it was hashed."""
    stat = path.stat()
    key = str(path)
    entry = _read_index().get(key)
    if (
        isinstance(entry, dict)
        and entry.get("size") == stat.st_size
        and entry.get("mtime_ns") == stat.st_mtime_ns
        and isinstance(entry.get("sha256"), str)
    ):
        return str(entry["sha256"])
    sha = file_sha256(path)
    index = _read_index()  # re-read: another process may have added entries meanwhile
    index[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    with contextlib.suppress(OSError):  # a read-only cache still works, it just rehashes
        _write_json_atomic(_index_path(), index)
    return sha


def _is_complete(directory: Path) -> bool:
    return (directory / RECORD_FILE).is_file()


_thread_lock = threading.Lock()


@contextlib.contextmanager
def _conversion_lock(lock_path: Path) -> Iterator[None]:
    """One conversion of a file at a time, across threads and (where fcntl exists) processes."""
    with _thread_lock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: the atomic rename still keeps it correct
            yield
            return
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


# GGUF metadata value types (gguf spec): fixed widths, 8 = string, 9 = array.
_WIDTHS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def _read_architecture(fh: Any) -> str | None:
    """`general.architecture` from an open GGUF file, reading only the metadata before it.

    A few lines of the (simple, documented) format instead of gguf's reader, which parses every
    field, the whole vocabulary included, before answering.
    """

    def take(n: int) -> bytes:
        data = fh.read(n)
        if len(data) != n:
            raise EOFError("the file ends inside its metadata")
        return bytes(data)

    def u32() -> int:
        return int.from_bytes(take(4), "little")

    def u64() -> int:
        return int.from_bytes(take(8), "little")

    def skip(kind: int) -> None:
        if kind == _STRING:
            fh.seek(u64(), os.SEEK_CUR)
        elif kind == _ARRAY:
            item, count = u32(), u64()
            if item in _WIDTHS:
                fh.seek(_WIDTHS[item] * count, os.SEEK_CUR)
            else:
                for _ in range(count):
                    skip(item)
        elif kind in _WIDTHS:
            fh.seek(_WIDTHS[kind], os.SEEK_CUR)
        else:
            raise ValueError(f"unknown metadata value type {kind}")

    if take(4) != MAGIC:
        raise ValueError("no GGUF magic bytes")
    version = u32()
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old")
    u64()  # tensor count
    for _ in range(u64()):
        key = take(u64()).decode("utf-8", "replace")
        kind = u32()
        if key == "general.architecture" and kind == _STRING:
            return take(u64()).decode("utf-8")
        skip(kind)
    return None


def _architecture(path: Path, name: str) -> str:
    """The file's `general.architecture`, checked against what transformers can load."""
    from transformers import __version__ as transformers_version
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        with open(path, "rb") as fh:
            arch = _read_architecture(fh)
    except (OSError, ValueError, EOFError) as exc:
        raise GGUFError(f"local model {name!r}: {str(path)!r} is not a readable GGUF file: {exc}") from exc
    if arch is None:
        raise GGUFError(f"local model {name!r}: {str(path)!r} has no general.architecture field")
    # transformers maps a few llama.cpp names itself (e.g. qwen2moe -> qwen2_moe).
    known = {a.replace("_", "") for a in GGUF_SUPPORTED_ARCHITECTURES} | set(GGUF_SUPPORTED_ARCHITECTURES)
    if arch not in known and arch.replace("-", "").replace("_", "") not in known:
        raise GGUFError(
            f"local model {name!r}: GGUF architecture {arch!r} is not supported by transformers "
            f"{transformers_version} (supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})"
        )
    return arch


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _convert(path: Path, name: str, target: Path) -> None:
    """Dequantize `path` into the new directory `target` (fp32 weights, config, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        quantized: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise GGUFError(
            f"local model {name!r}: transformers could not load {str(path)!r}: {_first_line(exc)}"
        ) from exc
    config = quantized.config
    # The loaded model refuses save_pretrained; a plain model from the same config (without the
    # quantization marker, which would make from_pretrained look for the GGUF file again) does not.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(target)
    plain: Any = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    del quantized
    plain.save_pretrained(target)
    tokenizer.save_pretrained(target)
    saved = AutoTokenizer.from_pretrained(str(target))
    if tokenizer.chat_template and saved.chat_template != tokenizer.chat_template:
        raise GGUFError(f"local model {name!r}: the chat template did not survive saving the tokenizer")


def dequantized_dir(name: str) -> Path:
    """The fp32 checkpoint directory for a GGUF model name, converting the file on first use.

    Raises `GGUFError` (a `ValueError`) with one line for a missing file, a file that is not GGUF,
    an architecture transformers cannot load, or a conversion that fails.
    """
    path = find_gguf(name)
    sha = _content_hash(path)
    root = cache_root() / "gguf"
    target = root / sha[:16]
    if _is_complete(target):
        return target
    _architecture(path, name)
    root.mkdir(parents=True, exist_ok=True)
    with _conversion_lock(root / f"{sha[:16]}.lock"):
        if _is_complete(target):  # another process finished it while this one waited
            return target
        if target.exists():  # only a crash between rename and record could leave this
            shutil.rmtree(target, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{sha[:16]}.", suffix=".tmp"))
        try:
            print(
                f"charter: dequantizing {path.name} ({path.stat().st_size / 1e6:.0f} MB) once into {target}; "
                "this can take minutes, later runs reuse it",
                file=sys.stderr,
                flush=True,
            )
            started = time.perf_counter()
            _convert(path, name, tmp)
            record = {
                "source": str(path),
                "sha256": sha,
                "size": path.stat().st_size,
                "seconds": round(time.perf_counter() - started, 1),
            }
            (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
