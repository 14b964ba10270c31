"""RL-CAI as two calls: `sample(...)` (response pairs) and `label(...)` (AI-feedback soft labels).

    from charter import rl
    rl.sample("red_team.jsonl", db="cai.duckdb", model="hosted_vllm/my-sl-model",
              api_base="http://gpu:8000/v1", n=2)
    rl.label(db="cai.duckdb", model="text-completion-openai/my-base-model",
             api_base="http://gpu:8000/v1", method="logprobs")

What `charter sample` and `charter label` run. Both resume: the same call again skips what is done
(prompts with samples, pairs with a label in this run) and answers finished calls from the cache.
Results land in `samples`, `pairs`, `pair_labels` and `feedback_queries`, and the contract's views
`comparisons` and `preference_pairs`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from charter.backends.base import Backend
from charter.backends.batch import check_batch
from charter.backends.preflight import check_model
from charter.backends.registry import get_backend
from charter.backends.scoring import ScoringBackend
from charter.constitution import Constitution, load_constitution
from charter.inputs import PromptSource, iter_prompts, scan_prompts
from charter.records import PromptRecord, messages_to_dicts
from charter.runner import RunnerOptions
from charter.session import Job, RunSummary, check_templates, run_chain
from charter.shard import Shard
from charter.sl import default_run_name
from charter.steps.base import Chain
from charter.steps.label import PairItem, new_pair, stored_prompt
from charter.steps.sample_pairs import SampleItem, SamplePairs, pair_id_for
from charter.store.store import Store, StoreError
from charter.tasks.label import LABEL, LabelConfig, label_method
from charter.tasks.sample import SAMPLE, SampleConfig

Method = str  # a registered label method: the core's "logprobs" or "cot", or a plugin's
METHODS = ("logprobs", "cot")  # the core's own; `label_method()` knows every installed one


@dataclass
class SampleSummary(RunSummary):
    """A sample run's summary, plus the pairs it holds (all of them, resumed ones included)."""

    pairs: int = 0
    prompts_without_pairs: int = 0


@dataclass
class LabelSummary(RunSummary):
    """A label run's summary, plus how its labels came out."""

    labeled: int = 0
    flagged: int = 0
    sources: dict[str, int] | None = None
    max_flagged: float = 0.5

    @property
    def too_many_flagged(self) -> bool:
        """More than `max_flagged` of this run's pairs ended without a readable label."""
        seen = self.labeled + self.flagged
        return seen > 0 and self.flagged / seen > self.max_flagged


# A label run whose pairs mostly ended unreadable is recorded with this status, not 'done'.
FLAGGED_STATUS = "flagged"


def _resolve_run(store: Store, name: str, what: str = "--from-run") -> str:
    run_id = store.run_id_for(name)
    if run_id is None:
        row = store.query("SELECT run_id FROM runs WHERE run_id = ?", [name])
        run_id = str(row[0][0]) if row else None
    if run_id is None:
        names = [r[0] for r in store.query("SELECT name FROM runs ORDER BY started_at")]
        known = ", ".join(names[-10:]) or "(none)"
        raise StoreError(f"{what} {name!r}: no run of that name in {store.path}; runs: {known}")
    return run_id


def _require_db(db: str | Path | Store) -> None:
    if not isinstance(db, Store) and not Path(db).exists():
        raise StoreError(f"database {db} does not exist")


# --- sample ---------------------------------------------------------------------------------------


def sample_rows(run_id: str, item: SampleItem) -> dict[str, list[dict[str, Any]]]:
    """The rows one sampled prompt adds: prompts, samples and pairs."""
    prompt = item.prompt
    return {
        "prompts": [
            {
                "run_id": run_id,
                "prompt_id": prompt.prompt_id,
                "prompt": prompt.prompt,
                "messages": json.dumps(messages_to_dicts(prompt.messages), ensure_ascii=False),
            }
        ],
        "samples": [
            {
                "run_id": run_id,
                "prompt_id": prompt.prompt_id,
                "sample_index": i,
                "response": text,
                "call_id": item.call_ids[i],
                "choice_index": item.choice_indexes[i],
            }
            for i, text in enumerate(item.responses)
        ],
        "pairs": [
            {
                "pair_id": pair_id_for(run_id, prompt.prompt_id, a, b),
                "run_id": run_id,
                "prompt_id": prompt.prompt_id,
                "index_a": a,
                "index_b": b,
                "response_a": item.responses[a],
                "response_b": item.responses[b],
                "source_run_id": item.source_run_id,
            }
            for a, b in item.pairs
        ],
    }


def _prompts_of_run(store: Store, run_id: str, limit: int | None) -> list[PromptRecord]:
    sql = "SELECT prompt_id, messages FROM prompts WHERE run_id = ? ORDER BY prompt_id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [stored_prompt(prompt_id, messages) for prompt_id, messages in store.query(sql, [run_id])]


def sample(prompts: str | Path | None = None, **options: Any) -> SampleSummary:
    """Sample `n` responses per prompt from `model` and store the pairs to label.

    The options are the fields of `charter.tasks.SampleConfig` (the options of `charter sample`,
    with their help text and checks there), plus `backend`, `progress` and `options`
    (RunnerOptions); `db` may be an open Store.

    The prompts come from a prompts file (`prompts`) or from the `prompts` table of an earlier
    revise or sample run (`from_run`, its name or id). `n` uses the backend's `n` parameter unless
    `n_supported=False` (or `--param n_supported=false`); a backend that returns fewer choices than
    asked, or refuses `n`, is topped up with separate requests. `pairs` picks which pairs of the `n`
    responses to store: "all", "adjacent" or a number drawn at random (seeded).
    """
    return SAMPLE.call({"prompts": prompts, **options})  # type: ignore[no-any-return]


sample.__signature__ = SAMPLE.signature(("prompts",))  # type: ignore[attr-defined]


def run_sample(
    config: SampleConfig,
    *,
    db: str | Path | Store | None = None,
    backend: Backend | None = None,
    progress: bool = False,
    options: RunnerOptions | None = None,
) -> SampleSummary:
    """Run a validated `SampleConfig` (`db`, a Store or path, overrides its field)."""
    db = db if db is not None else config.db
    strategy = config.pairs
    n_supported = config.n_supported
    step = SamplePairs(
        n=config.n,
        temperature=config.temperature,
        pairs=strategy,
        n_supported=n_supported,
        system=config.system,
    )
    chain: Chain[SampleItem] = Chain([step])
    check_templates(chain, config.mode, config.prompts_dir)
    if backend is None:
        check_model(config.model, api_base=config.api_base, params=config.backend_params())
    check_batch(config.model, config.api_base, config.backend_params(), options or config.runner_options())
    prompts, from_run, limit = config.prompts, config.from_run, config.limit
    shard = Shard.parse(config.shard)  # `auto` was read from the scheduler when the config was made
    owned = shard.owns if shard is not None else None
    with ExitStack() as stack:
        source: PromptSource | None = None
        source_run_id: str | None = None
        if prompts is not None:
            source = PromptSource.open(prompts)
            scan = scan_prompts(source, limit, owned)  # validate everything before writing anything
            total, origin = scan.count, {"prompts": str(prompts), "prompts_hash": scan.content_hash}
        else:
            _require_db(db)
        store = db if isinstance(db, Store) else stack.enter_context(Store(db))
        records: list[PromptRecord] = []
        if from_run is not None:
            source_run_id = _resolve_run(store, from_run)
            records = _prompts_of_run(store, source_run_id, limit)
            if not records:
                raise StoreError(f"--from-run {from_run!r}: that run has no prompts")
            if owned is not None:
                records = [r for r in records if owned(r.prompt_id)]
            total, origin = len(records), {"from_run": from_run, "from_run_id": source_run_id}
        recorded = {
            **config.recorded(),
            **origin,
            "n": config.n,
            "temperature": config.temperature,
            "pairs": strategy,
            "seed": config.seed,
            "mode": config.mode,
            "limit": limit,
            "chain": chain.describe(),
        }

        def items(done: set[str]) -> Iterator[SampleItem]:
            stream: Iterable[PromptRecord] = iter_prompts(source, limit) if source is not None else records
            for record in stream:
                if record.prompt_id not in done and (owned is None or owned(record.prompt_id)):
                    yield SampleItem(prompt=record, source_run_id=source_run_id)

        name = config.run_name or default_run_name("sample", recorded)
        if shard is not None and shard.count > 1:
            recorded["shard"] = str(shard)  # recorded, but not part of the name: the shards are one run

        job: Job[SampleItem] = Job(
            chain,
            command="sample",
            config=recorded,
            run_name=name,
            items=items,
            total=total,
            done_table="samples",
            rows=sample_rows,
        )
        call = config.settings(
            mode=config.mode, few_shot=False, backend=backend, progress=progress, options=options
        )
        summary = run_chain(job, call, store)
        counts = store.query(
            "SELECT (SELECT count(*) FROM pairs WHERE run_id = ?), "
            "(SELECT count(DISTINCT s.prompt_id) FROM samples s WHERE s.run_id = ? AND NOT EXISTS "
            "(SELECT 1 FROM pairs p WHERE p.run_id = s.run_id AND p.prompt_id = s.prompt_id))",
            [summary.run_id, summary.run_id],
        )[0]
        return SampleSummary(**vars(summary), pairs=int(counts[0]), prompts_without_pairs=int(counts[1]))


# --- label ----------------------------------------------------------------------------------------


def label_rows(
    run_id: str, item: PairItem, *, model: str, method: str, cot_samples: int | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The rows one labeled pair adds: pair_labels and feedback_queries."""
    prob_a = item.prob_a
    return {
        "pair_labels": [
            {
                "run_id": run_id,
                "pair_id": item.pair_id,
                "model": model,
                "method": method,
                "principle": ",".join(item.principles),
                "prob_a": prob_a,
                "prob_b": None if prob_a is None else 1.0 - prob_a,
                "prob_a_unclamped": item.prob_a_unclamped,
                "reasoning": item.reasoning,
                "label_source": item.label_source,
                "status": item.status,
                "raw_text": item.raw_text,
                "call_ids": item.call_ids,
                "cot_samples": cot_samples,
            }
        ],
        "feedback_queries": [
            {"run_id": run_id, "pair_id": item.pair_id, **q.model_dump()} for q in item.queries
        ],
    }


def default_label_mode(model: str, backend: Any = None) -> Literal["chat", "completion"]:
    """Completion mode (the paper's exact prompt) for completion endpoints and scoring backends."""
    if model.startswith("text-completion-") or getattr(backend, "can_score", False):
        return "completion"
    return "chat"


def _pairs_sql(run_ids: list[str] | None) -> tuple[str, list[Any]]:
    where = ""
    params: list[Any] = []
    if run_ids is not None:
        where = f"WHERE p.run_id IN ({', '.join('?' for _ in run_ids)})"
        params = list(run_ids)
    sql = (
        "SELECT p.pair_id, p.prompt_id, p.response_a, p.response_b, pr.messages "
        "FROM pairs p JOIN prompts pr ON pr.run_id = p.run_id AND pr.prompt_id = p.prompt_id "
        f"{where} ORDER BY p.run_id, p.prompt_id, p.index_a, p.index_b"
    )
    return sql, params


def label(**options: Any) -> LabelSummary:
    """Label every pair in `db` not yet labeled by this run (all sample runs, or those in `from_run`).

    The options are the fields of `charter.tasks.LabelConfig` (the options of `charter label`,
    with their help text and checks there), plus `backend`, `progress` and `options`
    (RunnerOptions); `db` may be an open Store and `constitution` a Constitution.

    `method="logprobs"`: the paper's multiple-choice question; `"cot"`: chain of thought, clamped to
    `clamp` (default (0.4, 0.6); multiple-choice labels are not clamped unless `clamp` is given).
    `mode` defaults to completion (the paper's exact prompt) for `text-completion-*` models and
    backends with `score_options`, chat otherwise.

    A log-probability label is read only where both options hold at least `min_option_mass` of the
    probability at the answer position; below it the answer is parsed (or the pair is `unparsed`).
    `cot_samples=K` (method "cot"): K reasoning samples at temperature 1, each clamped, then averaged.
    When more than `max_flagged` (a fraction) of the run's pairs end flagged (no readable answer),
    the run is recorded with status 'flagged' instead of 'done' and the summary is not `ok`.
    """
    return LABEL.call(options)  # type: ignore[no-any-return]


label.__signature__ = LABEL.signature()  # type: ignore[attr-defined]


def run_label(
    config: LabelConfig,
    *,
    db: str | Path | Store | None = None,
    constitution: Constitution | str | Path | None = None,
    backend: Backend | None = None,
    progress: bool = False,
    options: RunnerOptions | None = None,
) -> LabelSummary:
    """Run a validated `LabelConfig` (`db` and `constitution` objects override its fields)."""
    db = db if db is not None else config.db
    method, cot_samples = config.method, config.cot_samples
    _require_db(db)
    const = constitution if constitution is not None else config.constitution
    constitution_obj = const if isinstance(const, Constitution) else load_constitution(const)
    params = config.backend_params()
    if backend is None:
        check_model(config.model, api_base=config.api_base, params=params)
    check_batch(config.model, config.api_base, params, options or config.runner_options())
    inner = backend or get_backend(config.model, api_base=config.api_base, params=params)
    wrapped = inner if isinstance(inner, ScoringBackend) else ScoringBackend(inner)
    chosen_mode = config.mode or default_label_mode(config.model, wrapped)
    common: dict[str, Any] = {
        "ensemble": config.ensemble,
        "swap": config.swap,
        "votes": config.votes,
        "max_parse_retries": config.max_parse_retries,
        "top_logprobs": config.top_logprobs,
        "template": config.template,
        "min_option_mass": config.min_option_mass,
    }
    if config.clamp is not None:
        common["clamp"] = config.clamp
    takes_samples = config.takes_samples
    if takes_samples:
        common["cot_samples"] = cot_samples
    step = label_method(method)(constitution_obj, **common)
    chain: Chain[PairItem] = Chain([step])
    check_templates(chain, chosen_mode, config.prompts_dir)
    runs = config.runs
    shard = Shard.parse(config.shard)
    owned = shard.owns if shard is not None else None
    with ExitStack() as stack:
        store = db if isinstance(db, Store) else stack.enter_context(Store(db))
        run_ids = [_resolve_run(store, r) for r in runs] if runs is not None else None
        sql, sql_params = _pairs_sql(run_ids)
        if config.limit is not None:
            sql += f" LIMIT {int(config.limit)}"
        if owned is None:
            total = int(store.query(f"SELECT count(*) FROM ({sql})", sql_params)[0][0])
        else:
            pair_ids = store.query(f"SELECT pair_id FROM ({sql})", sql_params)
            total = sum(1 for (pair_id,) in pair_ids if owned(str(pair_id)))
        recorded = {
            **config.recorded(),
            "constitution": constitution_obj.name,
            "constitution_hash": constitution_obj.content_hash(),
            "method": method,
            "mode": chosen_mode,
            "few_shot": config.few_shot,
            "seed": config.seed,
            "from_run": runs,
            "from_run_ids": run_ids,
            "limit": config.limit,
            "scores": wrapped.can_score,
            "min_option_mass": config.min_option_mass,
            "cot_samples": cot_samples if takes_samples else None,
            "chain": chain.describe(),
        }
        name = config.run_name or default_run_name("label", recorded)
        if shard is not None and shard.count > 1:
            recorded["shard"] = str(shard)  # recorded, but not part of the name: the shards are one run

        def items(done: set[str]) -> Iterator[PairItem]:
            for row in store.iter_dicts(sql, sql_params):
                if row["pair_id"] not in done and (owned is None or owned(str(row["pair_id"]))):
                    yield new_pair(row)

        job: Job[PairItem] = Job(
            chain,
            command="label",
            config=recorded,
            run_name=name,
            items=items,
            total=total,
            done_table="pair_labels",
            done_column="pair_id",
            item_id=lambda item: item.pair_id,
            rows=functools.partial(
                label_rows,
                model=config.model,
                method=method,
                cot_samples=cot_samples if takes_samples else None,
            ),
        )
        call = config.settings(
            mode=chosen_mode, few_shot=config.few_shot, backend=wrapped, progress=progress, options=options
        )
        summary = run_chain(job, call, store)
        stats = store.query(
            "SELECT status, coalesce(label_source, ''), count(*) FROM pair_labels WHERE run_id = ? "
            "GROUP BY ALL",
            [summary.run_id],
        )
        labeled = sum(int(c) for s, _, c in stats if s == "ok")
        flagged = sum(int(c) for s, _, c in stats if s != "ok")
        sources = {str(src): int(c) for s, src, c in stats if s == "ok"}
        result = LabelSummary(
            **vars(summary),
            labeled=labeled,
            flagged=flagged,
            sources=sources,
            max_flagged=config.max_flagged,
        )
        if result.status == "done" and result.too_many_flagged:
            result.status = FLAGGED_STATUS
            store.finish_run(summary.run_id, FLAGGED_STATUS)
        return result


__all__ = [
    "METHODS",
    "LabelSummary",
    "SampleSummary",
    "default_label_mode",
    "label",
    "label_method",
    "label_rows",
    "run_label",
    "run_sample",
    "sample",
    "sample_rows",
]
