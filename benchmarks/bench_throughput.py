"""Calls per second: charter vs a plain LiteLLM loop vs a plain AsyncOpenAI loop, same local server.

    .venv/bin/python benchmarks/bench_throughput.py [--calls 2000] [--latency-ms 50]
        [--concurrency 16,64,256] [--modes ...] [--repeat 1]

The fake OpenAI-compatible server (charter_testing.fake_openai) runs in its own process and answers
every request after --latency-ms, so the numbers measure the client side. Each measurement runs in a
fresh child process (same interpreter, litellm already imported before the clock starts):

- `openai`: N x `AsyncOpenAI.chat.completions.create`, C coroutines pulling from one counter.
- `openai-aiohttp`: the same with the SDK's aiohttp transport (`openai.DefaultAioHttpClient`), which
  charter's fast path uses with CHARTER_HTTP_TRANSPORT=openai: the ceiling for an openai-SDK client
  on this machine. (By default the fast path posts with aiohttp itself, without the SDK.)
- `litellm`: the same loop with `litellm.acompletion(model="openai/...", api_base=...)`.
- `revise`: `charter.sl.revise` (rounds=1: respond, critique, revision = 3 calls per prompt) into a
  fresh DuckDB file with `--concurrency C`, default backend (the OpenAI fast path for `openai/`).
- `revise-litellm`: the same with `--param charter_fast_path=false` (every call through litellm).
- `revise-router`: the same through LiteLLM's Router (two deployments, both this server), what a
  repeated `--api-base` uses.
- `revise-2proc`: two `revise --shard i/2` processes at once, each with half the concurrency and its
  own DuckDB file: the most that worker processes (one event loop per core) could add here.
- `label`: `charter.rl.label` (multiple choice with log-probabilities, one call per pair) over pairs
  made beforehand, untimed, by `charter.rl.sample`; `label-litellm` the same through litellm.

Ratios are charter's calls/s over each plain loop's at the same concurrency. This measures the
event loop with imports done; benchmarks/bench_client_ceiling.py times whole processes, as a user's
command runs, against a raw aiohttp loop and distilabel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fake_server, run_child, write_prompts

MODEL = "openai/bench"
PROMPT = "Question {i}: how do I keep my houseplants alive?"


# --------------------------------------------------------------------------- children
def _cpu() -> float:
    """CPU seconds used by this process so far (all threads, user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _plain_loop(calls: int, concurrency: int, one) -> None:
    counter = iter(range(calls))

    async def worker() -> None:
        for i in counter:
            await one(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def child_openai(url: str, calls: int, concurrency: int, aiohttp: bool = False) -> dict:
    import openai

    async def main() -> tuple[float, float]:
        http_client = openai.DefaultAioHttpClient() if aiohttp else None
        client = openai.AsyncOpenAI(base_url=url, api_key="no-key", max_retries=0, http_client=http_client)

        async def one(i: int) -> None:
            r = await client.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": PROMPT.format(i=i)}]
            )
            assert r.choices[0].message.content

        started, cpu = time.perf_counter(), _cpu()
        await _plain_loop(calls, concurrency, one)
        elapsed, cpu = time.perf_counter() - started, _cpu() - cpu
        await client.close()
        return elapsed, cpu

    elapsed, cpu = asyncio.run(main())
    return {"calls": calls, "seconds": elapsed, "cpu_s": cpu}


def child_litellm(url: str, calls: int, concurrency: int) -> dict:
    from charter.backends.litellm_backend import import_litellm

    litellm = import_litellm()  # the same quiet settings charter uses (no callbacks, no logging)

    async def main() -> tuple[float, float]:
        async def one(i: int) -> None:
            r = await litellm.acompletion(
                model=MODEL,
                api_base=url,
                api_key="no-key",
                messages=[{"role": "user", "content": PROMPT.format(i=i)}],
                num_retries=0,
            )
            assert r.choices[0].message.content

        started, cpu = time.perf_counter(), _cpu()
        await _plain_loop(calls, concurrency, one)
        elapsed, cpu = time.perf_counter() - started, _cpu() - cpu
        await litellm.close_litellm_async_clients()
        return elapsed, cpu

    elapsed, cpu = asyncio.run(main())
    return {"calls": calls, "seconds": elapsed, "cpu_s": cpu}


def child_revise(url: str, calls: int, concurrency: int, fast: bool, router: bool = False) -> dict:
    from charter.backends.litellm_backend import import_litellm
    from charter.runner import RunnerOptions
    from charter.sl import revise

    import_litellm()
    rounds = 1
    prompts = math.ceil(calls / (1 + 2 * rounds))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_prompts(Path(tmp) / "prompts.jsonl", prompts)
        params = {} if fast else {"charter_fast_path": False}
        started, cpu = time.perf_counter(), _cpu()
        summary = revise(
            path,
            db=Path(tmp) / "bench.duckdb",
            model=MODEL,
            api_base=[url, url] if router else url,
            rounds=rounds,
            params=params,
            options=RunnerOptions(concurrency=concurrency, max_retries=0),
        )
        elapsed, cpu = time.perf_counter() - started, _cpu() - cpu
    if not summary.ok:
        raise RuntimeError(f"revise failed: {summary.errors[:3]}")
    return {"calls": summary.calls, "seconds": elapsed, "cpu_s": cpu}


def child_revise_shard(url: str, calls: int, concurrency: int, shard: str, prompts: str, db: str) -> dict:
    """One shard of a revise run; reports its timed window in wall-clock time (time.time)."""
    from charter.backends.litellm_backend import import_litellm
    from charter.runner import RunnerOptions
    from charter.sl import revise

    import_litellm()
    started, cpu = time.time(), _cpu()
    summary = revise(
        prompts,
        db=db,
        model=MODEL,
        api_base=url,
        rounds=1,
        shard=shard,
        options=RunnerOptions(concurrency=concurrency, max_retries=0),
    )
    if not summary.ok:
        raise RuntimeError(f"revise failed: {summary.errors[:3]}")
    return {"calls": summary.calls, "start": started, "end": time.time(), "cpu_s": _cpu() - cpu}


def child_revise_processes(url: str, calls: int, concurrency: int, processes: int) -> dict:
    """`processes` shard processes at once on this machine, concurrency split between them.

    This is what worker processes (one event loop each, rows sent to one writer) could buy at
    most: here each process even writes its own DuckDB file, so nothing is shared.
    """
    import subprocess

    from _common import SRC

    prompts_count = math.ceil(calls / 3)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_prompts(Path(tmp) / "prompts.jsonl", prompts_count)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--shard-child",
                    url,
                    str(max(1, concurrency // processes)),
                    f"{i}/{processes}",
                    str(path),
                    str(Path(tmp) / f"shard{i}.duckdb"),
                ],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for i in range(processes)
        ]
        results = []
        for proc in procs:
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"shard process failed ({proc.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {
        "calls": sum(r["calls"] for r in results),
        "seconds": wall,
        "cpu_s": sum(r["cpu_s"] for r in results),
    }


def child_label(url: str, calls: int, concurrency: int, fast: bool = True) -> dict:
    """`charter.rl.label` (multiple choice, log-probabilities): one call per pair.

    The pairs are made first, untimed, with `charter.rl.sample` (n=2 -> one pair per prompt).
    """
    try:
        from charter import rl
    except ImportError:
        return {"skipped": "charter.rl does not exist yet"}
    if not hasattr(rl, "label") or not hasattr(rl, "sample"):
        return {"skipped": "charter.rl.label / charter.rl.sample do not exist yet"}
    from charter.backends.litellm_backend import import_litellm
    from charter.runner import RunnerOptions

    import_litellm()
    params = {} if fast else {"charter_fast_path": False}
    options = RunnerOptions(concurrency=concurrency, max_retries=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_prompts(Path(tmp) / "prompts.jsonl", calls)
        db = Path(tmp) / "bench.duckdb"
        made = rl.sample(path, db=db, model=MODEL, api_base=url, n=2, params=params, options=options)
        if not made.ok:
            raise RuntimeError(f"sample failed: {made.errors[:3]}")
        started, cpu = time.perf_counter(), _cpu()
        summary = rl.label(db=db, model=MODEL, api_base=url, params=params, options=options)
        elapsed, cpu = time.perf_counter() - started, _cpu() - cpu
    if not summary.ok:
        raise RuntimeError(f"label failed: {summary.errors[:3]}")
    return {"calls": summary.calls, "seconds": elapsed, "cpu_s": cpu}


CHILDREN = {
    "openai": lambda url, n, c, w: child_openai(url, n, c),
    "openai-aiohttp": lambda url, n, c, w: child_openai(url, n, c, aiohttp=True),
    "litellm": lambda url, n, c, w: child_litellm(url, n, c),
    "revise": lambda url, n, c, w: child_revise(url, n, c, fast=True),
    "revise-litellm": lambda url, n, c, w: child_revise(url, n, c, fast=False),
    "revise-router": lambda url, n, c, w: child_revise(url, n, c, fast=False, router=True),
    "revise-2proc": lambda url, n, c, w: child_revise_processes(url, n, c, 2),
    "label": lambda url, n, c, w: child_label(url, n, c, fast=True),
    "label-litellm": lambda url, n, c, w: child_label(url, n, c, fast=False),
}


# --------------------------------------------------------------------------- parent
def _table(title: str, levels: list[int], rows: dict[str, list[str]]) -> str:
    out = [title, f"{'':<24}" + "".join(f"{'c=' + str(c):>10}" for c in levels)]
    out += [f"{name:<24}" + "".join(f"{cell:>10}" for cell in cells) for name, cells in rows.items()]
    return "\n".join(out)


def report(results: dict[str, dict[int, list[dict]]], levels: list[int], header: str) -> str:
    """Tables of calls/s (best of the repeats), client CPU ms per call (least), and the ratios."""

    def best(mode: str, conc: int, key: str) -> float | None:
        runs = [r for r in results.get(mode, {}).get(conc, []) if "seconds" in r]
        if not runs:
            return None
        if key == "calls_per_s":
            return max(r["calls"] / r["seconds"] for r in runs)
        return min(1000 * r["cpu_s"] / r["calls"] for r in runs)

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    modes = list(results)
    rate = {m: [fmt(best(m, c, "calls_per_s"), ".1f") for c in levels] for m in modes}
    cpu = {m: [fmt(best(m, c, "cpu_ms"), ".2f") for c in levels] for m in modes}
    ratios: dict[str, list[str]] = {}
    cpu_ratios: dict[str, list[str]] = {}
    for charter_mode in (
        "revise",
        "revise-litellm",
        "revise-router",
        "revise-2proc",
        "label",
        "label-litellm",
    ):
        for base in ("litellm", "openai"):
            if charter_mode not in results or base not in results:
                continue
            cells, cpu_cells = [], []
            for c in levels:
                a, b = best(charter_mode, c, "calls_per_s"), best(base, c, "calls_per_s")
                cells.append("-" if a is None or b is None else f"{a / b:.2f}x")
                a, b = best(charter_mode, c, "cpu_ms"), best(base, c, "cpu_ms")
                # Throughput when CPU-bound is 1/cpu-per-call: base cost over charter's cost.
                cpu_cells.append("-" if a is None or b is None else f"{b / a:.2f}x")
            ratios[f"{charter_mode} / {base}"] = cells
            cpu_ratios[f"{charter_mode} / {base}"] = cpu_cells
    return "\n\n".join(
        [
            header,
            _table("calls/s (wall clock, best of repeats)", levels, rate),
            _table("ratio of calls/s", levels, ratios),
            _table("client CPU ms per call (least of repeats)", levels, cpu),
            _table("CPU-bound speed ratio (other's CPU/call over charter's)", levels, cpu_ratios),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000, help="backend calls per measurement")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="server latency per answer")
    parser.add_argument("--concurrency", default="16,64,256", help="comma-separated levels")
    parser.add_argument("--modes", default="openai,litellm,revise,revise-litellm,label,label-litellm")
    parser.add_argument("--repeat", type=int, default=1, help="measure each cell this many times")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--shard-child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument(
        "--child", nargs=5, metavar=("MODE", "URL", "CALLS", "CONC", "WORKERS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.shard_child:
        url, conc, shard, prompts, db = args.shard_child
        print(json.dumps(child_revise_shard(url, 0, int(conc), shard, prompts, db)))
        return 0
    if args.child:
        mode, url, calls, conc, _ = args.child
        print(json.dumps(CHILDREN[mode](url, int(calls), int(conc), 1)))
        return 0

    levels = [int(x) for x in args.concurrency.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    results: dict[str, dict[int, list[dict]]] = {m: {c: [] for c in levels} for m in modes}
    script = str(Path(__file__).resolve())
    with fake_server(args.latency_ms) as url:
        # One untimed warm-up so the server's first-request costs are not charged to anyone.
        run_child([script, "--child", "openai", url, "50", "8", "1"])
        for conc in levels:
            # Modes are interleaved within each repeat, so load from elsewhere hits them alike.
            for _ in range(args.repeat):
                for mode in modes:
                    res = run_child([script, "--child", mode, url, str(args.calls), str(conc), "1"])
                    results[mode][conc].append(res)
                    if "seconds" in res:
                        shown = (
                            f"{res['calls'] / res['seconds']:8.1f} calls/s "
                            f"{1000 * res['cpu_s'] / res['calls']:6.2f} CPU ms/call"
                        )
                    else:
                        shown = str(res.get("skipped"))
                    print(f"  c={conc:<4} {mode:<15} {shown}", file=sys.stderr, flush=True)
    for mode in modes:
        if all("skipped" in r for runs in results[mode].values() for r in runs):
            note = next(r["skipped"] for runs in results[mode].values() for r in runs)
            print(f"note: {mode} skipped: {note}")
            del results[mode]
    header = (
        f"{args.calls} calls per cell, server latency {args.latency_ms:g} ms, "
        f"best of {args.repeat}, {os.cpu_count()} CPUs"
    )
    print(report(results, levels, header))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
