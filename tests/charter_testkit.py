"""Test helpers shared by the suite: the CLI in-process and as a subprocess, prompts files, queries.

Imported by conftest.py first, so the environment below is set before anything imports litellm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from charter_testing.fake_openai import FakeOpenAIServer, FakeRequest
from click.testing import CliRunner

# Set on import, before anything imports litellm (nothing above does): no network, a test key.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["OPENAI_API_KEY"] = "test-key"
# A developer's own overrides must not change what the tests see.
for _name in ("CHARTER_PROMPTS_PATH", "CHARTER_CONSTITUTIONS_PATH", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
    os.environ.pop(_name, None)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
CHAT_MODEL = "openai/test"
COMPLETION_MODEL = "text-completion-openai/test"


def last_user_text(req: FakeRequest) -> str:
    """The text a responder usually keys on: the last user message, or the whole completion prompt."""
    if req.messages is not None:
        users = [m for m in req.messages if m.get("role") == "user"]
        return str(users[-1]["content"]) if users else ""
    return req.prompt or ""


# --------------------------------------------------------------------------- running the CLI
@dataclass
class CliResult:
    """What one `charter` invocation did."""

    code: int
    stdout: str
    stderr: str

    def error_lines(self) -> list[str]:
        """stderr lines that are not plugin-loading warnings (those belong to other distributions)."""
        return [
            line
            for line in self.stderr.splitlines()
            if line.strip() and not line.startswith("charter: warning:")
        ]


class _MainCommand:
    """Lets click's CliRunner drive `charter.cli.invoke`, so exit codes and error mapping are the real ones."""

    name = "charter"

    def main(self, args: Sequence[str] = (), prog_name: str | None = None, **_: Any) -> None:
        from charter.cli import invoke

        saved = sys.argv
        sys.argv = ["charter", *args]
        try:
            invoke()
        finally:
            sys.argv = saved


def run_cli(*args: Any, stdin: str | None = None, env: dict[str, str] | None = None) -> CliResult:
    """Run `charter ARGS` in this process (fast: litellm is imported once per session)."""
    runner = CliRunner()
    result = runner.invoke(_MainCommand(), [str(a) for a in args], input=stdin, env=env)  # type: ignore[arg-type]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a `python -m charter` child process."""
    env = dict(os.environ)
    env.update(extra)
    return env


def run_charter(
    *args: Any, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> CliResult:
    """Run `python -m charter ARGS` as a real child process."""
    proc = subprocess.run(
        [sys.executable, "-m", "charter", *(str(a) for a in args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env or subprocess_env(),
        timeout=timeout,
        cwd=REPO,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


# --------------------------------------------------------------------------- files and queries
def write_prompts(path: Path, prompts: Sequence[str | dict[str, Any]]) -> Path:
    """A .jsonl prompts file: plain strings become {"prompt": ...}."""
    lines = [json.dumps(p if isinstance(p, dict) else {"prompt": p}) for p in prompts]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def query(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Rows of `sql` from a read-only connection (closed again, so the CLI can write next)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def query_dicts(db: Path, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    """Like `query`, as dicts keyed by column name."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute(sql, params or [])
        cols = [d[0] for d in cur.description or []]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


def columns(db: Path, relation: str) -> list[str]:
    """Column names of a table or view, in order."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute(f"SELECT * FROM {relation} LIMIT 0")
        return [d[0] for d in cur.description or []]
    finally:
        con.close()


def revise_args(prompts: Path, db: Path, server: FakeOpenAIServer, *extra: Any) -> list[Any]:
    """`revise PROMPTS --db DB --model openai/test --api-base URL` plus `extra`."""
    return ["revise", prompts, "--db", db, "--model", CHAT_MODEL, "--api-base", server.base_url, *extra]


def completion_args(prompts: Path, db: Path, server: FakeOpenAIServer, *extra: Any) -> list[Any]:
    """`revise PROMPTS --db DB --model <completion model> --api-base URL --mode completion` plus `extra`."""
    model = ["--model", COMPLETION_MODEL, "--api-base", server.base_url, "--mode", "completion"]
    return ["revise", prompts, "--db", db, *model, *extra]
