"""Throughput of LocalBackend generation, one request at a time vs concurrent (dynamic batching).

    HF_HUB_OFFLINE=1 python plugins/charter-transformers/benchmarks/bench_batching.py [--new-tokens 32]

Builds a small random Llama-style model (no download), then sends the same requests twice through
`LocalBackend.complete` (so through litellm, as charter does): sequentially, then with
`--concurrency` requests in flight. Greedy decoding, so both runs produce the same tokens; tokens/s
counts completion tokens reported in usage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from charter_transformers.backend import LocalBackend
from charter_transformers.tiny import build_tiny_model

from charter.backends.base import Completion, CompletionRequest

TOPICS = ["passwords", "homework", "cooking", "travel", "gardening", "taxes", "music", "sleep"]


def make_requests(model: str, count: int, new_tokens: int) -> list[CompletionRequest]:
    return [
        CompletionRequest(
            model=model,
            mode="completion",
            prompt=f"Human: Can you help me with {TOPICS[i % len(TOPICS)]}? " * (1 + i % 3) + "Assistant:",
            params={"max_tokens": new_tokens, "temperature": 0},
        )
        for i in range(count)
    ]


async def run(
    backend: LocalBackend, requests: list[CompletionRequest], concurrency: int
) -> tuple[float, int, list[Completion]]:
    limit = asyncio.Semaphore(concurrency)

    async def one(request: CompletionRequest) -> Completion:
        async with limit:
            return await backend.complete(request)

    started = time.perf_counter()
    results = list(await asyncio.gather(*(one(r) for r in requests)))
    elapsed = time.perf_counter() - started
    return elapsed, sum(r.completion_tokens for r in results), results


async def main(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(
            Path(tmp) / "bench-model",
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=4,
        )
        model = f"local/{path}"
        backend = LocalBackend(
            model, device=args.device, batch_window_ms=args.window_ms, max_batch_size=args.max_batch_size
        )
        requests = make_requests(model, args.requests, args.new_tokens)
        await run(backend, requests[:2], 1)  # load the model and warm up
        t1, n1, r1 = await run(backend, requests, 1)
        tc, nc, rc = await run(backend, requests, args.concurrency)
        from charter_transformers.loading import get_model

        engine = get_model(path.as_posix()).engine
        same = [a.texts for a in r1] == [b.texts for b in rc]
        print(
            f"model: hidden {args.hidden}, {args.layers} layers, device {args.device or 'auto'}, "
            f"torch threads {torch.get_num_threads()}"
        )
        print(f"{args.requests} requests x {args.new_tokens} new tokens (greedy), window {args.window_ms} ms")
        print(f"one at a time    : {n1:6d} tokens in {t1:7.2f} s = {n1 / t1:9.1f} tokens/s")
        print(f"concurrency {args.concurrency:<4d} : {nc:6d} tokens in {tc:7.2f} s = {nc / tc:9.1f} tokens/s")
        print(
            f"speed-up         : {(nc / tc) / (n1 / t1):.2f}x   (largest batch {engine.stats.largest_batch} rows)"
        )
        print(f"identical outputs: {same}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=0)
    asyncio.run(main(parser.parse_args()))
