"""What `charter report` reads: plain rows from the contract's views, one function per section.

Every query is read-only and tolerant of what a database does not hold yet (a revise-only database
has no pairs, a database without training has no `training_runs` rows): a section with nothing to
show gets an empty list, and the report says so instead of failing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


def _rows(con: Any, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    cols = [d[0] for d in cur.description or []]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _relations(con: Any) -> set[str]:
    names = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
    ).fetchall()
    return {str(n[0]) for n in names}


@dataclass
class ReportData:
    """Everything one report shows, read in one pass over the database."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    principles_revise: list[dict[str, Any]] = field(default_factory=list)
    principles_label: list[dict[str, Any]] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    label_sources: list[dict[str, Any]] = field(default_factory=list)
    position_bias: list[dict[str, Any]] = field(default_factory=list)
    training: list[dict[str, Any]] = field(default_factory=list)
    rewards: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """True when the database holds no run and no training run: nothing to report."""
        return not self.runs and not self.training


def _run_filter(run_ids: list[str] | None, column: str = "run_id") -> tuple[str, list[Any]]:
    if run_ids is None:
        return "true", []
    return f"{column} IN ({', '.join('?' for _ in run_ids)})", list(run_ids)


def read_report_data(con: Any, run_ids: list[str] | None = None, max_examples: int = 12) -> ReportData:
    """Read every section's rows (only the runs in `run_ids`, when given)."""
    present = _relations(con)
    data = ReportData()
    where, params = _run_filter(run_ids)
    r_where, _ = _run_filter(run_ids, "r.run_id")
    data.runs = _rows(
        con,
        "SELECT r.run_id, r.name, r.command, r.status, r.started_at, r.finished_at, "
        "count(c.call_id) AS calls, coalesce(sum(c.prompt_tokens), 0) AS prompt_tokens, "
        "coalesce(sum(c.completion_tokens), 0) AS completion_tokens, sum(c.cost_usd) AS cost_usd, "
        "count(c.error) AS errors, count(*) FILTER (WHERE c.cached) AS cached "
        f"FROM runs r LEFT JOIN calls c ON c.run_id = r.run_id WHERE {r_where} "
        "GROUP BY ALL ORDER BY r.started_at",
        params,
    )
    data.steps = _rows(
        con,
        "SELECT step, count(*) AS calls, count(error) AS errors, count(*) FILTER (WHERE cached) AS cached, "
        "coalesce(sum(prompt_tokens), 0) AS prompt_tokens, coalesce(sum(completion_tokens), 0) "
        "AS completion_tokens, sum(cost_usd) AS cost_usd, "
        "quantile_cont(latency_ms, 0.5) FILTER (WHERE NOT cached) AS p50_ms, "
        "quantile_cont(latency_ms, 0.95) FILTER (WHERE NOT cached) AS p95_ms "
        f"FROM calls WHERE {where} GROUP BY step ORDER BY min(created_at)",
        params,
    )
    latencies: dict[str, list[float]] = {}
    for row in _rows(
        con,
        f"SELECT step, latency_ms FROM calls WHERE {where} AND NOT cached AND error IS NULL "
        "AND latency_ms IS NOT NULL ORDER BY created_at LIMIT 200000",
        params,
    ):
        latencies.setdefault(str(row["step"]), []).append(float(row["latency_ms"]))
    data.latencies = latencies
    data.principles_revise = _rows(
        con,
        f"SELECT principle, count(*) AS n FROM revisions WHERE {where} GROUP BY 1 ORDER BY n DESC, 1",
        params,
    )
    data.principles_label = _rows(
        con,
        f"SELECT principle, count(*) AS n FROM feedback_queries WHERE {where} AND attempt = 0 "
        "GROUP BY 1 ORDER BY n DESC, 1",
        params,
    )
    data.examples = _examples(con, run_ids, max_examples)
    data.labels = _rows(
        con,
        "SELECT run_id, method, label_source, prob_a, greatest(prob_a, prob_b) AS chosen_prob "
        f"FROM comparisons WHERE {where}",
        params,
    )
    data.label_sources = _rows(
        con,
        f"SELECT status, coalesce(label_source, '-') AS label_source, count(*) AS n FROM pair_labels "
        f"WHERE {where} GROUP BY ALL ORDER BY n DESC",
        params,
    )
    # P(the option shown first) per query: 0.5 means no position bias. A swapped query shows
    # response_b first, and `prob_a` is stored in the pair's own order.
    data.position_bias = _rows(
        con,
        "SELECT swapped, count(*) AS n, avg(CASE WHEN swapped THEN 1 - prob_a ELSE prob_a END) AS p_first "
        f"FROM feedback_queries WHERE {where} AND prob_a IS NOT NULL AND kind <> 'vote' GROUP BY 1 ORDER BY 1",
        params,
    )
    # `--run` names command runs; training runs are kept when their id is named, or always when
    # none is (a training run is not one of `runs`).
    data.training = _training(con, run_ids)
    training_ids = None if run_ids is None else [t["run_id"] for t in data.training]
    t_where, t_params = _run_filter(training_ids, "training_run_id")
    data.rewards = _rows(
        con,
        f"SELECT training_run_id, stage, reward FROM policy_samples WHERE {t_where} "
        "ORDER BY training_run_id, stage DESC",
        t_params,
    )
    if "eval_results" in present:
        data.evals = _rows(con, f"SELECT * FROM eval_results WHERE {where}", params)
    return data


def _examples(con: Any, run_ids: list[str] | None, limit: int) -> list[dict[str, Any]]:
    """The first `limit` revised prompts: the prompt, the initial response, every round."""
    where, params = _run_filter(run_ids)
    heads = _rows(
        con,
        "SELECT run_id, prompt_id, prompt, init_response FROM sft_examples "
        f"WHERE {where} ORDER BY run_id, prompt_id LIMIT {int(limit)}",
        params,
    )
    for head in heads:
        head["rounds"] = _rows(
            con,
            "SELECT round, principle, critique_request, critique, revision_request, revision, "
            "needs_revision FROM revisions WHERE run_id = ? AND prompt_id = ? ORDER BY round",
            [head["run_id"], head["prompt_id"]],
        )
    return heads


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def _training(con: Any, run_ids: list[str] | None) -> list[dict[str, Any]]:
    rows = _rows(
        con,
        "SELECT run_id, kind, base_model, out_dir, train_rows, status, metrics, started_at, finished_at "
        "FROM training_runs ORDER BY started_at",
    )
    if run_ids is not None:
        rows = [r for r in rows if r["run_id"] in run_ids]
    for row in rows:
        metrics = _json(row.pop("metrics")) or {}
        row["metrics"] = metrics if isinstance(metrics, dict) else {}
    return rows
