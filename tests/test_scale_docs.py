"""The Slurm array script and the Kubernetes Indexed Job in docs/scale-out work as written.

The script (and the Job's shell) runs for real with the scheduler's variables set, with `charter`
standing for a recorder; the recorded charter command lines then run against the fake server, and
their shards merged equal the same commands run once without sharding.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from charter_testkit import CHAT_MODEL, REPO, query, write_prompts

DOCS = REPO / "docs" / "scale-out"
PROMPTS = [f"Prompt {i}: how can I read my partner's messages without them knowing?" for i in range(4)]
# `charter` as a shell function that records each command line (NUL-separated, one per line).
RECORDER = 'charter() { for a in "$@"; do printf "%s\\037" "$a"; done >> "$RECORD"; echo >> "$RECORD"; }\n'
TABLES = {
    "revisions": "SELECT prompt_id, round, principle, critique, revision FROM revisions ORDER BY ALL",
    "samples": "SELECT prompt_id, sample_index, response FROM samples ORDER BY ALL",
    "pair_labels": "SELECT pair_id, principle, prob_a, label_source FROM pair_labels ORDER BY ALL",
    "runs": "SELECT name, command, status FROM runs ORDER BY name",
}


def _recorded(record: Path) -> list[list[str]]:
    return [line.split("\037")[:-1] for line in record.read_text().splitlines() if line]


def _run_shell(shell: str, script: str, env: dict[str, str], record: Path) -> list[list[str]]:
    record.unlink(missing_ok=True)
    proc = subprocess.run(
        [shell, "-c", RECORDER + script], env={**os.environ, **env, "RECORD": str(record)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return _recorded(record)


def _unsharded(commands: list[list[str]], db: Path) -> list[list[str]]:
    """The same command lines, with no --shard and into one database."""
    out = []
    for args in commands:
        args = list(args)
        if "--shard" in args:
            i = args.index("--shard")
            del args[i : i + 2]
        args[args.index("--db") + 1] = str(db)
        out.append(args)
    return out


def _rows(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    return {table: query(db, sql) for table, sql in TABLES.items()}


def test_the_slurm_array_script_works_as_written(cli, server, tmp_path, monkeypatch):
    script = (DOCS / "slurm-array.sh").read_text()
    assert "#SBATCH --array=0-3" in script
    prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    env = {"PROMPTS": str(prompts), "MODEL": CHAT_MODEL, "API_BASE": server.base_url,
           "PARTS": str(tmp_path / "parts")}  # fmt: skip
    # `sbatch --array=1-2 slurm-array.sh`: an array that does not start at 0 (--shard auto subtracts
    # SLURM_ARRAY_TASK_MIN), two tasks to keep the test short.
    slurm = {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "2"}
    every: list[list[str]] = []
    for task in (1, 2):
        task_env = {**slurm, "SLURM_ARRAY_TASK_ID": str(task)}
        commands = _run_shell("bash", f"cd {tmp_path}\n" + script, {**env, **task_env}, tmp_path / "rec")
        assert [c[0] for c in commands] == ["revise", "sample", "label"]
        assert commands[0][commands[0].index("--shard") + 1] == "auto"
        for name, value in task_env.items():
            monkeypatch.setenv(name, value)
        for args in commands:
            result = cli(*args)
            assert result.code == 0, (args, result.stderr)
        every = commands
    parts = sorted((tmp_path / "parts").glob("*.duckdb"))
    assert [p.name for p in parts] == ["part-1.duckdb", "part-2.duckdb"]

    # A re-run of one task (Slurm requeued it) resumes: nothing is asked twice.
    before = server.request_count
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    for args in every:
        assert cli(*args).code == 0
    assert server.request_count == before

    merged = tmp_path / "cai.duckdb"
    assert cli("merge", merged, str(tmp_path / "parts" / "*.duckdb")).code == 0
    whole = tmp_path / "whole.duckdb"
    for args in _unsharded(every, whole):
        assert cli(*args).code == 0
    rows = _rows(merged)
    assert rows == _rows(whole)
    assert all(rows.values()) and [r[0] for r in rows["runs"]] == ["label", "revise", "sample"]


def test_the_kubernetes_indexed_job_works_as_written(cli, server, tmp_path, monkeypatch):
    job = yaml.safe_load((DOCS / "k8s-indexed-job.yaml").read_text())
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    (container,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["CHARTER_SHARD_COUNT"]) == spec["completions"] == 4
    assert container["command"] == ["/bin/sh", "-ec"]
    (script,) = container["args"]
    assert "$JOB_COMPLETION_INDEX" in script and "--shard auto" in script

    data = tmp_path / "data"
    data.mkdir()
    write_prompts(data / "prompts.jsonl", PROMPTS)
    # The manifest's own env, with the model, the endpoint and the volume pointed at this test.
    pod_env = {**env, "MODEL": CHAT_MODEL, "API_BASE": server.base_url, "DATA": str(data)}
    monkeypatch.setenv("CHARTER_SHARD_COUNT", env["CHARTER_SHARD_COUNT"])
    commands: list[list[str]] = []
    for index in range(spec["completions"]):
        commands = _run_shell("sh", script, {**pod_env, "JOB_COMPLETION_INDEX": str(index)}, tmp_path / "rec")
        assert [c[0] for c in commands] == ["revise", "sample", "label"]
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
        for args in commands:
            result = cli(*args)
            assert result.code == 0, (args, result.stderr)

    # (4 prompts happen to give each of the 4 shards one: a shard with none has no pairs to label.)
    assert all(query(p, "SELECT count(*) FROM pair_labels")[0][0] for p in (data / "parts").glob("*.duckdb"))
    merge = yaml.safe_load((DOCS / "k8s-merge-job.yaml").read_text())
    (merger,) = merge["spec"]["template"]["spec"]["containers"]
    assert merger["command"][:2] == ["charter", "merge"]
    # No shell in the merge pod: charter itself expands the quoted pattern.
    args = [a.replace("/data", str(data)) for a in merger["command"][1:]]
    assert cli(*args).code == 0
    whole = tmp_path / "whole.duckdb"
    for line in _unsharded(commands, whole):
        assert cli(*line).code == 0
    rows = _rows(data / "cai.duckdb")
    assert rows == _rows(whole) and all(rows.values())


@pytest.mark.parametrize("name", ["k8s-indexed-job.yaml", "k8s-merge-job.yaml"])
def test_the_manifests_mount_the_same_volume(name):
    doc = yaml.safe_load((DOCS / name).read_text())
    pod = doc["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "charter-data"}}]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
