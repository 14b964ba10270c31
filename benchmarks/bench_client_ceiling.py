"""How near the client ceiling charter runs: whole processes, timed from outside, one server.

    .venv/bin/python benchmarks/bench_client_ceiling.py [--calls 1500] [--latency-ms 50]
        [--concurrency 16,64,256] [--distilabel-python PATH] [--src DIR] [--clients ...] [--repeat 3]

One fake OpenAI-compatible server (charter_testing.fake_openai, its own process, every answer after
--latency-ms) serves every client. Each client is a fresh process, and the clock runs from its
start to its exit, imports and all, as a user's command would:

- `raw-aiohttp`: an aiohttp session posting the chat body and decoding the JSON (the ceiling).
- `raw-aiohttp-label`: the same loop posting the bodies `charter label` sends (five few-shot
  examples and the question, ~4.4 KB each, made by one untimed label run and read from a file as
  bytes): the ceiling for label's payload, whose size the server pays for too.
- `openai`: a plain `openai.AsyncOpenAI().chat.completions.create` loop.
- `litellm`: a plain `litellm.acompletion(model="openai/bench", api_base=...)` loop.
- `distilabel`: distilabel 1.5.3's TextGeneration + OpenAILLM pipeline over the same prompts, run
  with the interpreter given as --distilabel-python (a side venv: its pins clash with ours); the
  table says "absent" without it. Make one with
  `python3 -m venv /tmp/dl && /tmp/dl/bin/pip install distilabel==1.5.3 openai requests`
  (distilabel imports `requests` without depending on it).
- `charter-revise`: `charter revise --rounds 1` over calls/3 prompts (respond, critique, revision).
- `charter-label`: `charter label --method logprobs` (multiple choice, one call per pair) over the
  pairs of a `charter sample --n 2` made beforehand, untimed.

Then the fixed costs: `charter --help`, and `charter revise` run again when nothing is left to do
(best of a few), and whether either imported litellm. --src points the charter processes at another
checkout's sources (measure a "before" with --src /path/to/main/src).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
from _common import fake_server, write_prompts  # noqa: E402  (the prompts every benchmark uses)

MODEL = "bench"
PROMPT = "Question {i}: how do I keep my houseplants alive?"
CLIENTS = (
    "raw-aiohttp",
    "raw-aiohttp-label",
    "openai",
    "litellm",
    "distilabel",
    "charter-revise",
    "charter-label",
)
BODIES_ENV = "CHARTER_BENCH_BODIES"  # the raw label client's request bodies, one JSON per line


# --------------------------------------------------------------------------- client processes
def _plain_loop(calls: int, concurrency: int, one) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    async def main() -> None:
        counter = iter(range(calls))

        async def worker() -> None:
            for i in counter:
                await one(i)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    asyncio.run(main())


def client_raw_aiohttp(url: str, calls: int, concurrency: int) -> None:
    import asyncio

    import aiohttp

    async def main() -> None:
        limit = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=limit) as session:
            counter = iter(range(calls))

            async def worker() -> None:
                for i in counter:
                    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT.format(i=i)}]}
                    async with session.post(f"{url}/chat/completions", json=body) as response:
                        data = await response.json()
                    assert data["choices"][0]["message"]["content"]

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    asyncio.run(main())


def client_raw_aiohttp_label(url: str, calls: int, concurrency: int) -> None:
    """The raw loop posting the very bodies `charter label` sends (few-shot, ~4.4 KB each), read
    from a file as bytes: the ceiling for that payload, server side included."""
    import asyncio

    import aiohttp

    with open(os.environ[BODIES_ENV], "rb") as f:
        bodies = f.read().splitlines()[:calls]

    async def main() -> None:
        limit = aiohttp.TCPConnector(limit=concurrency)
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=limit, headers=headers) as session:
            counter = iter(bodies)

            async def worker() -> None:
                for body in counter:
                    async with session.post(f"{url}/chat/completions", data=body) as response:
                        data = await response.json()
                    assert data["choices"][0]["message"]["content"]

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    asyncio.run(main())


def client_openai(url: str, calls: int, concurrency: int) -> None:
    import openai

    client = None

    async def one(i: int) -> None:
        nonlocal client
        if client is None:  # the client binds to the running loop
            client = openai.AsyncOpenAI(base_url=url, api_key="no-key", max_retries=0)
        r = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT.format(i=i)}]
        )
        assert r.choices[0].message.content

    _plain_loop(calls, concurrency, one)


def client_litellm(url: str, calls: int, concurrency: int) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True

    async def one(i: int) -> None:
        r = await litellm.acompletion(
            model=f"openai/{MODEL}",
            api_base=url,
            api_key="no-key",
            messages=[{"role": "user", "content": PROMPT.format(i=i)}],
            num_retries=0,
        )
        assert r.choices[0].message.content

    _plain_loop(calls, concurrency, one)


def client_distilabel(url: str, calls: int, concurrency: int) -> None:
    """distilabel's own way: a pipeline, batches of `concurrency` rows generated concurrently."""
    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    rows = [{"instruction": PROMPT.format(i=i)} for i in range(calls)]
    with tempfile.TemporaryDirectory() as tmp:
        with Pipeline(name="bench-ceiling", cache_dir=tmp) as pipeline:
            load = LoadDataFromDicts(data=rows, batch_size=concurrency)
            llm = OpenAILLM(model=MODEL, base_url=url, api_key="no-key", max_retries=0)  # type: ignore[arg-type]
            generate = TextGeneration(llm=llm, input_batch_size=concurrency)
            load >> generate
        distiset = pipeline.run(use_cache=False)
        made = sum(len(split) for split in distiset["default"].values())  # type: ignore[index]
    if made != calls:
        raise SystemExit(f"distilabel made {made} rows, expected {calls}")


CLIENT_FUNCS = {
    "raw-aiohttp": client_raw_aiohttp,
    "raw-aiohttp-label": client_raw_aiohttp_label,
    "openai": client_openai,
    "litellm": client_litellm,
}


# --------------------------------------------------------------------------- the parent
def _env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    # An installed charter has its bytecode; without it every process compiles its sources again.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH")) if p)
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    return env


def timed(cmd: list[str], env: dict[str, str], timeout: float = 1800) -> float:
    """Wall seconds of `cmd` from start to exit; raises with its stderr when it fails.

    The client runs in its own process group, so a timeout or Ctrl-C also ends the worker
    processes it started (distilabel runs each step in one).
    """
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{stderr[-3000:]}")
    return seconds


def charter_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "charter", *args]


def measure(
    client: str, url: str, calls: int, conc: int, args: argparse.Namespace, tmp: Path
) -> tuple[float, int] | str:
    """(wall seconds, calls made) of one client process, or why it did not run."""
    env = _env(args.src)
    stamp = time.monotonic_ns()
    tag = f"{client}-{conc}-{stamp}: "  # fresh prompts: no cache hits between cells or repeats
    if client == "raw-aiohttp-label":
        env[BODIES_ENV] = str(label_bodies(url, calls, args, tmp))
    if client in CLIENT_FUNCS:
        cmd = [sys.executable, str(HERE), "--client", client, url, str(calls), str(conc)]
        return timed(cmd, env), calls
    if client == "distilabel":
        if not args.distilabel_python:
            return "absent (no --distilabel-python)"
        cmd = [str(args.distilabel_python), str(HERE), "--client", client, url, str(calls), str(conc)]
        return timed(cmd, {k: v for k, v in env.items() if k != "PYTHONPATH"}), calls
    db = tmp / f"{client}-{conc}-{stamp}.duckdb"
    common = ["--db", str(db), "--model", f"openai/{MODEL}", "--api-base", url, "--concurrency", str(conc)]
    if client == "charter-revise":
        prompts = write_prompts(tmp / f"{client}-{conc}-{stamp}.jsonl", math.ceil(calls / 3), tag)
        return timed(charter_cmd("revise", str(prompts), *common, "--rounds", "1"), env), 3 * math.ceil(
            calls / 3
        )
    if client == "charter-label":
        prompts = write_prompts(tmp / f"{client}-{conc}-{stamp}.jsonl", calls, tag)
        timed(charter_cmd("sample", "--prompts", str(prompts), *common, "--n", "2"), env)  # untimed
        return timed(charter_cmd("label", *common, "--method", "logprobs", "--no-swap"), env), calls
    raise ValueError(client)


def label_bodies(url: str, calls: int, args: argparse.Namespace, tmp: Path) -> Path:
    """The bodies `charter label` posts, for the raw label client: one untimed sample + label run
    (made once per benchmark), its `calls.request` turned back into request bodies."""
    out = tmp / f"label-bodies-{calls}.jsonl"
    if out.exists():
        return out
    import duckdb

    env = _env(args.src)
    db = tmp / "label-bodies.duckdb"
    prompts = write_prompts(tmp / "label-bodies.jsonl", calls, "bodies: ")
    common = ["--db", str(db), "--model", f"openai/{MODEL}", "--api-base", url, "--concurrency", "64"]
    timed(charter_cmd("sample", "--prompts", str(prompts), *common, "--n", "2"), env)
    timed(charter_cmd("label", *common, "--method", "logprobs", "--no-swap"), env)
    con = duckdb.connect(str(db), read_only=True)
    try:
        requests = [
            json.loads(r[0]) for r in con.execute("SELECT request FROM calls WHERE step = 'label'").fetchall()
        ]
    finally:
        con.close()
    with out.open("w", encoding="utf-8") as f:
        for request in requests:
            f.write(json.dumps({"model": MODEL, "messages": request["messages"], **request["params"]}) + "\n")
    return out


def fixed_costs(url: str, args: argparse.Namespace, tmp: Path) -> list[str]:
    """`charter --help` and an already finished `charter revise`, best of --fixed-repeat."""
    env = _env(args.src)
    prompts = write_prompts(tmp / "fixed.jsonl", 20, "fixed: ")
    db = tmp / "fixed.duckdb"
    revise = charter_cmd(
        "revise",
        str(prompts),
        "--db",
        str(db),
        "--model",
        f"openai/{MODEL}",
        "--api-base",
        url,
        "--rounds",
        "1",
    )
    timed(revise, env)  # the run itself; every later one has nothing left to do
    probe = (
        "import runpy, sys; sys.argv = ['charter', *sys.argv[1:]];\n"
        "try: runpy.run_module('charter', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "finally: print('litellm imported' if 'litellm' in sys.modules else 'litellm not imported', file=sys.stderr)"
    )
    out = []
    for label, cmd in (("charter --help", charter_cmd("--help")), ("charter revise, nothing left", revise)):
        best = min(timed(cmd, env) for _ in range(args.fixed_repeat))
        seen = (
            subprocess.run(
                [sys.executable, "-c", probe, *cmd[3:]], env=env, capture_output=True, text=True, check=False
            )
            .stderr.strip()
            .splitlines()
        )
        out.append(f"{label:<32}{best:8.2f} s   ({seen[-1] if seen else '?'})")
    return out


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1500, help="backend calls per client process")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="server latency per answer")
    parser.add_argument("--concurrency", default="16,64,256", help="comma-separated levels")
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help="comma-separated, of: " + ", ".join(CLIENTS)
    )
    parser.add_argument("--distilabel-python", type=Path, help="python of a venv with distilabel==1.5.3")
    parser.add_argument("--src", type=Path, default=HERE.parents[1] / "src", help="charter sources to run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per client and level (best kept)")
    parser.add_argument("--fixed-repeat", type=int, default=5, help="runs per fixed-cost figure (best kept)")
    parser.add_argument("--no-fixed", action="store_true", help="skip the fixed-cost figures")
    parser.add_argument("--client", nargs=4, metavar=("NAME", "URL", "CALLS", "CONC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        name, url, calls, conc = args.client
        func = client_distilabel if name == "distilabel" else CLIENT_FUNCS[name]
        func(url, int(calls), int(conc))
        return 0

    levels = [int(x) for x in args.concurrency.split(",")]
    clients = [c for c in args.clients.split(",") if c]
    results: dict[str, dict[int, tuple[float, int] | str]] = {c: {} for c in clients}
    print(
        f"{args.calls} calls per client, server latency {args.latency_ms:g} ms, {os.cpu_count()} CPUs, src {args.src}"
    )
    print(f"load average at start: {load_average()}")
    # Compile the sources measured (and the plugins charter loads) before any clock runs.
    plugins = HERE.parents[1] / "plugins"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(args.src), str(plugins)], check=False)
    with tempfile.TemporaryDirectory() as tmp_name, fake_server(args.latency_ms) as url:
        tmp = Path(tmp_name)
        for conc in levels:
            for client in clients:  # interleaved, so load from elsewhere hits every client alike
                # Best of --repeat: a one-off stall elsewhere on the machine is not the client's.
                tries = [measure(client, url, args.calls, conc, args, tmp) for _ in range(args.repeat)]
                timed_tries = [t for t in tries if not isinstance(t, str)]
                res = min(timed_tries, key=lambda t: t[0]) if timed_tries else tries[0]
                results[client][conc] = res
                shown = res if isinstance(res, str) else f"{res[0]:7.2f} s {res[1] / res[0]:7.1f} calls/s"
                print(
                    f"  c={conc:<4} {client:<15} {shown}   (load {load_average()})",
                    file=sys.stderr,
                    flush=True,
                )
        fixed = [] if args.no_fixed else fixed_costs(url, args, tmp)

    def cell(client: str, conc: int) -> str:
        res = results.get(client, {}).get(conc)
        if res is None:
            return "-"
        if isinstance(res, str):
            return "absent" if res.startswith("absent") else res[:18]
        return f"{res[0]:.2f}s {res[1] / res[0]:.0f}/s"

    def rate(client: str, conc: int) -> float | None:
        res = results.get(client, {}).get(conc)
        return None if res is None or isinstance(res, str) else res[1] / res[0]

    width = 20
    print()
    print("wall s (whole process) and calls/s")
    print(f"{'client':<18}" + "".join(f"{'c=' + str(c):>{width}}" for c in levels))
    for client in clients:
        print(f"{client:<18}" + "".join(f"{cell(client, c):>{width}}" for c in levels))
    print()
    print("ratios of calls/s (targets: >= 0.8x raw-aiohttp at c=64, >= 0.7x at the others; >= 5x distilabel)")
    for charter in ("charter-revise", "charter-label"):
        for base in ("raw-aiohttp", "raw-aiohttp-label", "openai", "litellm", "distilabel"):
            if base == "raw-aiohttp-label" and charter != "charter-label":
                continue
            if charter not in results or base not in results:
                continue
            cells = []
            for c in levels:
                a, b = rate(charter, c), rate(base, c)
                cells.append(
                    "absent"
                    if b is None and base == "distilabel"
                    else "-"
                    if a is None or b is None
                    else f"{a / b:.2f}x"
                )
            print(f"{charter + ' / ' + base:<32}" + "".join(f"{x:>10}" for x in cells))
    if fixed:
        print()
        print(f"fixed costs (best of {args.fixed_repeat})")
        for line in fixed:
            print(line)
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
