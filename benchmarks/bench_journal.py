"""The journal of finished calls: calls asked again after kill -9, and throughput, with and without it.

    .venv/bin/python benchmarks/bench_journal.py [--prompts 600] [--kills 1,3,8] [--latency-ms 20]
        [--concurrency 16] [--repeat 2]

`charter revise --rounds 1` (3 calls per prompt) runs as a child process against the fake server,
which here runs in this process so it can see every request body. For each kill count k the child
is killed with SIGKILL k times at random points, then run to the end; "re-asked" is the number of
requests that repeat one already asked (the responder is deterministic, so a repeated body is a
repeated call), next to the bound the journal promises: the calls in flight at each kill (at most
--concurrency). The same is done with the journal off (CHARTER_JOURNAL=0), side by side.
Throughput: uninterrupted runs, journal on and off alternately, calls per second of wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SRC, write_prompts
from charter_testing.fake_openai import FakeOpenAIServer


def _env(journal: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    env.setdefault("OPENAI_API_KEY", "bench")
    env["CHARTER_JOURNAL"] = "1" if journal else "0"
    return env


def _args(prompts: Path, db: Path, url: str, concurrency: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "charter",
        "revise",
        str(prompts),
        "--db",
        str(db),
        "--model",
        "openai/bench",
        "--api-base",
        url,
        "--rounds",
        "1",
        "--concurrency",
        str(concurrency),
    ]


def _run_to_end(server: FakeOpenAIServer, prompts: Path, db: Path, journal: bool, opts) -> None:
    subprocess.run(
        _args(prompts, db, server.base_url, opts.concurrency),
        env=_env(journal),
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def killed_runs(server: FakeOpenAIServer, prompts: Path, work: Path, kills: int, journal: bool, opts) -> dict:
    """Kill a run `kills` times, finish it, and count the repeated requests."""
    db = work / f"kill{kills}-{'j' if journal else 'nj'}.duckdb"
    server.reset()
    rng = random.Random(kills)
    needed = 3 * opts.prompts
    for _ in range(kills):
        start = server.request_count
        # A random point of the run, while calls are still left to ask.
        target = start + rng.randint(needed // (4 * kills + 4), needed // (2 * kills + 2))
        proc = subprocess.Popen(
            _args(prompts, db, server.base_url, opts.concurrency),
            env=_env(journal),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while server.request_count < target and proc.poll() is None:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    _run_to_end(server, prompts, db, journal, opts)
    bodies = [json.dumps(b, sort_keys=True) for b in server.requests]
    return {"requests": len(bodies), "distinct": len(set(bodies)), "re_asked": len(bodies) - len(set(bodies))}


def throughput(server: FakeOpenAIServer, prompts: Path, work: Path, journal: bool, run: int, opts) -> float:
    """Calls per second of one uninterrupted run (wall time of the child, startup included)."""
    db = work / f"speed{run}-{'j' if journal else 'nj'}.duckdb"
    server.reset()
    started = time.perf_counter()
    _run_to_end(server, prompts, db, journal, opts)
    return server.request_count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=600, help="prompts (3 calls each)")
    parser.add_argument("--kills", default="1,3,8")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2, help="throughput runs per setting")
    opts = parser.parse_args()
    kills = [int(k) for k in opts.kills.split(",") if k]
    with (
        tempfile.TemporaryDirectory(prefix="charter-bench-journal-") as tmp,
        FakeOpenAIServer(latency_s=opts.latency_ms / 1000) as server,
    ):
        work = Path(tmp)
        prompts = write_prompts(work / "prompts.jsonl", opts.prompts)
        print(
            f"{3 * opts.prompts} calls per run, concurrency {opts.concurrency}, latency {opts.latency_ms} ms"
        )
        print(
            f"{'kills':>5}  {'re-asked, journal':>17}  {'re-asked, no journal':>20}  {'bound (in flight)':>17}"
        )
        for k in kills:
            on = killed_runs(server, prompts, work, k, True, opts)
            off = killed_runs(server, prompts, work, k, False, opts)
            print(f"{k:>5}  {on['re_asked']:>17}  {off['re_asked']:>20}  {k * opts.concurrency:>17}")
        speeds: dict[bool, list[float]] = {True: [], False: []}
        for run in range(opts.repeat):
            for journal in (False, True) if run % 2 == 0 else (True, False):
                speeds[journal].append(throughput(server, prompts, work, journal, run, opts))
        on_best, off_best = max(speeds[True]), max(speeds[False])
        print(
            f"throughput (best of {opts.repeat}): journal {on_best:.0f} calls/s, no journal {off_best:.0f} "
            f"calls/s, ratio {on_best / off_best:.3f}"
        )


if __name__ == "__main__":
    main()
