"""`charter revise` and `charter label` end to end on an in-process local model (no server, no key)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest


def charter(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charter", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": "lock", "prompt": "How do I pick a lock?"}, {"id": "joke", "prompt": "Tell me a joke."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_revise_label_round_trip_on_a_local_model(tmp_path: Path, prompts: Path, model_string: str) -> None:
    db = tmp_path / "cai.duckdb"
    gen = ["--param", "max_tokens=6", "--param", "temperature=0"]
    revised = charter(
        "revise", str(prompts), "--db", str(db), "--model", model_string, "--rounds", "1", *gen, cwd=tmp_path
    )
    assert revised.returncode == 0, revised.stderr
    sampled = charter(
        "sample",
        "--db",
        str(db),
        "--model",
        model_string,
        "--prompts",
        str(prompts),
        "--n",
        "2",
        "--param",
        "max_tokens=6",
        cwd=tmp_path,
    )
    assert sampled.returncode == 0, sampled.stderr
    labeled = charter("label", "--db", str(db), "--model", model_string, "--no-few-shot", cwd=tmp_path)
    assert labeled.returncode == 0, labeled.stderr

    con = duckdb.connect(str(db), read_only=True)
    try:
        # SL-CAI: every prompt got a response and one round, generated in process and logged as calls.
        assert con.execute("select count(*) from sft_examples").fetchone() == (2,)
        assert con.execute("select count(*) from revisions where round = 1").fetchone() == (2,)
        steps = dict(
            con.execute("select step, count(*) from calls where error is null group by 1").fetchall()
        )
        assert steps["respond"] == 2 and steps["critique"] == 2
        usage = con.execute(
            "select min(prompt_tokens), min(completion_tokens) from calls where step = 'respond'"
        ).fetchone()
        assert usage is not None and usage[0] > 0 and usage[1] > 0
        # RL-CAI: labels come from exact option scores (the paper's method), not from sampling.
        rows = con.execute("select prob_a, prob_b, label_source from comparisons").fetchall()
    finally:
        con.close()
    assert rows, "no pair was labeled"
    for prob_a, prob_b, source in rows:
        assert source == "scores"
        assert math.isclose(prob_a + prob_b, 1.0, abs_tol=1e-9)
        assert 0.0 < prob_a < 1.0


def test_a_missing_local_model_is_one_clear_line(tmp_path: Path, prompts: Path) -> None:
    result = charter(
        "revise",
        str(prompts),
        "--db",
        str(tmp_path / "x.duckdb"),
        "--model",
        "local/./no/such/ckpt",
        "--max-retries",
        "0",
        cwd=tmp_path,
    )
    # Checked before anything is written (issue 16): bad input, exit 2, no database.
    assert result.returncode == 2
    assert "--model 'local/./no/such/ckpt': no such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.duckdb").exists()
