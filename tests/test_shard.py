"""`--shard i/n|auto` for revise, sample and label; the Router for sample; `charter merge` with a glob.

Same seed, same rows whatever the sharding: n shards merged equal one unsharded run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from charter_testing.fake_openai import FakeOpenAIServer
from charter_testkit import CHAT_MODEL, query, query_dicts, revise_args, write_prompts

from charter.shard import Shard, combine_summaries, resolve_shard, shard_from_env

PROMPTS = [f"Prompt {i}: how would I get into a locked shed without the key?" for i in range(10)]


@pytest.fixture
def second() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


def sample_args(prompts: Path, db: Path, server: FakeOpenAIServer, *extra: Any) -> list[Any]:
    """`sample --prompts PROMPTS --db DB --model openai/test --api-base URL --n 3` plus `extra`."""
    return ["sample", "--prompts", prompts, "--db", db, "--model", CHAT_MODEL, "--api-base", server.base_url,
            "--n", "3", *extra]  # fmt: skip


def label_args(db: Path, server: FakeOpenAIServer, *extra: Any) -> list[Any]:
    """`label --db DB --model openai/test --api-base URL --ensemble 2` plus `extra`."""
    return [
        "label",
        "--db",
        db,
        "--model",
        CHAT_MODEL,
        "--api-base",
        server.base_url,
        "--ensemble",
        "2",
        *extra,
    ]


def _samples(db: Path) -> list[tuple[Any, ...]]:
    return query(db, "SELECT prompt_id, sample_index, response FROM samples ORDER BY ALL")


def _pairs(db: Path) -> list[tuple[Any, ...]]:
    return query(
        db, "SELECT pair_id, prompt_id, index_a, index_b, response_a, response_b FROM pairs ORDER BY ALL"
    )


def _labels(db: Path) -> list[tuple[Any, ...]]:
    return query(
        db,
        "SELECT pair_id, principle, prob_a, prob_b, label_source, status FROM pair_labels ORDER BY pair_id",
    )


def _one_run(db: Path, command: str) -> dict[str, Any]:
    (run,) = query_dicts(db, "SELECT run_id, name, status, config FROM runs WHERE command = ?", [command])
    return run


# --------------------------------------------------------------------------- --shard auto
def test_auto_reads_a_slurm_array_that_does_not_start_at_zero():
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert shard_from_env(env) == Shard(2, 4)
    stepped = {**env, "SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_STEP": "2"}  # --array=5-11:2
    assert shard_from_env(stepped) == Shard(2, 4)
    assert resolve_shard("auto", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "1"}) == Shard(0, 1)
    with pytest.raises(ValueError, match="--array=0-3"):
        shard_from_env({**env, "SLURM_ARRAY_TASK_ID": "12"})  # outside the array
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_COUNT is not"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "1"})


def test_auto_reads_a_kubernetes_indexed_job():
    assert shard_from_env({"JOB_COMPLETION_INDEX": "3", "CHARTER_SHARD_COUNT": "8"}) == Shard(3, 8)
    with pytest.raises(ValueError, match="CHARTER_SHARD_COUNT is not"):
        shard_from_env({"JOB_COMPLETION_INDEX": "3"})
    with pytest.raises(ValueError, match="not below CHARTER_SHARD_COUNT=2"):
        shard_from_env({"JOB_COMPLETION_INDEX": "3", "CHARTER_SHARD_COUNT": "2"})
    with pytest.raises(ValueError, match="not a whole number"):
        shard_from_env({"JOB_COMPLETION_INDEX": "x", "CHARTER_SHARD_COUNT": "2"})


@pytest.mark.parametrize("command", ["revise", "sample", "label"])
def test_auto_outside_a_scheduler_is_a_usage_error(cli, server, tmp_path, monkeypatch, command):
    for name in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(name, raising=False)
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    db = tmp_path / "db.duckdb"
    args = {
        "revise": revise_args(prompts, db, server),
        "sample": sample_args(prompts, db, server),
        "label": label_args(db, server),
    }[command]
    result = cli(*args, "--shard", "auto")
    assert result.code == 2
    assert result.error_lines() == [
        "charter: error: --shard auto: neither a Slurm array task (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT) "
        "nor a Kubernetes Indexed Job (JOB_COMPLETION_INDEX, CHARTER_SHARD_COUNT) is in the environment; "
        "give --shard i/n"
    ]
    assert not db.exists() and server.request_count == 0


def test_a_scheduler_rerunning_an_index_resumes(cli, server, tmp_path, monkeypatch):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    db = tmp_path / "part-1.duckdb"
    first = cli(*revise_args(prompts, db, server, "--rounds", "0", "--shard", "auto"))
    assert first.code == 0, first.stderr
    ids = {r[0] for r in query(db, "SELECT prompt_id FROM sft_examples")}
    assert ids and all(Shard(1, 2).owns(i) for i in ids) and len(ids) < len(PROMPTS)
    assert json.loads(_one_run(db, "revise")["config"])["shard"] == "1/2"
    before = server.request_count
    again = cli(*revise_args(prompts, db, server, "--rounds", "0", "--shard", "auto"))
    assert again.code == 0 and "(resumed)" in again.stderr
    assert server.request_count == before  # nothing asked twice


# --------------------------------------------------------------------------- sample and label sharded
def test_sample_shards_merged_with_a_glob_equal_one_run(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    whole = tmp_path / "whole.duckdb"
    assert cli(*sample_args(prompts, whole, server, "--temperature", "0.7")).code == 0
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(3):
        result = cli(*sample_args(prompts, parts / f"part-{i}.duckdb", server, "--temperature", "0.7",
                                  "--shard", f"{i}/3"))  # fmt: skip
        assert result.code == 0, result.stderr
    per_part = [
        {r[0] for r in query(parts / f"part-{i}.duckdb", "SELECT prompt_id FROM samples")} for i in range(3)
    ]
    # Disjoint and complete (a shard may get no prompt at all: it still writes its run, and merges).
    assert sum(len(p) for p in per_part) == len(set().union(*per_part)) == len(PROMPTS)
    assert sum(1 for p in per_part if p) >= 2

    merged = tmp_path / "merged.duckdb"
    result = cli("merge", merged, str(parts / "*.duckdb"))  # quoted: charter expands the pattern
    assert result.code == 0, result.stderr
    assert "merged 3 file(s)" in result.stderr
    assert _samples(merged) == _samples(whole) and _pairs(merged) == _pairs(whole)
    run = _one_run(merged, "sample")
    assert run["name"] == _one_run(whole, "sample")["name"] and run["status"] == "done"
    assert "shard" not in json.loads(run["config"])


def test_label_shards_merged_equal_one_run(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    sampled = tmp_path / "sampled.duckdb"
    assert cli(*sample_args(prompts, sampled, server)).code == 0
    whole = tmp_path / "whole.duckdb"
    shutil.copy(sampled, whole)
    assert cli(*label_args(whole, server)).code == 0
    parts = []
    for i in range(2):  # each machine labels its own copy of the sampled database
        part = tmp_path / f"label-{i}.duckdb"
        shutil.copy(sampled, part)
        result = cli(*label_args(part, server, "--shard", f"{i}/2"))
        assert result.code == 0, result.stderr
        parts.append(part)
    counts = [query(p, "SELECT count(*) FROM pair_labels")[0][0] for p in parts]
    assert all(counts) and sum(counts) == len(_labels(whole)) == len(_pairs(sampled))

    merged = tmp_path / "merged.duckdb"
    assert cli("merge", merged, *parts).code == 0
    assert _labels(merged) == _labels(whole)
    assert _one_run(merged, "label")["name"] == _one_run(whole, "label")["name"]
    # The merged file holds the whole run: labeling it again asks nothing.
    before = server.request_count
    assert cli(*label_args(merged, server)).code == 0
    assert server.request_count == before


def test_repeated_api_base_on_sample_uses_every_endpoint(cli, server, second, tmp_path):
    # Before, the last --api-base silently replaced the others: with the last one down, the run failed.
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:6])
    single, routed = tmp_path / "single.duckdb", tmp_path / "routed.duckdb"
    assert cli(*sample_args(prompts, single, server)).code == 0
    second.fail_every(1, "503")
    result = cli(*sample_args(prompts, routed, server, "--api-base", second.base_url, "--max-retries", "3"))
    assert result.code == 0, result.stderr
    assert _samples(routed) == _samples(single)
    assert json.loads(_one_run(routed, "sample")["config"])["api_base"] == [server.base_url, second.base_url]


def test_repeated_api_base_on_eval_is_not_dropped(cli, server, second, tmp_path):
    second.fail_every(1, "503")
    db = tmp_path / "eval.duckdb"
    result = cli("eval", "hhh", "--db", db, "--model", CHAT_MODEL, "--api-base", server.base_url,
                 "--api-base", second.base_url, "--limit", "4", "--max-retries", "3")  # fmt: skip
    assert result.code == 0, result.stderr
    config = json.loads(query(db, "SELECT config FROM runs")[0][0])
    assert config["api_base"] == [server.base_url, second.base_url]


# --------------------------------------------------------------------------- merge's inputs
def test_merge_glob_that_matches_nothing_is_a_usage_error(cli, tmp_path):
    out = tmp_path / "out.duckdb"
    result = cli("merge", out, str(tmp_path / "parts" / "*.duckdb"))
    assert result.code == 2
    assert result.error_lines() == [
        f"charter: error: charter merge: no database matches '{tmp_path}/parts/*.duckdb'"
    ]
    assert not out.exists()


def test_merge_glob_skips_the_output_and_repeats(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:4])
    for i in range(2):
        assert cli(*revise_args(prompts, tmp_path / f"part-{i}.duckdb", server, "--rounds", "0",
                                "--shard", f"{i}/2")).code == 0  # fmt: skip
    out = tmp_path / "part-all.duckdb"  # the pattern matches the output too once it exists
    pattern = str(tmp_path / "part-*.duckdb")
    assert cli("merge", out, pattern, tmp_path / "part-0.duckdb").code == 0  # part-0 named twice: merged once
    assert cli("merge", out, pattern).code == 0  # again, with out matching the pattern now
    assert query(out, "SELECT count(*) FROM sft_examples")[0][0] == 4


# --------------------------------------------------------------------------- executors, without one
def test_executor_options_are_checked_before_anything_runs(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    db = tmp_path / "db.duckdb"
    cases = [
        (["--shards", "2"], "--shards N runs the shards on an executor: give --executor NAME too (e.g. ray)"),
        (["--executor", "nope"], "--executor 'nope': no such executor; installed: "),
        (["--executor", "nope", "--shard", "0/2"], "--shard picks the one shard this process runs"),
    ]
    for extra, message in cases:
        result = cli(*revise_args(prompts, db, server, *extra))
        assert result.code == 2, extra
        assert result.error_lines()[0].startswith(f"charter: error: {message}"), result.stderr
    assert not db.exists() and server.request_count == 0


def test_summaries_of_shards_add_up():
    from charter.rl import LabelSummary

    a = LabelSummary(run_id="r", run_name="n", resumed=False, total=3, completed=3, calls=5, cost_usd=None,
                     errors=["x"], labeled=3, sources={"logprobs": 3}, seconds=2.0)  # fmt: skip
    b = LabelSummary(run_id="r", run_name="n", resumed=True, total=2, completed=1, failed=1, calls=2,
                     cost_usd=0.5, errors=["y"], labeled=1, flagged=1, sources={"logprobs": 1, "parsed": 0},
                     status="failed", seconds=1.0)  # fmt: skip
    both = combine_summaries([a, b])
    assert isinstance(both, LabelSummary)
    assert (both.total, both.completed, both.failed, both.calls, both.labeled, both.flagged) == (
        5,
        4,
        1,
        7,
        4,
        1,
    )
    assert both.cost_usd == 0.5 and both.errors == ["x", "y"] and both.resumed and both.seconds == 2.0
    assert both.sources == {"logprobs": 4, "parsed": 0} and both.status == "failed" and not both.ok
