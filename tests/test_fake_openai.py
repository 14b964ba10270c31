"""Tests of charter_testing.fake_openai over real HTTP, with the openai client and litellm's real providers."""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import litellm
import openai
from charter_testing.fake_openai import (
    DEFAULT_LOGPROB,
    FakeOpenAIServer,
    FakeReply,
    FakeRequest,
    FakeToken,
    start_subprocess,
)

USER: list[Any] = [{"role": "user", "content": "How do I stay safe online?"}]


@pytest.fixture(scope="module")
def shared() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
def srv(shared: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    shared.clear_faults()
    shared.reset()
    yield shared
    shared.clear_faults()


def client(srv: FakeOpenAIServer, timeout: float = 10.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0, timeout=timeout)


def chat(srv: FakeOpenAIServer, **kw: Any) -> Any:
    return client(srv).chat.completions.create(model="test", messages=kw.pop("messages", USER), **kw)


def post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# ------------------------------------------------------------------------------------------------ basics
def test_chat_n_choices_differ_and_are_deterministic(srv: FakeOpenAIServer) -> None:
    first = chat(srv, n=2)
    assert [c.index for c in first.choices] == [0, 1]
    texts = [c.message.content for c in first.choices]
    assert texts[0] != texts[1]
    assert all(t.startswith("Response ") for t in texts)
    assert [c.message.content for c in chat(srv, n=2).choices] == texts
    assert chat(srv, seed=7).choices[0].message.content != texts[0]
    assert first.object == "chat.completion" and first.model == "test" and first.id
    assert first.choices[0].finish_reason == "stop"
    assert first.choices[0].logprobs is None  # not asked for
    usage = first.usage
    assert usage.prompt_tokens == 6
    assert usage.completion_tokens == sum(len(t.split()) for t in texts)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stop_sequences_and_max_tokens() -> None:
    text = "alpha beta gamma delta"
    with FakeOpenAIServer(responder=lambda req: text) as srv:
        one = chat(srv, stop=" gamma").choices[0]
        assert (one.message.content, one.finish_reason) == ("alpha beta", "stop")
        many = chat(srv, stop=["delta", "beta"]).choices[0]
        assert many.message.content == "alpha "
        cut = chat(srv, max_tokens=2, logprobs=True).choices[0]
        assert (cut.message.content, cut.finish_reason) == ("alpha beta", "length")
        assert [t.token for t in cut.logprobs.content] == ["alpha", " beta"]
        assert chat(srv, max_tokens=10).choices[0].finish_reason == "stop"
        legacy = client(srv).completions.create(model="test", prompt="p", stop=["gamma"], max_tokens=50)
        assert legacy.choices[0].text == "alpha beta "
        assert legacy.object == "text_completion"


def test_responder_sees_request_and_n_is_per_choice() -> None:
    seen: list[FakeRequest] = []

    def responder(req: FakeRequest) -> str:
        seen.append(req)
        return f"choice {req.choice_index}"

    with FakeOpenAIServer(responder=responder) as srv:
        out = chat(srv, n=3, temperature=0.5)
        assert [c.message.content for c in out.choices] == ["choice 0", "choice 1", "choice 2"]
        assert [(r.endpoint, r.choice_index, r.model, r.prompt) for r in seen] == [
            ("chat", i, "test", None) for i in range(3)
        ]
        assert seen[0].messages == USER and seen[0].body["temperature"] == 0.5
        seen.clear()
        client(srv).completions.create(model="m", prompt="Once upon", n=2)
        assert [(r.endpoint, r.choice_index, r.model, r.prompt, r.messages) for r in seen] == [
            ("completion", 0, "m", "Once upon", None),
            ("completion", 1, "m", "Once upon", None),
        ]


def test_fake_reply_tokens_must_match_text() -> None:
    with pytest.raises(ValueError, match=r"tokens must concatenate to FakeReply\.text"):
        FakeReply("abc", tokens=[FakeToken("ab")])
    matching = FakeReply("abc", tokens=[FakeToken("ab"), FakeToken("c")])  # the check refuses only a mismatch
    assert [t.text for t in matching.tokens or []] == ["ab", "c"]


def test_records_counts_reset_models_and_routes(srv: FakeOpenAIServer) -> None:
    chat(srv)
    client(srv).completions.create(model="test", prompt="hello")
    assert srv.request_count == 2
    assert srv.requests[0]["messages"] == USER and srv.requests[1]["prompt"] == "hello"
    root = srv.base_url.removesuffix("/v1")
    status, body = post(root + "/chat/completions", {"model": "test", "messages": USER})
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"
    status, body = post(root + "/completions", {"model": "test", "prompt": ["a", "b"], "n": 2})
    assert status == 200 and [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert srv.request_count == 4
    srv.reset()
    assert (srv.request_count, srv.requests) == (0, [])
    assert [m.id for m in client(srv).models.list()] == ["test"]
    status, body = post(srv.base_url + "/chat/completions", b"{not json")
    assert status == 400 and "error" in body


def test_responder_error_is_a_500() -> None:
    def responder(req: FakeRequest) -> str:
        raise RuntimeError("boom")

    with (
        FakeOpenAIServer(responder=responder) as srv,
        pytest.raises(openai.InternalServerError, match="boom"),
    ):
        chat(srv)


# ------------------------------------------------------------------------------------------------ logprobs
def ab_responder(req: FakeRequest) -> FakeReply:
    """Answer ' (A)' tokenized as ' (', 'A', ')' with P(A)=.7, P(B)=.3 at position 1."""
    return FakeReply(
        " (A)",
        tokens=[
            FakeToken(" ("),
            FakeToken("A", {"A": math.log(0.7), "B": math.log(0.3), "C": math.log(0.001)}),
            FakeToken(")", {"]": -0.5}),
        ],
    )


def test_litellm_chat_logprobs_round_trip() -> None:
    with FakeOpenAIServer(responder=ab_responder) as srv:
        resp = litellm.completion(
            model="openai/test",
            api_base=srv.base_url,
            api_key="x",
            messages=USER,
            logprobs=True,
            top_logprobs=2,
            n=2,
            num_retries=0,
            max_retries=0,
        )
        assert len(resp.choices) == 2
        for choice in resp.choices:
            assert choice.message.content == " (A)"
            content = choice.logprobs.content
            assert [t.token for t in content] == [" (", "A", ")"]
            assert content[1].logprob == math.log(0.7)
            assert [(t.token, t.logprob) for t in content[1].top_logprobs] == [
                ("A", math.log(0.7)),
                ("B", math.log(0.3)),
            ]
            assert content[1].bytes == [65]
            assert content[0].logprob == DEFAULT_LOGPROB
            assert content[2].logprob == DEFAULT_LOGPROB  # ')' is missing from its own top list
            assert [t.token for t in content[2].top_logprobs] == ["]"]
        assert srv.requests[-1]["top_logprobs"] == 2


def test_litellm_chat_single_token_answer_logprobs() -> None:
    def responder(req: FakeRequest) -> FakeReply:
        top = {" (A)": math.log(0.7), " (B)": math.log(0.3)}
        return FakeReply(" (A)", tokens=[FakeToken(" (A)", top)])

    with FakeOpenAIServer(responder=responder) as srv:
        resp = litellm.completion(
            model="openai/test",
            api_base=srv.base_url,
            api_key="x",
            messages=USER,
            logprobs=True,
            top_logprobs=5,
            num_retries=0,
            max_retries=0,
        )
        (tok,) = resp.choices[0].logprobs.content
        assert {t.token: t.logprob for t in tok.top_logprobs} == {
            " (A)": math.log(0.7),
            " (B)": math.log(0.3),
        }


def test_litellm_text_completion_logprobs_round_trip() -> None:
    with FakeOpenAIServer(responder=ab_responder) as srv:
        resp = litellm.text_completion(
            model="text-completion-openai/test",
            api_base=srv.base_url,
            api_key="x",
            prompt="Question?",
            logprobs=2,
            num_retries=0,
            max_retries=0,
        )
        choice = resp.choices[0]
        assert choice.text == " (A)"
        lp = choice.logprobs
        assert lp.tokens == [" (", "A", ")"]
        assert lp.token_logprobs == [DEFAULT_LOGPROB, math.log(0.7), DEFAULT_LOGPROB]
        assert lp.top_logprobs[1] == {"A": math.log(0.7), "B": math.log(0.3)}
        assert lp.text_offset == [9, 11, 12]
        assert srv.requests[-1]["logprobs"] == 2


def test_default_tokenization_logprobs(srv: FakeOpenAIServer) -> None:
    choice = chat(srv, logprobs=True, top_logprobs=1).choices[0]
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    assert tokens[1].token.startswith(" ")
    assert all(t.logprob == DEFAULT_LOGPROB and t.top_logprobs[0].token == t.token for t in tokens)


def test_no_logprobs_mode_returns_none_even_when_asked() -> None:
    with FakeOpenAIServer(responder=ab_responder, logprobs=False) as srv:
        assert chat(srv, logprobs=True, top_logprobs=2).choices[0].logprobs is None
        legacy = client(srv).completions.create(model="test", prompt="q", logprobs=2)
        assert legacy.choices[0].logprobs is None
        resp = litellm.completion(
            model="openai/test",
            api_base=srv.base_url,
            api_key="x",
            messages=USER,
            logprobs=True,
            top_logprobs=2,
            num_retries=0,
            max_retries=0,
        )
        assert getattr(resp.choices[0], "logprobs", None) is None


# ------------------------------------------------------------------------------------------------ faults
def test_429_has_retry_after_then_recovers(srv: FakeOpenAIServer) -> None:
    srv.inject("429", retry_after=3)
    with pytest.raises(openai.RateLimitError) as info:
        chat(srv)
    assert info.value.status_code == 429
    assert info.value.response.headers["Retry-After"] == "3"
    assert chat(srv).choices[0].message.content
    assert srv.request_count == 2


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("500", openai.InternalServerError),
        ("503", openai.InternalServerError),
        ("broken_json", json.JSONDecodeError),
        ("disconnect", openai.APIConnectionError),
    ],
)
def test_fault_kinds_with_openai_client(srv: FakeOpenAIServer, kind: str, error: type[Exception]) -> None:
    srv.inject(kind)
    with pytest.raises(error) as info:
        chat(srv)
    if kind in ("500", "503"):
        assert getattr(info.value, "status_code", None) == int(kind)
    assert chat(srv).choices[0].message.content
    assert srv.request_count == 2


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("429", litellm.RateLimitError),
        ("500", litellm.InternalServerError),
        ("503", litellm.ServiceUnavailableError),
        ("broken_json", litellm.InternalServerError),
        ("disconnect", litellm.InternalServerError),
    ],
)
def test_fault_kinds_with_litellm(srv: FakeOpenAIServer, kind: str, error: type[Exception]) -> None:
    kw: dict[str, Any] = dict(
        model="openai/test", api_base=srv.base_url, api_key="x", messages=USER, num_retries=0, max_retries=0
    )
    srv.inject(kind, retry_after=2)
    with pytest.raises(error):
        litellm.completion(**kw)
    assert litellm.completion(**kw).choices[0].message.content
    assert srv.request_count == 2
    srv.inject(kind)
    with pytest.raises(error):
        litellm.text_completion(
            model="text-completion-openai/test",
            api_base=srv.base_url,
            api_key="x",
            prompt="hi",
            num_retries=0,
            max_retries=0,
        )


def test_slow_fault_delays_then_times_out_client(srv: FakeOpenAIServer) -> None:
    srv.inject("slow", delay_s=0.3)
    start = time.perf_counter()
    assert chat(srv).choices[0].message.content
    assert time.perf_counter() - start >= 0.3
    srv.inject("slow", delay_s=2.0)
    with pytest.raises(openai.APITimeoutError):
        client(srv, timeout=0.2).chat.completions.create(model="test", messages=USER)
    # The fault was used up by the timed-out request: while another slow one (5 s) is still
    # pending, a normal request is answered (an ordering, not a wall-clock bound: no flake under load).
    srv.inject("slow", delay_s=5.0)
    pending = threading.Thread(target=chat, args=(srv,), daemon=True)
    pending.start()
    while srv.request_count < 3:
        time.sleep(0.01)
    assert chat(srv).choices[0].message.content
    assert pending.is_alive()
    pending.join()


def test_inject_queues_in_order_and_fail_every(srv: FakeOpenAIServer) -> None:
    srv.inject("500", count=2)
    srv.inject("429")
    for error in (openai.InternalServerError, openai.InternalServerError, openai.RateLimitError):
        with pytest.raises(error):
            chat(srv)
    chat(srv)
    srv.fail_every(3, "503")
    outcomes = []
    for _ in range(7):
        try:
            chat(srv)
            outcomes.append("ok")
        except openai.InternalServerError as err:
            outcomes.append(str(err.status_code))
    assert outcomes == ["ok", "ok", "503", "ok", "ok", "503", "ok"]
    srv.clear_faults()
    for _ in range(3):
        chat(srv)
    assert srv.request_count == 4 + 7 + 3
    with pytest.raises(ValueError, match="unknown fault kind 'teapot'"):
        srv.inject("teapot")
    with pytest.raises(ValueError, match="fault 'slow' needs delay_s"):
        srv.inject("slow")  # needs delay_s
    chat(srv)  # the refused faults were not queued: the next request still succeeds
    assert srv.request_count == 4 + 7 + 3 + 1


def test_latency_overlaps_across_concurrent_requests() -> None:
    async def burst(url: str) -> float:
        aclient = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=30)
        start = time.perf_counter()
        await asyncio.gather(*(aclient.chat.completions.create(model="t", messages=USER) for _ in range(20)))
        elapsed = time.perf_counter() - start
        await aclient.close()
        return elapsed

    admitted: list[int] = []

    def responder(req: FakeRequest) -> str:
        admitted.append(srv.request_count)  # requests received when this one is answered
        return "ok"

    with FakeOpenAIServer(responder=responder, latency_s=1.0) as srv:
        elapsed = asyncio.run(burst(srv.base_url))
        assert elapsed >= 1.0
        assert srv.request_count == 20
    # Sequential requests would each be answered before the next arrives (1 each); overlapping ones
    # arrive during each other's latency. Counted, not timed: no flake under CPU load.
    assert any(count > i + 1 for i, count in enumerate(admitted))


# ------------------------------------------------------------------------------------------------ process
def test_subprocess_helper_serves_and_stops() -> None:
    proc, url = start_subprocess(latency_ms=5, logprobs=False)
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        out = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=10).chat.completions.create(
            model="test", messages=USER, logprobs=True, n=2
        )
        assert len(out.choices) == 2 and out.choices[0].logprobs is None
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
