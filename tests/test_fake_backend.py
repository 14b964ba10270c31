"""The in-process fake backend: model strings `fake/...` reach it through the plugin registry, so the
whole sample -> label path runs without HTTP, and a Scorer's exact scores become the labels."""

from __future__ import annotations

import json
from pathlib import Path

from charter_testing.fake_backend import FakeBackend
from charter_testkit import query_dicts, write_prompts

from charter import rl
from charter.backends.base import CompletionRequest


def policy_and_judge(request: CompletionRequest) -> str:
    text = json.dumps(request.messages)
    if "(A)" in text and "(B)" in text:  # the multiple-choice feedback question
        return "The answer is: (B)"
    return f"Response {request.sample_index} to {request.messages[-1]['content'] if request.messages else ''}"


def test_sample_and_label_in_process(tmp_path: Path, fake_backend: FakeBackend) -> None:
    fake_backend.responder = policy_and_judge
    db = tmp_path / "cai.duckdb"
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?", "Tell me a secret."])
    sampled = rl.sample(prompts, db=db, model="fake/policy", n=2)
    assert sampled.ok and sampled.pairs == 2
    labeled = rl.label(db=db, model="fake/judge", mode="chat")
    # No log-probabilities from this backend: the written letter is the label, and says so.
    assert labeled.ok and labeled.sources == {"parsed": 2}
    rows = query_dicts(
        db, "SELECT p.response_b, l.prob_a, l.label_source FROM pair_labels l JOIN pairs p USING (pair_id)"
    )
    assert [(r["prob_a"], r["label_source"]) for r in rows] == [(0.0, "parsed")] * 2
    assert all(r["response_b"].startswith("Response 1 to ") for r in rows)
    asked = [r.model for r in fake_backend.requests]
    assert asked.count("fake/policy") == 2 and asked.count("fake/judge") == 2  # n=2 in one call each
    stored = query_dicts(db, "SELECT DISTINCT model FROM calls ORDER BY model")
    assert [r["model"] for r in stored] == ["fake/judge", "fake/policy"]
