"""Loading once per process, clear one-line errors, and the plugin's registration."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from charter_transformers import loading

from charter.backends.base import BackendError, CompletionRequest
from charter.backends.registry import get_backend


def ask(model: str) -> None:
    backend = get_backend(model)
    request = CompletionRequest(
        model=model, messages=[{"role": "user", "content": "hi"}], params={"max_tokens": 2}
    )
    asyncio.run(backend.complete(request))


def test_missing_path_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendError) as info:
        ask("local/./ckpt/does-not-exist")
    message = str(info.value)
    assert message == (
        "local model './ckpt/does-not-exist' not found: no such directory, "
        "and not a Hugging Face hub id (network not tried)"
    )
    assert not info.value.retryable


def test_missing_hub_id_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackendError) as info:
        ask("local/charter-tests/no-such-model")
    assert str(info.value) == (
        "local model 'charter-tests/no-such-model' not found: no such directory, and not a Hugging Face hub id "
        "in the local cache (HF_HUB_OFFLINE=1, network not tried)"
    )
    assert "\n" not in str(info.value) and not info.value.retryable


def test_missing_model_in_score_options() -> None:
    backend = get_backend("local/./nowhere/x")
    with pytest.raises(BackendError, match=r"local model '\./nowhere/x' not found"):
        asyncio.run(backend.score_options("p", [" a"]))  # type: ignore[attr-defined]


def test_directory_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=f"local model '{tmp_path}' could not be loaded"):
        ask(f"local/{tmp_path}")


def test_model_loads_once_for_two_backends(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    loading.clear_cache()
    calls: list[str] = []
    original = AutoModelForCausalLM.from_pretrained.__func__  # type: ignore[attr-defined]

    def counting(cls: type, source: str, *args: object, **kwargs: object) -> object:
        calls.append(source)
        return original(cls, source, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    first = get_backend(f"local/{tiny_model}")
    # The same directory spelled differently is the same model.
    second = get_backend(f"local/{tiny_model}/../{tiny_model.name}")
    request = CompletionRequest(
        model=first.name, messages=[{"role": "user", "content": "hi"}], params={"max_tokens": 2}
    )

    async def both() -> None:
        await asyncio.gather(
            first.complete(request), second.complete(request.model_copy(update={"model": second.name}))
        )
        await second.score_options("The answer is:", [" (A)", " (B)"])  # type: ignore[attr-defined]

    asyncio.run(both())
    assert len(calls) == 1
    assert len(loading.loaded_models()) == 1


def test_plugin_registers_prefix_and_provider() -> None:
    from charter.backends.litellm_backend import import_litellm
    from charter.plugins import backend_factories

    assert "local/" in backend_factories()
    litellm = import_litellm()
    assert any(item["provider"] == "local" for item in litellm.custom_provider_map)


def test_device_and_dtype_defaults() -> None:
    import torch

    assert loading.resolve_device("cpu") == torch.device("cpu")
    assert loading.resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert loading.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
