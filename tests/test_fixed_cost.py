"""What a run pays before and around its calls: no litellm on the fast path, costs from its price
table read as data, and `latency_ms` that is the request's own time.

The process-level checks run `charter` in a fresh interpreter (this test process may have imported
litellm already) and look at `sys.modules` when it exits.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from charter_testing.fake_openai import FakeOpenAIServer
from charter_testkit import REPO, query, subprocess_env, write_prompts

from charter.backends import pricing

# Runs the CLI as `python -m charter` would, then reports which heavy modules it imported.
PROBE = """
import runpy, sys
sys.argv = ["charter", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("charter", run_name="__main__")
except SystemExit as exc:
    code = exc.code or 0
print("IMPORTED:" + ",".join(m for m in ("litellm", "aiohttp", "duckdb", "openai", "pandas", "numpy", "pyarrow", "yaml", "jinja2") if m in sys.modules))
import gc
print("GC:" + ",".join(map(str, gc.get_threshold())) + f" frozen={gc.get_freeze_count() > 0}")
sys.exit(code)
"""


def probe(*args: object) -> tuple[int, set[str], str]:
    """(exit code, heavy modules imported, stderr) of `charter ARGS` in a fresh interpreter."""
    code, imported, stderr, _ = probe_process(*args)
    return code, imported, stderr


def probe_process(*args: object) -> tuple[int, set[str], str, str]:
    """`probe`, and the garbage collector's thresholds the process ended with."""
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=REPO,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("IMPORTED:")), "IMPORTED:")
    gc_line = next((x for x in proc.stdout.splitlines() if x.startswith("GC:")), "GC:")
    imported = {m for m in line.removeprefix("IMPORTED:").split(",") if m}
    return proc.returncode, imported, proc.stderr, gc_line.removeprefix("GC:")


def test_only_the_charter_process_retunes_the_garbage_collector(cli) -> None:
    """The command tunes its own process's collector; running the CLI in a host process (a test, a
    notebook) leaves the host's collector as it was."""
    code, _, stderr, thresholds = probe_process("--help")
    assert code == 0, stderr
    assert thresholds == "50000,20,20 frozen=True"
    import gc

    before = gc.get_threshold()
    assert cli("--help").code == 0
    assert gc.get_threshold() == before


def test_help_imports_no_backend_or_database() -> None:
    code, imported, stderr = probe("--help")
    assert code == 0, stderr
    assert imported == set(), f"`charter --help` imported {imported}"


def test_fast_path_run_never_imports_litellm(server: FakeOpenAIServer, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [f"Question {i}: how do I fix a bike?" for i in range(12)])
    db = tmp_path / "cai.duckdb"
    args = ("revise", prompts, "--db", db, "--model", "openai/test", "--api-base", server.base_url)
    code, imported, stderr = probe(*args, "--rounds", "1", "--concurrency", "12")
    assert code == 0, stderr
    assert "litellm" not in imported
    # Nor aiohttp: a plain-http endpoint is posted by charter's own HTTP client.
    assert "aiohttp" not in imported
    # Nor pandas, pyarrow or NumPy: a run this short hands its rows to DuckDB as plain lists.
    assert not imported & {"pandas", "pyarrow", "numpy"}, imported
    calls = query(db, "SELECT count(*), count(cost_usd) FROM calls WHERE error IS NULL")[0]
    assert calls == (36, 0)  # served; a local model is not in the price table: no cost
    # `latency_ms` is the request's own time: on an instant server even the first calls (made
    # while the process was still warming up) are far below the seconds an import stall adds.
    first = query(db, "SELECT latency_ms FROM calls ORDER BY created_at LIMIT 12")
    assert max(r[0] for r in first) < 2500, first
    # Nothing left to do: the second run opens the file, finds everything done, makes no call.
    before = len(server.requests)
    code, imported, stderr = probe(*args, "--rounds", "1")
    assert code == 0, stderr
    assert "0 done, 12 already done" in stderr
    assert "litellm" not in imported
    assert len(server.requests) == before


def test_fast_path_cost_matches_litellm_for_known_models(server: FakeOpenAIServer, tmp_path: Path) -> None:
    """A priced model served through the fast path: the stored cost is what litellm computes."""
    from charter.backends.litellm_backend import import_litellm

    litellm = import_litellm()
    db = tmp_path / "cai.duckdb"
    prompts = write_prompts(tmp_path / "p.jsonl", ["How do I water a cactus?"])
    code, imported, stderr = probe(
        "revise",
        prompts,
        "--db",
        db,
        "--model",
        "openai/gpt-4o-mini",
        "--api-base",
        server.base_url,
        "--rounds",
        "1",
    )
    assert code == 0, stderr
    assert "litellm" not in imported
    rows = query(db, "SELECT prompt_tokens, completion_tokens, cost_usd FROM calls WHERE error IS NULL")
    assert len(rows) == 3
    for prompt_tokens, completion_tokens, cost in rows:
        p, c = litellm.cost_per_token(
            model="openai/gpt-4o-mini", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
        assert cost == pytest.approx(p + c, rel=1e-12) and cost > 0


FAST_PROVIDERS = ("openai", "text-completion-openai", "hosted_vllm")


def test_price_table_agrees_with_litellm_for_every_fast_path_model() -> None:
    """Every chat/completion model of the fast path's providers, under and over the long-prompt tier."""
    from charter.backends.litellm_backend import import_litellm

    litellm = import_litellm()
    table = pricing.price_table()
    names = {
        key.split("/", 1)[1] if key.startswith(f"{entry['litellm_provider']}/") else key
        for key, entry in table.items()
        if isinstance(entry, dict)
        and entry.get("litellm_provider") in FAST_PROVIDERS
        and entry.get("mode") in ("chat", "completion")
    }
    assert len(names) > 50  # the real table, not an empty one
    names |= {"bench", "Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/not-a-real-model"}
    checked = 0
    for name in sorted(names):
        for provider in FAST_PROVIDERS:
            for prompt_tokens, completion_tokens in ((1234, 567), (300_000, 20)):
                try:
                    p, c = litellm.cost_per_token(
                        model=f"{provider}/{name}",
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                    )
                    expected: float | None = p + c
                except Exception:  # litellm: "This model isn't mapped yet"
                    expected = None
                got = pricing.cost_usd(provider, name, prompt_tokens, completion_tokens)
                assert (got is None) == (expected is None), (provider, name, got, expected)
                if expected is not None:
                    assert got == pytest.approx(expected, rel=1e-9, abs=1e-15), (provider, name)
                checked += 1
    assert checked > 300
