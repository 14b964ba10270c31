"""Exact option scoring: log p(option | prompt) from one batched forward pass."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from charter_transformers.backend import LocalBackend
from charter_transformers.tokens import encode_text, option_rows

from charter.backends.registry import get_backend


def hand_scores(model_dir: Path, prompt: str, options: list[str]) -> list[float]:
    """Unpadded forward pass per option: sum of log_softmax at the option's positions."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt_ids = tok(prompt)["input_ids"]
    out = []
    for option in options:
        full = tok(prompt + option)["input_ids"]
        assert full[: len(prompt_ids)] == prompt_ids  # no merge across the boundary here
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
        out.append(sum(logprobs[t - 1, full[t]].item() for t in range(len(prompt_ids), len(full))))
    return out


def test_score_options_matches_hand_computed_forward(model_string: str, tiny_model: Path) -> None:
    backend = get_backend(model_string)
    assert isinstance(backend, LocalBackend)
    prompt = "Consider the following conversation. The answer is:"
    options = [" (A)", " (B)", " (A) because it is more helpful, honest and harmless."]
    got = asyncio.run(backend.score_options(prompt, options))
    expected = hand_scores(tiny_model, prompt, options)
    assert got == pytest.approx(expected, abs=1e-4)
    assert len({round(x, 6) for x in got}) == 3


def test_concurrent_score_calls_batch_together(model_string: str, tiny_model: Path) -> None:
    backend = LocalBackend(model_string, batch_window_ms=200)
    prompts = ["The answer is:", "Human: hello Assistant: yes. The answer is:"]

    async def both() -> list[list[float]]:
        return list(await asyncio.gather(*(backend.score_options(p, [" (A)", " (B)"]) for p in prompts)))

    got = asyncio.run(both())
    for prompt, scores in zip(prompts, got, strict=True):
        assert scores == pytest.approx(hand_scores(tiny_model, prompt, [" (A)", " (B)"]), abs=1e-4)


def test_empty_options() -> None:
    assert asyncio.run(LocalBackend("local/unused").score_options("x", [])) == []


def test_boundary_merge_scores_the_differing_suffix(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt, option = "The answer is: ", "(A)"
    prompt_ids = encode_text(tok, prompt)
    [(full, n)] = option_rows(tok, prompt, [option])
    assert full == encode_text(tok, prompt + option)
    common = len(full) - n
    assert full[:common] == prompt_ids[:common]
    assert n >= 1
    if full[: len(prompt_ids)] != prompt_ids:  # the tokenizer merged " (" across the boundary
        assert common < len(prompt_ids)
