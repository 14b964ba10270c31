"""`charter run PIPELINE.yaml`: the examples end to end against the fake server, composition, file errors."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from charter_testing.fake_openai import FakeOpenAIServer, FakeReply, FakeRequest, FakeToken
from charter_testkit import REPO, CliResult, query, query_dicts, write_prompts

from charter.pipeline import PipelineError, load_pipeline, run_pipeline

EXAMPLES = REPO / "examples"


def responder(req: FakeRequest) -> FakeReply | str:
    """Policy and revision answers for chat, a soft multiple-choice answer for completions."""
    if req.prompt is not None:
        if req.prompt.endswith("The answer is:"):
            return FakeReply(
                " (A)", tokens=[FakeToken(" (A)", {" (A)": math.log(0.6), " (B)": math.log(0.2)})]
            )
        return " Option (A) is better.\n\nHuman:"
    return f"Answer {req.choice_index}: I'd rather not help with that, but here is something safe."


@pytest.fixture
def env(server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    server.responder = responder
    values = {
        "CHARTER_API_BASE": server.base_url,
        "CHARTER_MODEL": "openai/sl",
        "CHARTER_POLICY_MODEL": "openai/policy",
        "CHARTER_FEEDBACK_MODEL": "text-completion-openai/base",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return values


def test_rl_cai_example_end_to_end(
    env: dict[str, str], tmp_path: Path, server: FakeOpenAIServer, cli: Callable[..., CliResult]
) -> None:
    db = tmp_path / "cai.duckdb"
    result = cli("run", EXAMPLES / "rl-cai.yaml", "--db", db)
    assert result.code == 0, result.stderr
    assert (
        "step 1 sample" in result.stderr
        and "step 2 label" in result.stderr
        and "step 3 export" in result.stderr
    )
    prompts = len((EXAMPLES / "red_team.jsonl").read_text(encoding="utf-8").splitlines())
    assert query(db, "SELECT count(*) FROM comparisons")[0][0] == prompts
    runs = query_dicts(db, "SELECT name, command, status, config FROM runs ORDER BY started_at")
    assert [r["command"] for r in runs] == ["sample", "label"] and all(r["status"] == "done" for r in runs)
    assert json.loads(runs[1]["config"])["mode"] == "completion"
    rows = [json.loads(line) for line in (tmp_path / "prefs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == prompts
    assert all(
        math.isclose(r["chosen_prob"], 0.75) and r["chosen"][0]["content"].startswith("Answer 0")
        for r in rows
    )
    assert {b["model"] for b in server.requests} == {"policy", "base"}
    # running it again resumes every step: no new requests
    server.reset()
    again = cli("run", EXAMPLES / "rl-cai.yaml", "--db", db, "--force")  # prefs.jsonl exists now
    assert again.code == 0 and server.request_count == 0
    assert "(resumed)" in again.stderr


def test_sl_cai_example(env: dict[str, str], tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    result = cli("run", EXAMPLES / "sl-cai.yaml", "--db", tmp_path / "sl.duckdb")
    assert result.code == 0, result.stderr
    rows = (tmp_path / "sft.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 4 and json.loads(rows[0])["messages"][-1]["role"] == "assistant"


def test_revise_sample_label_in_one_file(
    env: dict[str, str], tmp_path: Path, server: FakeOpenAIServer
) -> None:
    write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?", "Insult my boss."])
    (tmp_path / "all.yaml").write_text(
        """
db: all.duckdb
defaults:
  model: openai/sl
  api_base: ${CHARTER_API_BASE}
steps:
  - revise: {name: sl, prompts: p.jsonl, rounds: 1}
  - sample: {name: pairs, n: 3, pairs: adjacent}
  - label: {model: "text-completion-openai/base", swap: true, few_shot: false, ensemble: 2}
  - export: {dataset: preferences, out: out/prefs.jsonl, schema: hf-cai}
""",
        encoding="utf-8",
    )
    seen: list[str] = []
    results = run_pipeline(tmp_path / "all.yaml", on_step=lambda i, r: seen.append(r.kind))
    assert seen == ["revise", "sample", "label", "export"] and all(r.ok for r in results)
    db = tmp_path / "all.duckdb"
    sl_id = query(db, "SELECT run_id FROM runs WHERE name = 'sl'")[0][0]
    assert query(db, "SELECT DISTINCT source_run_id FROM pairs") == [(sl_id,)]
    assert query(db, "SELECT count(*) FROM comparisons")[0][0] == 4  # 2 prompts x 2 adjacent pairs
    assert query(db, "SELECT count(*) FROM feedback_queries")[0][0] == 16  # x 2 principles x 2 orders
    rows = [
        json.loads(line)
        for line in (tmp_path / "out" / "prefs.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(rows) == 4 and all(r["init_response"] for r in rows)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "steps:\n  - sample:\n      prompts: p.jsonl\n      nn: 2\n",
            "steps[0].sample.nn: extra inputs are not permitted (line 4)",
        ),
        (
            "steps:\n  - sample:\n      prompts: p.jsonl\n      n: 1\n",
            "steps[0].sample.n: input should be greater than or equal to 2 (line 4)",
        ),
        (
            "steps:\n  - training: {}\n",
            "steps[0]: unknown step 'training'; expected revise, sample, label, export or train (line 2)",
        ),
        ("steps: []\n", "steps: list should have at least 1 item"),
        (
            "db: x\nsteps:\n  - label:\n      model: ${NOT_SET_ANYWHERE}\n",
            "steps[0].label.model: environment variable NOT_SET_ANYWHERE is not set (line 4)",
        ),
        ("steps:\n  - label: {clamp: '0.9,0.1'}\n", "--clamp"),
        ("steps: [\n", "invalid YAML"),
        ("model: x\nmodel: y\nsteps: []\n", "duplicate key 'model'"),
    ],
)
def test_bad_pipeline_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PipelineError) as info:
        load_pipeline(path, env={})
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_bad_pipeline_cli_exit_2_writes_nothing(
    tmp_path: Path, cli: Callable[..., CliResult], server: FakeOpenAIServer
) -> None:
    write_prompts(tmp_path / "p.jsonl", ["Hi"])
    path = tmp_path / "p.yaml"
    db = tmp_path / "x.duckdb"
    path.write_text(
        f"defaults: {{model: openai/m, api_base: {server.base_url}}}\n"
        "steps:\n  - sample: {prompts: p.jsonl}\n  - sample: {prompts: missing.jsonl}\n",
        encoding="utf-8",
    )
    result = cli("run", path, "--db", db)
    assert result.code == 2 and "missing.jsonl: no such file" in result.stderr
    no_model = tmp_path / "m.yaml"
    no_model.write_text("steps:\n  - sample: {prompts: p.jsonl}\n", encoding="utf-8")
    result = cli("run", no_model, "--db", db)
    assert result.code == 2 and "steps[0].sample.model: no model" in result.stderr
    no_source = tmp_path / "s.yaml"
    no_source.write_text("defaults: {model: openai/m}\nsteps:\n  - sample: {n: 2}\n", encoding="utf-8")
    result = cli("run", no_source, "--db", db)
    assert result.code == 2 and "needs prompts or from_run" in result.stderr
    missing = cli("run", tmp_path / "nope.yaml")
    assert missing.code == 2
    assert missing.stderr == f"charter: error: {tmp_path / 'nope.yaml'}: no such file\n"
    assert not db.exists() and server.request_count == 0


def test_examples_validate() -> None:
    for name in ("sl-cai.yaml", "rl-cai.yaml"):
        pipeline = load_pipeline(EXAMPLES / name, env={})
        assert pipeline.db == "cai.duckdb" and pipeline.defaults.api_base == "http://localhost:8000/v1"
