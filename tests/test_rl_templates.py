"""A broken template override is bad input for `sample` and `label` too: exit 2 before any work."""

from __future__ import annotations

from pathlib import Path

import duckdb
from charter_testkit import write_prompts

BAD = (
    Path(__file__).parent
    / "data"
    / "prompts"
    / "templates"
    / "bad"
    / "no_front_matter"
    / "respond-chat.jinja"
)


def test_sample_with_a_broken_override_writes_nothing(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?"])
    db = tmp_path / "never.duckdb"
    result = cli(
        "sample", "--db", db, "--model", "openai/test", "--api-base", server.base_url,
        "--prompts", prompts, "--prompts-dir", BAD.parent,
    )  # fmt: skip
    assert result.code == 2
    (line,) = result.error_lines()
    assert line.startswith(f"charter: error: {BAD}"), line
    assert not db.exists()
    assert server.request_count == 0


def test_label_with_a_broken_override_records_no_run(cli, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I pick a lock?"])
    db = tmp_path / "cai.duckdb"
    sampled = cli(
        "sample", "--db", db, "--model", "openai/test", "--api-base", server.base_url, "--prompts", prompts
    )
    assert sampled.code == 0, sampled.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "label-mc-chat.jinja").write_text(BAD.read_text(encoding="utf-8"), encoding="utf-8")
    server.reset()
    result = cli(
        "label", "--db", db, "--model", "openai/test", "--api-base", server.base_url, "--prompts-dir", broken
    )
    assert result.code == 2
    (line,) = result.error_lines()
    assert line.startswith(f"charter: error: {broken / 'label-mc-chat.jinja'}"), line
    assert server.request_count == 0
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("select count(*) from runs where command = 'label'").fetchone() == (0,)
    finally:
        con.close()
