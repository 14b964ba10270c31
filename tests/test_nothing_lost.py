"""Nothing lost, nothing wrongly kept (issue 12): malformed answers, failed flushes, the journal after
kill -9, the endpoint in the cache key, Ctrl-C / SIGTERM, and export temp files."""

from __future__ import annotations

import pytest
from charter_testkit import COMPLETION_MODEL, query, revise_args, write_prompts

from charter.testing.fake_openai import FakeRequest

# The fast path (openai client), LiteLLM's chat path, and LiteLLM's completion path.
PATHS = {
    "fast": [],
    "litellm": ["--param", "charter_fast_path=false"],
    "completion": ["--model", COMPLETION_MODEL, "--mode", "completion"],
}


@pytest.mark.parametrize("kind", ["no_message", "null_content"])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_choice_without_text_is_retried_and_never_cached(cli, server, tmp_path, kind, path):
    prompts = write_prompts(tmp_path / "p.jsonl", [f"Red-team prompt {i}?" for i in range(4)])
    db = tmp_path / "malformed.duckdb"
    args = revise_args(prompts, db, server, "--rounds", "1", *PATHS[path])
    server.fail_every(3, kind)
    result = cli(*args)
    assert result.code == 0, result.stderr
    server.clear_faults()
    # Every malformed answer was asked again; none is stored as a successful call.
    assert query(
        db, "SELECT count(*) FROM calls WHERE error IS NULL AND coalesce(response_text, '') = ''"
    ) == [(0,)]
    assert query(db, "SELECT count(*) FROM calls WHERE error IS NULL AND attempts > 1")[0][0] >= 3
    assert query(db, "SELECT count(*), min(length(completion)) > 0 FROM sft_examples") == [(4, True)]
    server.reset()
    assert cli(*args, "--run-name", "again").code == 0
    assert server.request_count == 0  # the good answers are all cached


def test_a_legitimately_empty_answer_is_a_valid_cached_answer(cli, server, tmp_path):
    def empty(req: FakeRequest) -> str:
        return ""

    server.responder = empty
    prompts = write_prompts(tmp_path / "p.jsonl", ["Say nothing."])
    db = tmp_path / "empty.duckdb"
    result = cli(*revise_args(prompts, db, server, "--rounds", "0"))
    assert result.code == 0, result.stderr
    assert query(db, "SELECT response_text, error, attempts FROM calls") == [("", None, 1)]
    server.reset()
    assert cli(*revise_args(prompts, db, server, "--rounds", "0", "--run-name", "b")).code == 0
    assert server.request_count == 0
