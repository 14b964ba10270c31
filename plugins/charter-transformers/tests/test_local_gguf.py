"""GGUF model strings: `local/<file>.gguf` dequantized once into a cached checkpoint, clear errors.

The GGUF files here are real ones (written with the `gguf` library from the tiny random model,
read back by transformers' own GGUF loader), stored as F32 so the round trip can be exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from charter_transformers import gguf as gguf_mod
from charter_transformers.gguf import GGUFError, dequantized_dir, find_gguf
from charter_transformers.loading import clear_cache, get_model
from gguf_testdata import write_gguf

from charter.backends.base import BackendError
from charter.backends.registry import get_backend


@pytest.fixture(autouse=True)
def charter_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "charter-cache"
    monkeypatch.setenv("CHARTER_CACHE_DIR", str(cache))
    clear_cache()
    yield cache
    clear_cache()


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tiny_model, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf")


def test_cache_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHARTER_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_mod.cache_root() == tmp_path / "a"
    monkeypatch.delenv("CHARTER_CACHE_DIR")
    assert gguf_mod.cache_root() == tmp_path / "xdg" / "charter"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gguf_mod.cache_root() == tmp_path / "home" / ".cache" / "charter"


def test_gguf_round_trip_is_exact(tiny_gguf: Path, tiny_model: Path, charter_cache: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = get_model(str(tiny_gguf))
    sha = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    out = charter_cache / "gguf" / sha[:16]
    assert loaded.key[0] == str(out)
    record = json.loads((out / "charter_gguf.json").read_text())
    assert record["sha256"] == sha and record["source"] == str(tiny_gguf)
    # Nothing half-written is left beside it.
    assert sorted(p.name for p in (charter_cache / "gguf").iterdir() if p.is_dir()) == [sha[:16]]

    original = AutoTokenizer.from_pretrained(tiny_model)
    text = "Human: How do I stay safe online? <|end|> héllo 🙂"
    assert loaded.tokenizer(text)["input_ids"] == original(text)["input_ids"]
    assert loaded.tokenizer.chat_template == original.chat_template
    messages = [{"role": "user", "content": "hello"}]
    assert loaded.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    ) == original.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert loaded.eos_token_ids == frozenset({original.eos_token_id})

    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    ids = torch.tensor([original(text)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, reference(ids).logits)


def test_generate_and_score_through_the_model_string(tiny_gguf: Path, tiny_model: Path) -> None:
    from charter.backends.base import CompletionRequest

    gguf_backend = get_backend(f"local/{tiny_gguf}")
    dir_backend = get_backend(f"local/{tiny_model}")
    prompt, options = "The answer is:", [" (A)", " (B)"]
    assert asyncio.run(gguf_backend.score_options(prompt, options)) == pytest.approx(
        asyncio.run(dir_backend.score_options(prompt, options)), abs=1e-5
    )
    messages = [{"role": "user", "content": "hello"}]
    params = {"max_tokens": 8, "temperature": 0}
    got = asyncio.run(
        gguf_backend.complete(CompletionRequest(model=f"local/{tiny_gguf}", messages=messages, params=params))
    )
    want = asyncio.run(
        dir_backend.complete(CompletionRequest(model=f"local/{tiny_model}", messages=messages, params=params))
    )
    assert got.text == want.text and got.completion_tokens == want.completion_tokens


def test_converted_once_then_reused_also_for_a_copy(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = dequantized_dir(str(tiny_gguf))
    real_sha256 = gguf_mod.file_sha256
    calls: list[Path] = []
    monkeypatch.setattr(gguf_mod, "_convert", lambda path, name, target: calls.append(path))
    monkeypatch.setattr(gguf_mod, "file_sha256", lambda path: pytest.fail("rehashed an unchanged file"))
    assert dequantized_dir(str(tiny_gguf)) == first
    monkeypatch.setattr(gguf_mod, "file_sha256", real_sha256)
    # A copy elsewhere has the same content: hashed once (new path), not converted again.
    copy = tmp_path / "renamed.gguf"
    shutil.copyfile(tiny_gguf, copy)
    assert dequantized_dir(str(copy)) == first
    assert calls == []


def test_a_killed_conversion_is_never_reused(
    tiny_gguf: Path, charter_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_convert = gguf_mod._convert

    def dies_halfway(path: Path, name: str, target: Path) -> None:
        (target / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_mod, "_convert", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        dequantized_dir(str(tiny_gguf))
    leftovers = [p.name for p in (charter_cache / "gguf").iterdir() if p.is_dir()]
    assert leftovers == []
    monkeypatch.setattr(gguf_mod, "_convert", real_convert)
    out = dequantized_dir(str(tiny_gguf))
    assert (out / "model.safetensors").is_file() and (out / "charter_gguf.json").is_file()


def test_hub_repo_and_file_from_the_hf_cache(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    repo = hub / "models--charter-tests--tiny-GGUF"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    shutil.copyfile(tiny_gguf, snapshot / "tiny.Q8_0.gguf")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    assert find_gguf("charter-tests/tiny-GGUF/tiny.Q8_0.gguf") == (snapshot / "tiny.Q8_0.gguf").resolve()
    with pytest.raises(GGUFError) as missing:
        find_gguf("charter-tests/tiny-GGUF/other.gguf")
    assert str(missing.value) == (
        "local model 'charter-tests/tiny-GGUF/other.gguf' not found: no such file "
        f"{str(Path('charter-tests/tiny-GGUF/other.gguf').absolute())!r}, and 'other.gguf' of the hub repo "
        "'charter-tests/tiny-GGUF' is not in the local Hugging Face cache (never downloaded)"
    )


def test_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(BackendError) as exc:
        get_model(str(tmp_path / "nope.gguf"))
    assert (
        str(exc.value)
        == f"local model {str(tmp_path / 'nope.gguf')!r} not found: no such file {str(tmp_path / 'nope.gguf')!r}"
    )
    assert exc.value.retryable is False


def test_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>404 Not Found</html>")
    with pytest.raises(
        GGUFError, match=r"is not a GGUF file \(it does not start with the GGUF magic bytes\)"
    ):
        dequantized_dir(str(fake))


def test_a_truncated_gguf_file(tiny_gguf: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[:40])
    with pytest.raises(GGUFError, match=r"is not a readable GGUF file: the file ends inside its metadata"):
        dequantized_dir(str(cut))


def test_an_unsupported_architecture(tiny_model: Path, tmp_path: Path, charter_cache: Path) -> None:
    other = write_gguf(tiny_model, tmp_path / "other.gguf", architecture="charterlm")
    with pytest.raises(GGUFError) as exc:
        dequantized_dir(str(other))
    message = str(exc.value)
    assert message.startswith(
        f"local model {str(other)!r}: GGUF architecture 'charterlm' is not supported by transformers "
    )
    assert "llama" in message.split("(supported: ")[1]
    assert not (charter_cache / "gguf").exists() or not any(
        p.is_dir() for p in (charter_cache / "gguf").iterdir()
    )


def test_cli_names_the_bad_file_in_one_line(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "hi"}\n')
    fake = tmp_path / "weights.gguf"
    fake.write_bytes(b"PK\x03\x04 not gguf")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "charter",
            "revise",
            str(prompts),
            "--db",
            str(tmp_path / "x.duckdb"),
            "--model",
            f"local/{fake}",
            "--max-retries",
            "0",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CHARTER_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert result.returncode in (1, 2)
    assert f"local model {str(fake)!r}: {str(fake)!r} is not a GGUF file" in result.stderr
    assert "Traceback" not in result.stderr
