"""A `--batch` run killed (kill -9) while its batch is out, then resumed: requests submitted vs items.

Side by side in one run: the resume as charter does it (the batch ids in the database: it waits on
the batch it had submitted) and the same resume with the database's batch records deleted first
(what a run without them would have to do: submit everything again).

    python benchmarks/bench_batch_resume.py [--items 200]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _charter(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "charter", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def killed_and_resumed(items: int, keep_records: bool, work: Path) -> dict[str, int]:
    """Submit, kill -9 while the batch is in progress, resume; what the server saw."""
    import duckdb
    from charter_testing.fake_openai import FakeOpenAIServer

    prompts = work / f"prompts-{keep_records}.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(items)))
    db = work / f"cai-{keep_records}.duckdb"
    env = {
        **os.environ,
        "CHARTER_BATCH_POLL_SECONDS": "0.05",
        "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p),
    }
    with FakeOpenAIServer() as server:
        args = ["sample", "--db", str(db), "--model", "openai/test", "--api-base", server.base_url]
        args += ["--prompts", str(prompts), "--batch"]
        server.batches.hold()
        child = _charter(args, env)
        while server.batches.lines_submitted < items:
            if child.poll() is not None:
                raise RuntimeError(f"the run ended before submitting (exit {child.returncode})")
            time.sleep(0.05)
        time.sleep(0.5)  # let it record the batch id (a kill before that is covered by metadata)
        child.send_signal(signal.SIGKILL)
        child.wait()
        before = server.batches.lines_submitted
        if not keep_records:
            con = duckdb.connect(str(db))
            con.execute("DELETE FROM batch_requests")
            con.execute("DELETE FROM batch_jobs")
            con.close()
        server.batches.release()
        resumed = _charter(args, env)
        if resumed.wait() != 0:
            raise RuntimeError(f"the resumed run failed (exit {resumed.returncode})")
        ids = server.batches.submitted_ids
        con = duckdb.connect(str(db), read_only=True)
        done = con.execute("SELECT count(DISTINCT prompt_id) FROM samples").fetchone()
        con.close()
        return {
            "items": items,
            "submitted_before_kill": before,
            "submitted_after_resume": len(ids) - before,
            "submitted_twice": len(ids) - len(set(ids)),
            "online_requests": server.request_count,
            "items_done": int(done[0]) if done else 0,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        charter = killed_and_resumed(args.items, keep_records=True, work=work)
        without = killed_and_resumed(args.items, keep_records=False, work=work)
    for name, row in (("batch ids kept (charter)", charter), ("batch records deleted", without)):
        total = row["submitted_before_kill"] + row["submitted_after_resume"]
        print(
            f"{name:>26}: {row['items']} items, {total} requests submitted "
            f"({row['submitted_before_kill']} before the kill, {row['submitted_after_resume']} on resume), "
            f"{row['submitted_twice']} twice, {row['online_requests']} online, {row['items_done']} done; "
            f"submitted/items = {total / row['items']:.2f}"
        )


if __name__ == "__main__":
    main()
