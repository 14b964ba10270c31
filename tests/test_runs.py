"""Run outcomes a script can tell apart: a label run that labeled nothing fails (issue 16 item 2),
`charter runs DB` lists runs and `charter runs rm` removes one run's rows (item 3)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from charter_testing.fake_openai import FakeOpenAIServer, FakeRequest
from charter_testkit import CHAT_MODEL, CliResult, query, revise_args, write_prompts


def _policy_or(feedback: str) -> Callable[[FakeRequest], str]:
    def responder(req: FakeRequest) -> str:
        text = "\n".join(str(m.get("content", "")) for m in req.messages or []) + (req.prompt or "")
        if "[[[" in text:
            return feedback
        return f"answer number {req.choice_index}"

    return responder


@pytest.fixture
def pairs_db(tmp_path: Path, server: FakeOpenAIServer, cli: Callable[..., CliResult]) -> Path:
    db = tmp_path / "cai.duckdb"
    prompts = write_prompts(tmp_path / "p.jsonl", ["one?", "two?", "three?", "four?"])
    server.responder = _policy_or("(A)")
    result = cli(
        "sample", "--prompts", prompts, "--db", db, "-m", CHAT_MODEL, "--api-base", server.base_url,
        "--run-name", "pairs",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return db


def label_args(db: Path, server: FakeOpenAIServer, *extra: str) -> list[object]:
    return ["label", "--db", db, "-m", CHAT_MODEL, "--api-base", server.base_url, "--no-few-shot", *extra]


def test_label_run_that_labels_nothing_exits_1_and_is_not_done(
    pairs_db: Path, server: FakeOpenAIServer, cli: Callable[..., CliResult]
) -> None:
    server.responder = _policy_or("Both are fine, I cannot decide.")
    result = cli(
        *label_args(pairs_db, server, "--method", "cot", "--max-parse-retries", "0", "--run-name", "cot")
    )
    assert result.code == 1, result.stderr
    assert "0 pairs labeled (none)" in result.stderr
    assert "4 pairs flagged" in result.stderr
    assert "100% flagged > --max-flagged 0.5" in result.stderr
    assert query(pairs_db, "SELECT status FROM runs WHERE name = 'cot'") == [("flagged",)]

    # The threshold is a flag: allowing every pair to be flagged makes the same run acceptable.
    result = cli(*label_args(pairs_db, server, "--method", "cot", "--max-parse-retries", "0", "--run-name", "cot",
                             "--max-flagged", "1"))  # fmt: skip
    assert result.code == 0, result.stderr
    assert query(pairs_db, "SELECT status FROM runs WHERE name = 'cot'") == [("done",)]


def test_label_run_with_few_flagged_pairs_succeeds(
    pairs_db: Path, server: FakeOpenAIServer, cli: Callable[..., CliResult]
) -> None:
    # One of four feedback answers is unreadable: 25% <= 50%, a success that reports the flag.
    seen: list[int] = []

    def feedback(req: FakeRequest) -> str:
        text = "\n".join(str(m.get("content", "")) for m in req.messages or [])
        if "[[[" not in text:
            return f"answer number {req.choice_index}"
        seen.append(1)
        return "no idea" if len(seen) == 1 else "(A)"

    server.responder = feedback
    result = cli(*label_args(pairs_db, server, "--max-parse-retries", "0", "--run-name", "mc"))
    assert result.code == 0, result.stderr
    assert "1 pairs flagged" in result.stderr
    assert query(pairs_db, "SELECT status FROM runs WHERE name = 'mc'") == [("done",)]


def test_label_on_a_database_without_pairs_exits_1(
    tmp_path: Path, server: FakeOpenAIServer, cli: Callable[..., CliResult], prompts_file: Path
) -> None:
    db = tmp_path / "sl.duckdb"
    assert cli(*revise_args(prompts_file, db, server, "--rounds", "1")).code == 0
    result = cli(*label_args(db, server))
    assert result.code == 1
    assert "no pairs to label in this database" in result.stderr


def test_runs_lists_every_run_with_its_counts(
    pairs_db: Path, server: FakeOpenAIServer, cli: Callable[..., CliResult]
) -> None:
    server.responder = _policy_or("(A)")
    assert cli(*label_args(pairs_db, server, "--run-name", "labels")).code == 0
    result = cli("runs", pairs_db)
    assert result.code == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["name", "command", "model", "status", "items", "calls", "failed", "tokens",
                              "cost_usd", "started", "finished"]  # fmt: skip
    assert [line.split()[:4] for line in lines] == [
        ["pairs", "sample", CHAT_MODEL, "done"],
        ["labels", "label", CHAT_MODEL, "done"],
    ]
    assert "4 pairs" in lines[0] and "4 labeled, 0 flagged" in lines[1]

    rows = json.loads(cli("runs", pairs_db, "--format", "json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["pairs"]["calls"] == 4 and by_name["pairs"]["tokens"] > 0
    assert by_name["labels"]["calls"] == 4 and by_name["labels"]["finished"]
    calls = query(pairs_db, "SELECT count(*) FROM calls c JOIN runs r USING (run_id) WHERE r.name = 'labels'")
    assert calls == [(4,)]


def test_runs_rm_removes_one_runs_rows_from_every_table(
    pairs_db: Path, server: FakeOpenAIServer, cli: Callable[..., CliResult]
) -> None:
    server.responder = _policy_or("(A)")
    assert cli(*label_args(pairs_db, server, "--run-name", "labels")).code == 0
    sample_id = query(pairs_db, "SELECT run_id FROM runs WHERE name = 'pairs'")[0][0]

    # Unknown names are bad input: exit 2, nothing removed.
    result = cli("runs", "rm", "nope", "--db", pairs_db, "--yes")
    assert result.code == 2
    assert "no run named 'nope'" in result.stderr and "pairs, labels" in result.stderr
    # Without --yes and without a terminal to ask: refuse (exit 2), nothing removed.
    result = cli("runs", "rm", "labels", "--db", pairs_db)
    assert result.code == 2 and "--yes" in result.stderr
    assert query(pairs_db, "SELECT count(*) FROM pair_labels") == [(4,)]

    result = cli("runs", "rm", pairs_db, "labels", "--yes")
    assert result.code == 0, result.stderr
    assert "removed run labels" in result.stderr
    for table in ("pair_labels", "feedback_queries"):
        assert query(pairs_db, f"SELECT count(*) FROM {table}") == [(0,)]
    assert query(pairs_db, "SELECT name FROM runs") == [("pairs",)]
    # The other run is untouched, calls included.
    assert query(pairs_db, "SELECT DISTINCT run_id FROM calls") == [(sample_id,)]
    assert query(pairs_db, "SELECT count(*) FROM pairs") == [(4,)]

    # Labeling again makes new calls (the removed run's cached answers went with it).
    before = server.request_count
    assert cli(*label_args(pairs_db, server, "--run-name", "labels")).code == 0
    assert server.request_count == before + 4
