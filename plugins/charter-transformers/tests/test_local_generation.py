"""Generation through `get_backend("local/...")` and litellm, in chat and completion mode."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from charter_transformers.backend import LocalBackend

from charter.backends.base import BackendError, Completion, CompletionRequest
from charter.backends.registry import get_backend


def chat(model: str, text: str = "hello world", **params: Any) -> CompletionRequest:
    n = params.pop("n", 1)
    return CompletionRequest(model=model, messages=[{"role": "user", "content": text}], params=params, n=n)


def completion(model: str, prompt: str = "Human: How do I stay safe?", **params: Any) -> CompletionRequest:
    n = params.pop("n", 1)
    return CompletionRequest(model=model, mode="completion", prompt=prompt, params=params, n=n)


def complete(model: str, request: CompletionRequest) -> Completion:
    return asyncio.run(get_backend(model).complete(request))


def test_registry_gives_local_backend(model_string: str) -> None:
    assert isinstance(get_backend(model_string), LocalBackend)


def test_chat_round_trip_with_n_choices(model_string: str) -> None:
    out = complete(model_string, chat(model_string, n=2, max_tokens=6, temperature=1.0, seed=0))
    assert len(out.texts) == 2
    assert len(out.finish_reasons) == 2
    assert all(r in {"stop", "length"} for r in out.finish_reasons)
    assert out.prompt_tokens > 0
    assert 0 < out.completion_tokens <= 12
    assert out.cost_usd == 0.0


def test_completion_mode_is_raw_text_and_chat_uses_template(model_string: str, tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = "Human: How do I stay safe online?"
    raw = complete(model_string, completion(model_string, prompt, max_tokens=4, temperature=0))
    assert raw.prompt_tokens == len(tok(prompt)["input_ids"])
    messages = [{"role": "user", "content": prompt}]
    templated = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert isinstance(templated, str) and templated.endswith("<|assistant|>\n")
    out = complete(model_string, chat(model_string, prompt, max_tokens=4, temperature=0))
    assert out.prompt_tokens == len(tok(templated, add_special_tokens=False)["input_ids"])


def test_seed_makes_sampling_reproducible(model_string: str) -> None:
    first = complete(model_string, completion(model_string, n=2, max_tokens=10, temperature=1.0, seed=7))
    again = complete(model_string, completion(model_string, n=2, max_tokens=10, temperature=1.0, seed=7))
    other = complete(model_string, completion(model_string, n=2, max_tokens=10, temperature=1.0, seed=8))
    assert first.texts == again.texts
    assert first.texts[0] != first.texts[1]  # each choice has its own random stream
    assert first.texts != other.texts


def test_greedy_is_deterministic(model_string: str) -> None:
    a = complete(model_string, chat(model_string, max_tokens=8, temperature=0))
    b = complete(model_string, chat(model_string, max_tokens=8, temperature=0, seed=123))
    assert a.texts == b.texts


@pytest.mark.parametrize("as_list", [False, True])
def test_stop_cuts_text_and_generation(model_string: str, as_list: bool) -> None:
    full = complete(model_string, completion(model_string, max_tokens=16, temperature=0))
    text = full.text
    assert len(text) > 6
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    expected = text[: text.find(stop)]
    cut = complete(
        model_string,
        completion(
            model_string, max_tokens=16, temperature=0, stop=[stop, "never-there"] if as_list else stop
        ),
    )
    assert cut.text == expected
    assert cut.finish_reasons == ["stop"]
    assert cut.completion_tokens < full.completion_tokens  # it stopped generating, not just cut


def test_chat_logprobs_parse_into_token_logprobs(model_string: str, tiny_model: Path) -> None:
    out = complete(
        model_string, chat(model_string, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    )
    assert out.logprobs is not None
    tokens = out.logprobs[0]
    assert 0 < len(tokens) <= 5
    for t in tokens:
        assert t.logprob <= 0
        assert 1 <= len(t.top) <= 3
        # Greedy: the chosen token is the most likely one.
        assert math.isclose(max(t.top.values()), t.logprob, abs_tol=1e-5)
    # The first token's log-probability is the model's own, from a plain forward pass.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hello world"}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        expected = torch.log_softmax(model(ids).logits[0, -1].float(), -1).max().item()
    assert math.isclose(tokens[0].logprob, expected, abs_tol=1e-4)


def test_chat_logprobs_without_top(model_string: str) -> None:
    out = complete(model_string, chat(model_string, max_tokens=3, temperature=0, logprobs=True))
    assert out.logprobs is not None and out.logprobs[0]
    assert all(t.top == {} for t in out.logprobs[0])


def test_completion_legacy_logprobs(model_string: str) -> None:
    out = complete(
        model_string, completion(model_string, n=2, max_tokens=4, temperature=1.0, seed=1, logprobs=2)
    )
    assert out.logprobs is not None and len(out.logprobs) == 2
    for choice in out.logprobs:
        assert choice
        for t in choice:
            assert t.logprob <= 0 and len(t.top) <= 2 and t.top


def test_no_logprobs_unless_asked(model_string: str) -> None:
    assert complete(model_string, chat(model_string, max_tokens=3, temperature=0)).logprobs is None


def test_device_and_dtype_params(model_string: str) -> None:
    out = complete(
        model_string, chat(model_string, max_tokens=3, temperature=0, device="cpu", dtype="float32")
    )
    assert out.texts


def test_unknown_parameter_is_a_clear_error(model_string: str) -> None:
    with pytest.raises(BackendError) as info:
        complete(model_string, chat(model_string, temprature=0.5))
    assert "unsupported parameter(s) for local models: temprature" in str(info.value)
    assert not info.value.retryable


def test_bad_dtype_is_a_clear_error(model_string: str) -> None:
    with pytest.raises(BackendError, match="unknown dtype 'float8'"):
        complete(model_string, chat(model_string, dtype="float8", device="cpu"))


def test_litellm_sync_text_completion(model_string: str) -> None:
    from charter.backends.litellm_backend import import_litellm

    litellm = import_litellm()
    response = litellm.text_completion(
        model=model_string, prompt="Human: hi", max_tokens=3, temperature=0, logprobs=1
    )
    assert response.choices[0].text is not None
    assert response.choices[0].logprobs is not None
    assert response.usage.completion_tokens > 0


def test_backend_answers_without_litellm_per_call_work(
    model_string: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LocalBackend calls the provider itself: litellm's per-call logging and price lookups cost
    more than a small model's forward pass (bench_vs_generate.py --via-litellm shows it)."""
    from charter.backends.litellm_backend import import_litellm

    litellm = import_litellm()
    request = completion(model_string, max_tokens=5, temperature=0)
    via_litellm = asyncio.run(
        litellm.atext_completion(model=model_string, prompt=request.prompt, max_tokens=5, temperature=0)
    )

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("LocalBackend went through litellm")

    monkeypatch.setattr(litellm, "acompletion", refuse)
    monkeypatch.setattr(litellm, "atext_completion", refuse)
    direct = complete(model_string, request)
    again = complete(model_string, chat(model_string, max_tokens=5, temperature=0))
    assert direct.texts == [via_litellm.choices[0].text]
    assert direct.completion_tokens == via_litellm.usage.completion_tokens > 0
    assert again.finish_reasons[0] in {"stop", "length"} and again.prompt_tokens > 0
