"""The contract's user-facing views over the tables (recreated on every open, so they can evolve)."""

from __future__ import annotations

import duckdb

VIEWS: dict[str, str] = {}

# RL-CAI: one row per labeled pair (label run x pair); flagged pairs stay in `pair_labels`.
VIEWS["comparisons"] = """
    SELECT l.run_id, l.pair_id, p.prompt_id, pr.prompt, pr.messages, p.response_a, p.response_b,
           l.principle, l.method, l.prob_a, l.prob_b, l.reasoning, l.label_source, l.status,
           l.model, l.prob_a_unclamped, l.raw_text, l.call_ids,
           p.run_id AS sample_run_id, p.source_run_id, p.index_a, p.index_b
    FROM pair_labels l
    JOIN pairs p ON p.pair_id = l.pair_id
    JOIN prompts pr ON pr.run_id = p.run_id AND pr.prompt_id = p.prompt_id
    WHERE l.status = 'ok'
"""
# Ready for TRL: the preferred response of each comparison and its probability (>= 0.5).
VIEWS["preference_pairs"] = """
    SELECT run_id, pair_id, prompt_id, prompt, messages,
           CASE WHEN prob_a >= prob_b THEN response_a ELSE response_b END AS chosen,
           CASE WHEN prob_a >= prob_b THEN response_b ELSE response_a END AS rejected,
           greatest(prob_a, prob_b) AS chosen_prob,
           principle, method, label_source, sample_run_id, source_run_id
    FROM comparisons
"""

# Evaluations: one row per evaluated comparison, with the run's name and the calls behind it.
VIEWS["eval_results"] = """
    SELECT e.run_id, r.name AS run_name, e.eval, e.item_id, e.model, e.method, e.correct_option,
           e.prob_correct, e.correct, e.status, e.label_source, e.call_ids, r.started_at
    FROM eval_items e JOIN runs r ON r.run_id = e.run_id
"""


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create every registered view."""
    for name, sql in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")


def drop_views(con: duckdb.DuckDBPyConnection) -> None:
    """Drop every view of the file, so a migration may alter the tables under them (recreated after)."""
    names = [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
    for name in names:
        con.execute(f'DROP VIEW IF EXISTS "{name}"')
