"""GRPO on the tiny model with the online constitutional judge: the reward before vs after.

The judge is charter's fake OpenAI server answering the paper's multiple-choice question as a
feedback model that prefers the more readable response (`readable_judge` in the plugin's tests:
P(A) = sigmoid(10 x (readability(A) - readability(B))), readability = share of ASCII letters and
spaces). The tiny model starts as random weights over a byte-level BPE trained in memory, so its
answers are mostly unreadable; GRPO has to learn from the judge's soft labels alone.

Printed, measured in one run: the judge's head-to-head verdict on held-out prompts (mean P(answer
wins) before vs after: they sum to 1), the readability of those greedy answers before and after
(the property the judge rewards, measured directly), and the number of judge calls and cache
hits. Run: python plugins/charter-trl/benchmarks/bench_grpo_judge.py [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from charter_trl_testdata import readability, readable_judge


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--completion-length", type=int, default=12)
    args = parser.parse_args()

    from charter_testing.fake_openai import FakeOpenAIServer
    from charter_transformers.tiny import build_tiny_model
    from charter_trl import GRPOOptions, train_grpo
    from charter_trl.judge import ConstitutionalJudge, JudgeSettings
    from charter_trl.output import quiet

    from charter.store.store import Store

    with tempfile.TemporaryDirectory() as tmp, FakeOpenAIServer(responder=readable_judge) as server:
        model = build_tiny_model(Path(tmp) / "tiny")
        db = Path(tmp) / "judge.duckdb"
        Store(db).close()
        settings = JudgeSettings(model="openai/judge", api_base=server.base_url, params={"api_key": "x"})
        judge = ConstitutionalJudge(db, settings)
        prompts = [f"Please tell me something useful about topic number {i}." for i in range(args.prompts)]
        options = GRPOOptions(
            max_steps=args.steps,
            batch_size=2 * args.num_generations,
            num_generations=args.num_generations,
            max_completion_length=args.completion_length,
            learning_rate=args.learning_rate,
            logging_steps=1,
            eval_count=8,
        )
        started = time.perf_counter()
        with open(Path(tmp) / "train.log", "w") as log, quiet(log):  # TRL's step dicts and bars
            metrics = train_grpo(prompts, model, judge, Path(tmp) / "out", options)
        seconds = time.perf_counter() - started

    def mean_readability(stage: str) -> float:
        samples = metrics[f"samples_{stage}"]
        return sum(readability(s["response"]) for s in samples) / len(samples)

    before, after = metrics["mean_reward_before"], metrics["mean_reward_after"]
    print(
        f"GRPO, tiny model, {metrics['steps']} steps x {options.batch_size} completions, "
        f"learning rate {args.learning_rate}, {seconds:.0f}s"
    )
    print(f"  judge, held-out answers head to head: mean P(win) before {before:.3f}  after {after:.3f}")
    print(
        f"  readability of those answers (what the judge prefers): before {mean_readability('before'):.3f}  "
        f"after {mean_readability('after'):.3f}"
    )
    stats = metrics["judge_stats"]
    print(
        f"  judge: {stats['comparisons']} comparisons, {stats['calls']} calls, {stats['cache_hits']} cache hits, "
        f"{stats['ties']} ties, {stats['unreadable']} unreadable"
    )
    for stage in ("before", "after"):
        print(f"  e.g. {stage}: {metrics[f'samples_{stage}'][0]['response'][:60]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
