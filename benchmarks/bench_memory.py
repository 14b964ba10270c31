"""Peak memory of a revise run as the number of prompts grows (it should stay flat).

    .venv/bin/python benchmarks/bench_memory.py [--prompts 10000,100000] [--rounds 0]
        [--concurrency 64] [--backend http|echo]

For each size, a prompts file is generated on disk, and `charter.sl.revise` runs over it in a fresh
child process; its peak RSS comes from `os.wait4` (the kernel's ru_maxrss for that child alone).
`--backend http` (default) talks to the local fake OpenAI server through the normal backend;
`--backend echo` uses an in-process backend that answers at once, to isolate charter's own memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SRC, fake_server, write_prompts


def child(prompts: str, db: str, url: str, rounds: int, concurrency: int, backend_kind: str) -> None:
    from charter.backends.base import Completion, CompletionRequest
    from charter.runner import RunnerOptions
    from charter.sl import revise

    class Echo:
        name = "echo"

        async def complete(self, request: CompletionRequest) -> Completion:
            return Completion(
                texts=[f"echo {len(request.messages or [])}"], prompt_tokens=1, completion_tokens=2
            )

    backend = Echo() if backend_kind == "echo" else None
    started = time.perf_counter()
    summary = revise(
        prompts,
        db=db,
        model="openai/bench",
        api_base=url,
        rounds=rounds,
        backend=backend,  # type: ignore[arg-type]
        options=RunnerOptions(concurrency=concurrency, max_retries=2),
    )
    print(
        json.dumps(
            {"calls": summary.calls, "completed": summary.completed, "seconds": time.perf_counter() - started}
        )
    )


def run_one(count: int, url: str, args: argparse.Namespace, tmp: Path) -> dict:
    prompts = write_prompts(tmp / f"prompts-{count}.jsonl", count)
    db = tmp / f"mem-{count}.duckdb"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(prompts),
        str(db),
        url,
        str(args.rounds),
        str(args.concurrency),
        args.backend,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed with {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    result["db_mb"] = db.stat().st_size / 2**20
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", default="10000,100000")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--backend", choices=("http", "echo"), default="http")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        prompts, db, url, rounds, conc, kind = args.child
        child(prompts, db, url, int(rounds), int(conc), kind)
        return 0
    sizes = [int(x) for x in args.prompts.split(",")]
    print(f"revise, rounds={args.rounds}, concurrency={args.concurrency}, backend={args.backend}")
    print(f"{'prompts':>10} {'calls':>10} {'seconds':>9} {'calls/s':>9} {'peak RSS MB':>12} {'db MB':>8}")
    with fake_server(args.latency_ms) as url, tempfile.TemporaryDirectory() as tmp:
        for count in sizes:
            r = run_one(count, url, args, Path(tmp))
            print(
                f"{count:>10,} {r['calls']:>10,} {r['seconds']:>9.1f} {r['calls'] / r['seconds']:>9.1f} "
                f"{r['peak_rss_mb']:>12.1f} {r['db_mb']:>8.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
