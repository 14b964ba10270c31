"""Watching a live run (issue 12 item 13): `charter sql`, `status` and `export` on a file a run is
writing, a second writer still refused, and progress lines in a log."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from charter_testing.fake_openai import FakeOpenAIServer, default_responder
from charter_testkit import REPO, query, revise_args, run_charter, subprocess_env, write_prompts


class _Gate:
    """A responder that answers only as many requests as the test has allowed so far.

    It blocks the fake server's loop while the run waits, so the run cannot finish (or race ahead)
    while the test looks at it, however slowly the looking processes start on a loaded machine.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.allowed = 0
        self.served = 0

    def __call__(self, req):
        with self._cond:
            # Far below the client's 120 s request timeout; a stuck test fails instead of hanging.
            self._cond.wait_for(lambda: self.served < self.allowed, timeout=100)
            self.served += 1
        return default_responder(req)

    def allow(self, n: float) -> None:
        with self._cond:
            self.allowed = n
            self._cond.notify_all()

    def wait_served(self, n: int, proc: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + 120
        while self.served < n and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended too early: {proc.communicate()[1]}"
        assert self.served >= n, f"the run made only {self.served} of {n} calls in 120 s"


def test_sql_status_and_export_work_while_a_run_writes(cli, tmp_path):
    gate = _Gate()
    total = 30  # x 3 calls (respond, critique, revise)
    prompts = write_prompts(tmp_path / "p.jsonl", [f"Red-team prompt number {i}?" for i in range(total)])
    db = tmp_path / "live.duckdb"
    server = FakeOpenAIServer(responder=gate).start()
    args = revise_args(prompts, db, server, "--rounds", "1", "--concurrency", "2", "--run-name", "live")
    proc = subprocess.Popen(
        [sys.executable, "-m", "charter", *map(str, args)],
        env=subprocess_env(CHARTER_PROGRESS_SECONDS="0.5"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        for look in range(2):
            gate.allow(10 + 30 * look)
            gate.wait_served(10 + 30 * look, proc)
            # Each look is another process, as a user in another terminal would run it.
            sql = run_charter("sql", db, "SELECT count(*) AS n FROM calls", "--format", "json")
            assert sql.code == 0, sql.stderr
            seen.append(json.loads(sql.stdout)[0]["n"])
            status = run_charter("status", db, "--format", "json")
            assert status.code == 0, status.stderr
            (run,) = json.loads(status.stdout)
            assert run["name"] == "live" and run["items_total"] == total
            assert run["status"] == "running" and run["calls"] >= seen[-1]
            text = run_charter("status", db)
            assert text.code == 0 and text.stdout.startswith("live (revise, running): "), text.stdout
            assert "  respond: " in text.stdout
        # What a reader sees grows while the run goes on: it never waits for the end.
        assert seen[0] < seen[-1] < 3 * total
        exported = cli("export", db, "--dataset", "sft", "--out", tmp_path / "partial.jsonl")
        assert exported.code == 0, exported.stderr
        # A second writer is still refused, naming the writer.
        second = cli(*revise_args(prompts, db, server, "--rounds", "0", "--run-name", "other"))
        assert second.code == 2
        assert f"database {db} is in use by PID {proc.pid}" in second.stderr
        gate.allow(float("inf"))
        _, stderr = proc.communicate(timeout=300)
    finally:
        gate.allow(float("inf"))
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop()
    assert proc.returncode == 0, stderr
    assert query(db, "SELECT count(*) FROM sft_examples") == [(total,)]
    assert query(db, "SELECT count(*) FROM runs") == [(1,)]  # the refused writer recorded nothing
    # stderr was not a terminal: progress lines, a few (the interval is shortened for the test).
    progress = [line for line in stderr.splitlines() if line.startswith("charter: live: ")]
    assert progress and all(f"/{total} items (" in line for line in progress), stderr
    final = cli("status", db)
    assert final.stdout.startswith(f"live (revise, done): {total}/{total} items (100%), {3 * total} calls")
