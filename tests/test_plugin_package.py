"""A third-party plugin package (tests/plugins/charter-example) used through the CLI: its label method,
export schema and trainer work exactly like the core's, found through its `charter` entry point."""

from __future__ import annotations

import json
import math
import os
import tomllib
from pathlib import Path

import pytest
from charter_testing.fake_openai import FakeOpenAIServer, FakeReply, FakeRequest, FakeToken
from charter_testkit import (
    CHAT_MODEL,
    COMPLETION_MODEL,
    query_dicts,
    run_charter,
    subprocess_env,
    write_prompts,
)

from charter import rl
from charter.hookspecs import hookimpl
from charter.plugins import get_exporters, get_label_methods, get_trainers, register_plugin, unregister_plugin

PACKAGE = Path(__file__).parent / "plugins" / "charter-example"


def _install(site: Path) -> dict[str, str]:
    """What `pip install` leaves behind, without pip: the package's source on the path and a
    .dist-info carrying the entry points its pyproject.toml declares."""
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dist = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n", encoding="utf-8"
    )
    points = "".join(f"{k} = {v}\n" for k, v in project["entry-points"]["charter"].items())
    (dist / "entry_points.txt").write_text(f"[charter]\n{points}", encoding="utf-8")
    path = [str(site), str(PACKAGE / "src"), os.environ.get("PYTHONPATH", "")]
    return subprocess_env(PYTHONPATH=os.pathsep.join(p for p in path if p))


def responder(req: FakeRequest) -> FakeReply | str:
    if req.prompt is not None and req.prompt.endswith("The answer is:"):
        # writes (B), though its log-probabilities lean only slightly that way: 0.4 vs 0.6
        return FakeReply(" (B)", tokens=[FakeToken(" (B)", {" (A)": math.log(0.4), " (B)": math.log(0.6)})])
    return f"Reply {req.choice_index} " + "and more " * req.choice_index


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _install(tmp_path_factory.mktemp("site"))


@pytest.fixture
def pairs_db(tmp_path: Path, server: FakeOpenAIServer) -> Path:
    server.responder = responder
    db = tmp_path / "cai.duckdb"
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?", "Insult my neighbour.", "Hi"])
    assert rl.sample(prompts, db=db, model=CHAT_MODEL, api_base=server.base_url, n=2).ok
    return db


def test_charter_plugins_lists_what_the_package_registers(plugin_env: dict[str, str]) -> None:
    out = run_charter("plugins", env=plugin_env)
    assert out.code == 0, out.stderr
    lines = out.stdout.splitlines()
    at = lines.index("example [charter-example]: charter_example.plugin")
    assert lines[at + 1 : at + 4] == [
        "  - label method letter",
        "  - exporter preferences --schema openai",
        "  - trainer length-bias",
    ]


def test_label_export_and_train_through_the_plugin(
    pairs_db: Path, server: FakeOpenAIServer, plugin_env: dict[str, str], tmp_path: Path
) -> None:
    label = ["label", "--db", pairs_db, "--model", COMPLETION_MODEL, "--api-base", server.base_url]
    done = run_charter(*label, "--method", "letter", "--run-name", "hard", env=plugin_env)
    assert done.code == 0, done.stderr
    hard = query_dicts(
        pairs_db, "SELECT * FROM pair_labels WHERE run_id = (SELECT run_id FROM runs WHERE name = 'hard')"
    )
    # The written letter, not the log-probabilities (which the core's logprobs method reads: 0.4).
    assert len(hard) == 3 and {(r["method"], r["prob_a"], r["label_source"]) for r in hard} == {
        ("letter", 0.0, "parsed")
    }

    out = tmp_path / "prefs.jsonl"
    exported = run_charter(
        "export", pairs_db, "--dataset", "preferences", "--schema", "openai", "--out", out, env=plugin_env
    )
    assert exported.code == 0, exported.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    pairs = {r["pair_id"]: r for r in query_dicts(pairs_db, "SELECT * FROM pairs")}
    assert len(rows) == 3
    for row in rows:
        assert row["input"]["messages"][-1]["role"] == "user"
        (preferred,) = row["preferred_output"]
        assert preferred["role"] == "assistant"
        assert preferred["content"] in {p["response_b"] for p in pairs.values()}  # (B) won every time

    from charter_transformers.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny")
    trained = run_charter(
        "train", "length-bias", "--db", pairs_db, "--model", model, "--out", tmp_path / "lb",
        "--param", "steps=50", env=plugin_env, timeout=300,
    )  # fmt: skip
    assert trained.code == 0, trained.stderr
    fit = json.loads((tmp_path / "lb" / "length_bias.json").read_text(encoding="utf-8"))
    # Response 1 is longer than response 0 and always won as (B): the fit finds a length preference.
    assert fit["weight"] > 0 and fit["accuracy"] == 1.0
    (run,) = query_dicts(pairs_db, "SELECT kind, status, train_rows FROM training_runs")
    assert run == {"kind": "length-bias", "status": "done", "train_rows": 3}


def test_an_unknown_method_or_schema_names_the_installed_ones(
    pairs_db: Path, server: FakeOpenAIServer, plugin_env: dict[str, str], tmp_path: Path
) -> None:
    label = ["label", "--db", pairs_db, "--model", COMPLETION_MODEL, "--api-base", server.base_url]
    bad = run_charter(*label, "--method", "logprob", env=plugin_env)
    assert bad.code == 2
    assert bad.stderr.strip().splitlines() == [
        "charter: error: --method 'logprob': expected one of cot, letter, logprobs (the installed label methods)"
    ]
    assert query_dicts(pairs_db, "SELECT count(*) AS n FROM runs WHERE command = 'label'") == [{"n": 0}]
    without = run_charter(*label, "--method", "letter")  # the package not installed
    assert without.code == 2 and "expected one of cot, logprobs" in without.stderr
    schema = run_charter(
        "export", pairs_db, "--dataset", "preferences", "--schema", "opena", "--out", tmp_path / "x.jsonl",
        env=plugin_env,
    )  # fmt: skip
    assert schema.code == 2 and "--schema 'opena': expected one of hf-cai, openai, trl" in schema.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_each_registry_has_one_reader_and_refuses_a_name_twice() -> None:
    class Twice:
        @hookimpl
        def register_label_methods(self, register):  # type: ignore[no-untyped-def]
            register("cot", object)

    assert {"logprobs", "cot"} <= set(get_label_methods())
    assert {"trl", "hf-cai"} <= set(get_exporters()["preferences"])
    assert {"sft", "reward", "ppo", "dpo"} <= set(get_trainers())
    plugin = Twice()
    register_plugin(plugin, name="twice")
    try:
        with pytest.raises(ValueError, match="two plugins register the label method 'cot'"):
            get_label_methods()
    finally:
        unregister_plugin(plugin)
    assert get_label_methods()["cot"].__name__ == "LabelCoT"
