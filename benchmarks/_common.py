"""Shared helpers for the benchmarks: the local fake server, prompts files, child processes.

Every benchmark talks to 127.0.0.1 only: `charter_testing.fake_openai` runs in its own process with a
fixed latency, so what is measured is the client side (charter, LiteLLM or the openai client).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# The fake server lives in its own distribution (plugins/charter-testing); `make install` installs it,
# and this makes a bare checkout work too.
TESTING = ROOT / "plugins" / "charter-testing" / "src"
for _path in (TESTING, SRC):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


@contextlib.contextmanager
def fake_server(latency_ms: float, logprobs: bool = True) -> Iterator[str]:
    """Run the fake OpenAI-compatible server in a subprocess; yields its base URL."""
    from charter_testing.fake_openai import start_subprocess

    proc, url = start_subprocess(latency_ms=latency_ms, logprobs=logprobs)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_prompts(path: Path, count: int, tag: str = "") -> Path:
    """A .jsonl prompts file with `count` distinct prompts (streamed to disk, never held in memory)."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(count):
            f.write(json.dumps({"prompt": f"{tag}Question {i}: how do I keep my houseplants alive?"}) + "\n")
    return path


def run_child(args: list[str], timeout: float = 900) -> dict:
    """Run `python <args>` and parse the JSON object on its last stdout line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"child {args} printed no result:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])
