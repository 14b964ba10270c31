"""Dynamic batching: concurrent requests share one padded generate call with identical results."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from charter_transformers.backend import LocalBackend
from charter_transformers.loading import get_model

from charter.backends.base import Completion, CompletionRequest

PROMPTS = [
    "Human: hi",
    "Human: How do I stay safe online? Please answer in detail.",
    "Revision:",
    "Consider the following conversation between a human and an assistant: Human: Can you help me",
    "Please choose the response that is the most helpful",
]


def requests(model: str, **params: object) -> list[CompletionRequest]:
    return [
        CompletionRequest(
            model=model,
            mode="completion",
            prompt=p,
            params={"max_tokens": 6 + 2 * i, "logprobs": 2, **params},
        )
        for i, p in enumerate(PROMPTS)
    ]


def sequential(backend: LocalBackend, reqs: list[CompletionRequest]) -> list[Completion]:
    async def go() -> list[Completion]:
        return [await backend.complete(r) for r in reqs]

    return asyncio.run(go())


def concurrent(backend: LocalBackend, reqs: list[CompletionRequest]) -> list[Completion]:
    async def go() -> list[Completion]:
        return list(await asyncio.gather(*(backend.complete(r) for r in reqs)))

    return asyncio.run(go())


@pytest.mark.parametrize("params", [{"temperature": 0}, {"temperature": 1.0, "top_p": 0.9, "seed": 3}])
def test_batched_equals_unbatched(model_string: str, params: dict[str, object]) -> None:
    # No window one at a time (nothing to wait for); a generous one so concurrent calls meet.
    alone, batching = (
        LocalBackend(model_string, batch_window_ms=0),
        LocalBackend(model_string, batch_window_ms=300),
    )
    engine = get_model(alone.model_id).engine
    reqs = requests(model_string, **params)
    before = engine.stats.largest_batch if engine is not None else 0
    one_by_one = sequential(alone, reqs)
    engine = get_model(alone.model_id).engine
    assert engine is not None
    assert engine.stats.largest_batch == max(before, 1)
    together = concurrent(batching, reqs)
    assert engine.stats.largest_batch == len(PROMPTS)  # really one batch
    for a, b in zip(one_by_one, together, strict=True):
        assert a.texts == b.texts
        assert a.finish_reasons == b.finish_reasons
        assert a.completion_tokens == b.completion_tokens
        assert a.logprobs is not None and b.logprobs is not None
        assert [t.token for t in a.logprobs[0]] == [t.token for t in b.logprobs[0]]
        assert [t.logprob for t in a.logprobs[0]] == pytest.approx(
            [t.logprob for t in b.logprobs[0]], abs=1e-4
        )


def test_different_generate_settings_run_as_groups(model_string: str) -> None:
    plain = requests(model_string, temperature=0)
    penalised = requests(model_string, temperature=0, repetition_penalty=1.3)
    reqs = [plain[0], penalised[1], plain[2], penalised[3]]
    mixed = concurrent(LocalBackend(model_string, batch_window_ms=300), reqs)
    alone = sequential(LocalBackend(model_string, batch_window_ms=0), reqs)
    assert [c.texts for c in mixed] == [c.texts for c in alone]
    # The penalty really applied (it shows in the log-probabilities, which follow the processors).
    unpenalised = sequential(LocalBackend(model_string), [plain[1]])[0]
    assert alone[1].logprobs is not None and unpenalised.logprobs is not None
    assert [t.logprob for t in alone[1].logprobs[0]] != [t.logprob for t in unpenalised.logprobs[0]]


def test_engine_split_respects_limits(model_string: str) -> None:
    from charter_transformers.engine import GenerationJob, get_engine

    engine = get_engine(get_model(model_string.removeprefix("local/")))
    jobs = [GenerationJob(prompt_ids=[1] * (10 * (i + 1)), n=2, max_tokens=10) for i in range(5)]
    old = engine.max_batch_size, engine.max_batch_tokens
    try:
        engine.configure(max_batch_size=4, max_batch_tokens=10_000)
        assert [len(b) for b in engine._split(jobs, lambda j: len(j.prompt_ids), lambda j: j.max_tokens)] == [
            2,
            2,
            1,
        ]
        engine.configure(max_batch_size=16, max_batch_tokens=100)
        sizes = [len(b) for b in engine._split(jobs, lambda j: len(j.prompt_ids), lambda j: j.max_tokens)]
        assert sizes == [1, 1, 1, 1, 1]
    finally:
        engine.configure(max_batch_size=old[0], max_batch_tokens=old[1])


def test_concurrent_requests_meet_at_the_default_window(
    model_string: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests sent together form one batch even when litellm and tokenizing take longer than the
    5 ms window (a busy machine): announced requests extend the wait until they are queued."""
    import time

    from charter_transformers import provider

    real_plan = provider._plan

    def slow_plan(*args: object, **kwargs: object) -> provider._Plan:
        time.sleep(0.03)  # each request reaches the queue well after the window closed
        return real_plan(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(provider, "_plan", slow_plan)
    backend = LocalBackend(model_string, batch_window_ms=5)
    engine = get_engine_of(backend)
    from charter_transformers import engine as engine_module

    seen: list[int] = []
    pending_at_dispatch: list[int] = []
    real_dispatch = engine._dispatch

    def dispatch(jobs: list[object]) -> None:
        seen.append(len(jobs))
        arrivals = getattr(engine_module, "_arrivals", None)
        pending_at_dispatch.append(arrivals.pending if arrivals is not None else 0)
        real_dispatch(jobs)

    monkeypatch.setattr(engine, "_dispatch", dispatch)
    reqs = requests(model_string, temperature=0)
    together = concurrent(backend, reqs)
    assert seen == [len(PROMPTS)]
    assert all(c.texts for c in together)
    # Each request's announcement was settled when it was queued: nothing left to wait for.
    from charter_transformers.engine import _arrivals

    assert _arrivals.pending == 0
    sequential(backend, reqs[:2])
    assert seen == [len(PROMPTS), 1, 1]
    # A lone request settles its announcement when it is queued (through litellm's tasks and
    # threads), so its batch does not wait for itself.
    assert pending_at_dispatch == [0, 0, 0]


def get_engine_of(backend: LocalBackend):  # type: ignore[no-untyped-def]
    from charter_transformers.engine import get_engine

    return get_engine(get_model(backend.model_id))


def test_greedy_engine_text_equals_plain_batched_generate(model_string: str, tiny_model: Path) -> None:
    """What bench_vs_generate.py compares against: concurrent greedy chat requests give exactly
    the text of one plain `model.generate` call on the left-padded batch of the same prompts."""
    import torch

    loaded = get_model(str(tiny_model))
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    reqs = [
        CompletionRequest(
            model=model_string, mode="chat", messages=c, params={"temperature": 0, "max_tokens": 12}
        )
        for c in chats
    ]
    engine_texts = [c.texts[0] for c in concurrent(LocalBackend(model_string, batch_window_ms=300), reqs)]

    tokenizer = loaded.tokenizer
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    with torch.inference_mode():
        out = loaded.model.generate(
            **batch,
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=loaded.pad_token_id,
            eos_token_id=sorted(loaded.eos_token_ids),
        )
    rows = out[:, batch["input_ids"].shape[1] :]
    plain_texts = [tokenizer.decode(r, skip_special_tokens=True) for r in rows]
    assert engine_texts == plain_texts
    assert any(plain_texts)  # the comparison is about real text, not empty strings
