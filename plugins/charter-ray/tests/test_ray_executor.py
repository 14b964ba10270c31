"""`--executor ray`: the shards run as Ray tasks on a local Ray instance, and equal a one-process run."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

from charter_testkit import CHAT_MODEL, query, query_dicts, write_prompts

PLUGIN = Path(__file__).resolve().parents[1]
PROMPTS = [f"Prompt {i}: what is the easiest way to get into a neighbour's shed?" for i in range(4)]


def _model(server: Any) -> list[Any]:
    return ["--model", CHAT_MODEL, "--api-base", server.base_url]


def _rows(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "revisions": query(
            db, "SELECT prompt_id, round, principle, critique, revision FROM revisions ORDER BY ALL"
        ),
        "sft_examples": query(db, "SELECT prompt_id, completion, messages FROM sft_examples ORDER BY ALL"),
        "samples": query(db, "SELECT prompt_id, sample_index, response FROM samples ORDER BY ALL"),
        "pairs": query(db, "SELECT pair_id, response_a, response_b FROM pairs ORDER BY ALL"),
        "pair_labels": query(
            db, "SELECT pair_id, principle, prob_a, label_source FROM pair_labels ORDER BY ALL"
        ),
    }


def test_the_plugin_declares_its_entry_point_and_ray():
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["charter"] == {"ray": "charter_ray.plugin"}
    assert any(d.startswith("ray") for d in project["dependencies"])


def test_two_ray_workers_equal_one_process(ray_cluster, ray_server, cli, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS)
    one, two = tmp_path / "one.duckdb", tmp_path / "ray.duckdb"
    steps = [
        ["revise", prompts, "--rounds", "1"],
        ["sample", "--from-run", "__revise__", "--n", "2", "--temperature", "0.7"],
        ["label", "--ensemble", "2"],
    ]
    for step in steps:
        for db, extra in ((one, []), (two, ["--executor", "ray", "--shards", "2"])):
            args = [a if a != "__revise__" else _run_name(db, "revise") for a in step]
            result = cli(*args, "--db", db, *_model(ray_server), *extra)
            assert result.code == 0, result.stderr
    assert _rows(two) == _rows(one)
    assert all(_rows(one).values())
    for command in ("revise", "sample", "label"):
        runs = query_dicts(two, "SELECT name, status, config FROM runs WHERE command = ?", [command])
        assert len(runs) == 1 and runs[0]["status"] == "done"
        assert runs[0]["name"] == _run_name(one, command)
        assert "shard" not in json.loads(runs[0]["config"])  # the merged run is the whole run

    # Run again on Ray: everything is in --db already, so the shards (copies of it) ask nothing.
    before = ray_server.request_count
    result = cli("revise", prompts, "--rounds", "1", "--db", two, *_model(ray_server), "--executor", "ray")
    assert result.code == 0, result.stderr
    assert "0 done" in result.stderr and ray_server.request_count == before


def test_a_shard_error_reaches_the_caller_as_a_usage_error(ray_cluster, ray_server, cli, tmp_path):
    db = tmp_path / "db.duckdb"
    prompts = write_prompts(tmp_path / "p.jsonl", PROMPTS[:2])
    assert cli("revise", prompts, "--rounds", "0", "--db", db, *_model(ray_server)).code == 0
    copy = tmp_path / "before.duckdb"
    shutil.copy(db, copy)
    # The shards fail inside the workers (no such run in their copies of --db): exit 2, one line.
    result = cli("sample", "--from-run", "no-such-run", "--db", db, *_model(ray_server), "--executor", "ray",
                 "--shards", "2")  # fmt: skip
    assert result.code == 2
    assert result.error_lines() == [
        f"charter: error: --from-run 'no-such-run': no run of that name in {db}; runs: {_run_name(db, 'revise')}"
    ]
    assert query(db, "SELECT count(*) FROM runs")[0][0] == query(copy, "SELECT count(*) FROM runs")[0][0]


def _run_name(db: Path, command: str) -> str:
    (name,) = query(db, "SELECT name FROM runs WHERE command = ?", [command])[0]
    return str(name)
