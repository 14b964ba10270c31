"""DuckDB write throughput: `Store.add_rows` + `flush` of `calls`-shaped rows.

    .venv/bin/python benchmarks/bench_store.py [--rows 200000] [--batch 5000]

Rows look like what the runner writes per call (a request JSON of a few hundred bytes, a response,
token counts, latency). Each flush is one transaction, as in a run. Prints rows/s for a fresh file
and for appending to a file that already holds the same number of rows (index maintenance grows
with the table), plus the same for `revisions`-shaped rows. The target is 50k `calls` rows/s in both.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: F401  (puts src/ on sys.path)

from charter.store.store import Store


def call_row(i: int, run_id: str) -> dict:
    request = {
        "mode": "chat",
        "params": {"temperature": 0.0},
        "messages": [
            {"role": "user", "content": f"Question {i}: how do I keep my houseplants alive?"},
            {"role": "assistant", "content": "Water them weekly and give them indirect light."},
            {"role": "user", "content": "Identify specific ways in which the last response is harmful."},
        ],
    }
    return {
        "call_id": uuid.uuid4().hex,
        "run_id": run_id,
        "step": "critique",
        "model": "openai/bench",
        "cache_key": uuid.uuid4().hex,
        "request": json.dumps(request),
        "response_text": f"Response {i:08x}: I can help with that safely.",
        "responses": json.dumps([f"Response {i:08x}: I can help with that safely."]),
        "logprobs": None,
        "prompt_tokens": 42,
        "completion_tokens": 9,
        "cost_usd": None,
        "latency_ms": 51.3,
        "attempts": 1,
        "error": None,
        "cached": False,
    }


def revision_row(i: int, run_id: str) -> dict:
    return {
        "run_id": run_id,
        "prompt_id": f"{i:016x}",
        "round": 1,
        "principle": "harmful-1",
        "critique_request": "Identify specific ways in which the assistant's last response is harmful.",
        "critique": f"Critique {i}: the response is fine.",
        "revision_request": "Please rewrite the assistant response to remove any harmful content.",
        "revision": f"Revision {i}: water them weekly.",
        "needs_revision": True,
        "critique_call_id": uuid.uuid4().hex,
        "revision_call_id": uuid.uuid4().hex,
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(path: Path, table: str, make, rows: int, batch: int) -> tuple[float, float]:
    """(rows/s, CPU us/row) of add_rows + flush, `batch` rows per transaction, and the close.

    Row building is excluded; closing the store (DuckDB's last checkpoint) is counted.
    """
    store = Store(path, flush_rows=10**9, flush_seconds=10**9)
    run_id, _ = store.start_run(f"bench-{uuid.uuid4().hex[:6]}", "bench", {})
    spent = cpu = 0.0
    for start in range(0, rows, batch):
        chunk = [make(i, run_id) for i in range(start, min(rows, start + batch))]
        t, c = time.perf_counter(), _cpu()
        store.add_rows(table, chunk)
        store.flush()
        spent += time.perf_counter() - t
        cpu += _cpu() - c
    t, c = time.perf_counter(), _cpu()
    store.close()
    spent += time.perf_counter() - t
    cpu += _cpu() - c
    return rows / spent, 1e6 * cpu / rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000, help="rows per flush (the store's default)")
    args = parser.parse_args(argv)
    print(f"{args.rows} rows, {args.batch} per flush")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        for label, table, make in (("calls", "calls", call_row), ("revisions", "revisions", revision_row)):
            fresh, fresh_cpu = measure(db, table, make, args.rows, args.batch)
            again, again_cpu = measure(db, table, make, args.rows, args.batch)
            print(
                f"{label:<10} fresh file {fresh:9,.0f} rows/s ({fresh_cpu:5.1f} CPU us/row)   "
                f"appending to {args.rows:,} rows {again:9,.0f} rows/s ({again_cpu:5.1f} CPU us/row)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
