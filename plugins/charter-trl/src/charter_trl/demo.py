"""`charter demo`: the whole Constitutional AI loop at toy scale, offline, in one process.

revise (SL-CAI critique -> revision) -> SFT -> sample response pairs from the SFT model -> label
them with the SFT model (the paper's multiple-choice question, scored exactly through the local
backend) -> reward (preference) model on the soft labels -> PPO against it -> the reward model's
mean score of the policy's answers to held-out prompts, before vs after PPO.

Every stage goes through the same Python API a user calls (`charter.sl.revise`, `charter.rl.sample`,
`charter.rl.label`, `charter_trl.run_training`) and lands in one DuckDB file. The model is a small
instruct model from the local Hugging Face cache when there is one, else a tiny random model built
on the spot; nothing is downloaded. The libraries' own output goes to `OUT/demo.log`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["CACHED_MODELS", "DemoFailed", "DemoSettings", "find_cached_model", "run_demo"]

# Small instruct models the demo uses when one is in the local Hugging Face cache, smallest first.
CACHED_MODELS = (
    "HuggingFaceTB/SmolLM2-135M-Instruct",
    "HuggingFaceTB/SmolLM2-360M-Instruct",
    "Qwen/Qwen2.5-0.5B-Instruct",
)
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


class DemoFailed(RuntimeError):
    """A stage of the demo failed at run time (the log has the details)."""


@dataclass
class DemoSettings:
    """Toy-scale settings, sized for 2 CPU cores.

    The defaults are for a real ~100M-500M model (generation and PPO are the slow parts on a CPU);
    `tiny()` is for the random tiny model, which is fast enough for more prompts and rounds but needs
    large learning rates to move at all. `sl_prompts`/`rl_prompts` take the first N of the shipped
    prompt files (8 and 12); the 4 held-out prompts are always used.
    """

    sl_prompts: int = 4
    revise_rounds: int = 1
    rl_prompts: int = 8
    max_tokens: int = 32
    sft_steps: int = 4
    sft_lr: float = 5e-5
    reward_steps: int = 4
    reward_lr: float = 5e-5
    ppo_steps: int = 4
    ppo_epochs: int = 2
    ppo_lr: float = 1e-5
    batch_size: int = 4
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def tiny(cls) -> DemoSettings:
        return cls(
            sl_prompts=8,
            revise_rounds=2,
            rl_prompts=12,
            sft_steps=8,
            sft_lr=1e-3,
            reward_steps=10,
            reward_lr=1e-3,
            ppo_steps=8,
            ppo_epochs=4,
            ppo_lr=1e-4,
        )


def find_cached_model(candidates: tuple[str, ...] = CACHED_MODELS) -> tuple[str, Path] | None:
    """The first candidate whose config, weights and tokenizer are all in the local HF cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - ships with transformers
        return None
    for repo_id in candidates:
        try:
            config = try_to_load_from_cache(repo_id, "config.json")
        except Exception:  # a malformed id or cache: not usable, try the next one
            continue
        if not isinstance(config, str):
            continue
        snapshot = Path(config).parent
        if any((snapshot / n).exists() for n in _WEIGHTS) and any(
            (snapshot / n).exists() for n in _TOKENIZER
        ):
            return repo_id, snapshot
    return None


def _data(name: str) -> Path:
    return Path(str(resources.files("charter_trl") / "demo_prompts" / name))


def _resolve(model: str | None, tiny: bool, out: Path) -> tuple[str, str, bool]:
    """(model directory, first line to print, is_tiny)."""
    if model is not None:
        name = model.removeprefix("local/") if not Path(model).exists() else model
        path = Path(name).expanduser()
        if path.is_dir():
            return str(path.resolve()), f"charter demo: using the model in {path}", False
        found = find_cached_model((name,))
        if found is None:
            raise ValueError(
                f"--model {model}: not a directory and not (completely) in the local Hugging Face cache; "
                "the demo never downloads: pass a model directory or a cached hub id"
            )
        return str(found[1]), f"charter demo: using {found[0]} from the local Hugging Face cache", False
    if not tiny:
        found = find_cached_model()
        if found is not None:
            return str(found[1]), f"charter demo: using {found[0]} from the local Hugging Face cache", False
    why = "as asked (--tiny)" if tiny else "no small instruct model is in the local Hugging Face cache"
    base = out / "base-tiny"
    line = (
        f"charter demo: {why}, so this runs on a tiny randomly initialised model built on the spot "
        f"({base}); its text is gibberish and the numbers only show the plumbing. "
        "Pass --model DIR_OR_CACHED_ID for a real model."
    )
    return str(base.resolve()), line, True


def _mean_chosen_prob(db: Path, label_run_id: str) -> float | None:
    from charter.store.store import open_read_only

    con = open_read_only(db)
    try:
        row = con.execute(
            "SELECT avg(chosen_prob) FROM preference_pairs WHERE run_id = ?", [label_run_id]
        ).fetchone()
    finally:
        con.close()
    return None if row is None or row[0] is None else float(row[0])


def _n(count: Any, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def run_demo(
    *,
    model: str | None = None,
    db: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] = "demo-out",
    tiny: bool = False,
    settings: DemoSettings | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the loop and print what it did; returns the numbers (reward before/after, run ids, times).

    `model` is a model directory or a hub id already in the local cache (never downloaded); by
    default a cached small instruct model, else (or with `tiny=True`) a tiny random model.
    Raises `ValueError` for a bad `model` and `DemoFailed` when a stage fails.
    """
    from .output import quiet as _quiet  # imports transformers: not at module import

    stream = sys.stdout
    say: Callable[[str], None] = echo or (lambda text: print(text, file=stream, flush=True))
    out_dir = Path(out)
    model_dir, first_line, is_tiny = _resolve(model, tiny, out_dir)
    settings = settings or (DemoSettings.tiny() if is_tiny else DemoSettings())
    say(first_line)

    out_dir.mkdir(parents=True, exist_ok=True)
    db_path = Path(db) if db is not None else out_dir / "cai.duckdb"
    log_path = out_dir / "demo.log"
    started = time.perf_counter()
    result: dict[str, Any] = {"model": model_dir, "tiny": is_tiny, "db": str(db_path), "log": str(log_path)}
    # A fixed sampling seed makes the local model's text, and so every later number, repeatable.
    gen = {"max_tokens": settings.max_tokens, "seed": settings.seed}
    # Run names tied to the model and settings: the same demo again resumes its runs (answers come
    # from the request cache), another model or setting in the same database gets runs of its own.
    tag = hashlib.sha256(json.dumps([model_dir, asdict(settings)], default=str).encode()).hexdigest()[:8]
    names = {stage: f"demo-{stage}-{tag}" for stage in ("revise", "sample", "label")}
    result["runs"] = names
    quiet_params = {"disable_tqdm": True, **settings.extra}

    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n=== charter demo {time.strftime('%Y-%m-%d %H:%M:%S')}: {first_line}\n")
        log.flush()
        step = 0

        @contextlib.contextmanager
        def stage(name: str) -> Iterator[dict[str, Any]]:
            nonlocal step
            step += 1
            info: dict[str, Any] = {}
            t0 = time.perf_counter()
            log.write(f"\n--- [{step}/7] {name}\n")
            log.flush()
            try:
                with _quiet(log):
                    yield info
            except (DemoFailed, ValueError) as exc:
                raise DemoFailed(f"demo stage {name!r} failed: {exc} (details in {log_path})") from exc
            except Exception as exc:
                import traceback

                traceback.print_exc(file=log)
                first = (str(exc).strip().splitlines() or [""])[0]
                raise DemoFailed(
                    f"demo stage {name!r} failed: {type(exc).__name__}: {first} (details in {log_path})"
                ) from exc
            info["seconds"] = time.perf_counter() - t0
            result[name] = info

        def train(kind: str, info: dict[str, Any], keys: tuple[str, ...], **kwargs: Any) -> dict[str, Any]:
            """Run `kind` with the demo's batch size and seed; note its run id and `keys` in `info`."""
            from .training import run_training

            metrics = run_training(
                kind, db=db_path, batch_size=settings.batch_size, seed=settings.seed, **kwargs
            )
            info.update(training_run_id=metrics["training_run_id"], **{k: metrics.get(k) for k in keys})
            return metrics

        from charter.runner import RunnerOptions

        runner = RunnerOptions(concurrency=8, max_retries=1)

        if is_tiny:
            with _quiet(log):
                from charter_transformers.tiny import build_tiny_model

                build_tiny_model(model_dir, seed=settings.seed)

        with stage("revise") as info:
            from charter.sl import revise

            summary = revise(
                _data("sl.jsonl"),
                db=db_path,
                model=f"local/{model_dir}",
                rounds=settings.revise_rounds,
                seed=settings.seed,
                few_shot=False,
                limit=settings.sl_prompts,
                params=gen,
                options=runner,
                run_name=names["revise"],
            )
            if not summary.ok:
                raise DemoFailed(f"{summary.failed} prompts failed: {'; '.join(summary.errors[:2])}")
            info.update(prompts=summary.total, calls=summary.calls)
        say(
            f"[1/7] revise: {summary.total} red-team prompts, {settings.revise_rounds} critique -> revision "
            f"round{'s' if settings.revise_rounds != 1 else ''} each by the base model ({summary.calls} calls, {info['seconds']:.0f}s)"
        )

        sl_dir = out_dir / "sl-cai"
        with stage("sft") as info:
            sft = train(
                "sft",
                info,
                ("final_loss",),
                model=model_dir,
                out=sl_dir,
                run=names["revise"],
                max_steps=settings.sft_steps,
                learning_rate=settings.sft_lr,
                params=quiet_params,
            )
        say(
            f"[2/7] train sft: {_n(sft['train_rows'], 'revision')}, {_n(sft['steps'], 'step')}, final loss "
            f"{_f(sft.get('final_loss'))} ({info['seconds']:.0f}s) -> {sl_dir}"
        )

        with stage("sample") as info:
            import charter.rl as rl

            sampled = rl.sample(
                _data("rl.jsonl"),
                db=db_path,
                model=f"local/{sl_dir.resolve()}",
                n=2,
                temperature=1.0,
                seed=settings.seed,
                limit=settings.rl_prompts,
                params=gen,
                options=runner,
                run_name=names["sample"],
            )
            if not sampled.ok or not sampled.pairs:
                raise DemoFailed(
                    f"sampling stored {sampled.pairs} pairs; errors: {'; '.join(sampled.errors[:2])}"
                )
            info.update(prompts=sampled.total, pairs=sampled.pairs)
        say(
            f"[3/7] sample: {sampled.total} other red-team prompts x 2 responses from the SFT model at "
            f"temperature 1.0 -> {_n(sampled.pairs, 'pair')} ({info['seconds']:.0f}s)"
        )

        with stage("label") as info:
            labeled = rl.label(
                db=db_path,
                model=f"local/{sl_dir.resolve()}",
                method="logprobs",
                from_run=names["sample"],
                few_shot=False,  # zero-shot keeps the scored prompts short at toy scale
                seed=settings.seed,
                options=runner,
                run_name=names["label"],
            )
            if not labeled.ok or not labeled.labeled:
                raise DemoFailed(f"labeled {labeled.labeled} pairs; errors: {'; '.join(labeled.errors[:2])}")
            mean_prob = _mean_chosen_prob(db_path, labeled.run_id)
            info.update(labeled=labeled.labeled, flagged=labeled.flagged, mean_chosen_prob=mean_prob)
        say(
            f"[4/7] label: {_n(labeled.labeled, 'pair')} by the SFT model, the paper's multiple-choice question (zero-shot) "
            f"scored exactly (logprobs of (A)/(B)); mean chosen_prob {_f(mean_prob)} ({info['seconds']:.0f}s)"
        )

        pm_dir = out_dir / "pm"
        with stage("reward") as info:
            pm = train(
                "reward",
                info,
                ("eval_accuracy", "eval_ece"),
                model=sl_dir,
                out=pm_dir,
                run=names["label"],
                max_steps=settings.reward_steps,
                learning_rate=settings.reward_lr,
                params={"eval_fraction": 0.25, **quiet_params},
            )
        say(
            f"[5/7] train reward: soft-label preference model on {_n(pm['train_rows'], 'pair')}; held-out "
            f"({pm.get('eval_rows')}) accuracy {_f(pm.get('eval_accuracy'), 2)}, calibration error "
            f"{_f(pm.get('eval_ece'))} ({info['seconds']:.0f}s) -> {pm_dir}"
        )

        rl_dir = out_dir / "rl-cai"
        with stage("ppo") as info:
            ppo = train(
                "ppo",
                info,
                ("mean_reward_before", "mean_reward_after", "final_kl"),
                model=sl_dir,
                out=rl_dir,
                reward_model=pm_dir,
                run=names["sample"],
                eval_prompts=_data("eval.jsonl"),
                max_steps=settings.ppo_steps,
                learning_rate=settings.ppo_lr,
                params={
                    "response_length": settings.max_tokens,
                    "num_ppo_epochs": settings.ppo_epochs,
                    **quiet_params,
                },
            )
        say(
            f"[6/7] train ppo: {ppo['steps']} PPO updates on {ppo['train_rows']} prompts against the reward "
            f"model, KL penalty to the SFT model (final KL {_f(ppo.get('final_kl'))}) "
            f"({info['seconds']:.0f}s) -> {rl_dir}"
        )

    before, after = ppo.get("mean_reward_before"), ppo.get("mean_reward_after")
    delta = None if before is None or after is None else after - before
    result.update(
        mean_reward_before=before,
        mean_reward_after=after,
        reward_delta=delta,
        ppo_training_run_id=ppo["training_run_id"],
        seconds=time.perf_counter() - started,
    )
    say(
        f"[7/7] reward-model score of greedy answers to {ppo.get('eval_rows')} held-out prompts: "
        f"before PPO {_f(before, 4)}, after {_f(after, 4)} (change {'+' if (delta or 0) >= 0 else ''}"
        f"{_f(delta, 4)})"
    )
    if is_tiny:
        say("       (a random tiny model: the change is noise, not learning; the plumbing is what is shown)")
    say(
        f"Done in {result['seconds']:.0f}s. Models in {out_dir}/, everything in {db_path}, library output in {log_path}."
    )
    say("Queries to try:")
    result["queries"] = _queries(ppo["training_run_id"])
    for query in result["queries"]:
        say(f'  charter sql {shlex.quote(str(db_path))} "{query}"')
    return result


def _queries(ppo_run_id: str) -> list[str]:
    """Queries over the demo's tables, printed in double quotes (so none may hold ", $, ` or \\)."""
    return [
        "SELECT kind, status, train_rows, round(CAST(metrics->>'final_loss' AS DOUBLE), 3) AS final_loss, "
        "out_dir FROM training_runs ORDER BY started_at",
        "SELECT stage, count(*) AS n, round(avg(reward), 4) AS mean_reward FROM policy_samples "
        f"WHERE training_run_id = '{ppo_run_id}' GROUP BY stage ORDER BY stage DESC",
        "SELECT prompt_id, round, principle, left(critique, 50) AS critique, left(revision, 50) AS revision "
        "FROM revisions ORDER BY prompt_id, round LIMIT 6",
        "SELECT left(prompt, 40) AS prompt, round(chosen_prob, 3) AS chosen_prob, left(chosen, 30) AS chosen, "
        "left(rejected, 30) AS rejected FROM preference_pairs",
        "SELECT step, count(*) AS calls, round(avg(latency_ms)) AS avg_ms, sum(completion_tokens) AS tokens "
        "FROM calls GROUP BY step",
    ]
