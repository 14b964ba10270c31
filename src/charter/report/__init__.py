"""`charter report DB --out report.html`: look at a Constitutional AI run before reading numbers.

One self-contained HTML file (opens offline, no scripts or styles fetched): run overview (calls,
tokens, cost, latency, errors per step), the principles drawn, revisions side by side per round
with a word diff, the label distribution and position bias from swapped queries, training curves
from `training_runs.metrics.loss_history`, reward before/after RL from `policy_samples`, and
evaluations with a reliability diagram when the database has an `eval_results` view (columns
`correct` and, for calibration, `prob_correct`; `method`/`category` group the accuracy table).

    from charter.report import build_report
    build_report("cai.duckdb", "report.html")
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charter.report import plots, render
from charter.report.queries import ReportData, read_report_data

__all__ = ["ReportError", "ReportResult", "build_report", "calibration_bins", "render_report"]


class ReportError(ValueError):
    """Bad input for a report (no such database, nothing in it, an output that is the database)."""


@dataclass
class ReportResult:
    """What `build_report` wrote."""

    out: Path
    sections: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    bytes: int = 0


def calibration_bins(rows: Sequence[dict[str, Any]], bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean predicted, frequency right, count) per bin, both answers of each comparison counted."""
    from charter.evals.stats import pairwise_calibration

    probs = [float(r["prob_correct"]) for r in rows if r.get("prob_correct") is not None]
    return [(b.mean_predicted, b.frequency, b.count) for b in pairwise_calibration(probs, bins)]


_TOKENS = ("calls", "cached", "errors", "prompt_tokens", "completion_tokens", "cost_usd")
_RUN_COLUMNS = [
    ("run", "name"), ("command", "command"), ("status", "status"), ("calls", "calls"), ("cached", "cached"),
    ("errors", "errors"), ("prompt tokens", "prompt_tokens"), ("completion tokens", "completion_tokens"),
    ("cost (USD)", "cost_usd"), ("started", "started_at"), ("finished", "finished_at"),
]  # fmt: skip
_STEP_COLUMNS = [
    ("step", "step"), ("calls", "calls"), ("errors", "errors"), ("cached", "cached"),
    ("prompt tokens", "prompt_tokens"), ("completion tokens", "completion_tokens"), ("cost (USD)", "cost_usd"),
    ("p50 ms", "p50_ms"), ("p95 ms", "p95_ms"),
]  # fmt: skip


def _overview(data: ReportData) -> str:
    runs = render.records(data.runs, _RUN_COLUMNS, numeric=_TOKENS)
    steps = render.records(data.steps, _STEP_COLUMNS, numeric=(*_TOKENS, "p50_ms", "p95_ms"))
    return f"<h3>Runs</h3>{runs}<h3>Calls per step</h3>{steps}" + render.figure(
        plots.latency_plot(data.latencies), "no answered calls to time"
    )


def _principles(data: ReportData) -> str:
    return render.figure(
        plots.principle_plot(
            data.principles_revise, "principles-revise", "Principles drawn for critique and revision"
        ),
        "no critique/revision rounds in this database",
    ) + render.figure(
        plots.principle_plot(
            data.principles_label, "principles-label", "Principles drawn for feedback labels"
        ),
        "no feedback queries in this database",
    )


def _revisions(data: ReportData) -> str:
    if not data.examples:
        return '<p class="note">no revised prompts in this database (charter revise)</p>'
    return (
        f"<p>The first {len(data.examples)} revised prompts. Each revision is shown against the version before it: "
        "<ins>added</ins>, <del>removed</del>.</p>" + "".join(render.example_html(e) for e in data.examples)
    )


def _labels(data: ReportData) -> str:
    if not data.label_sources:
        return '<p class="note">no labeled pairs in this database (charter sample, charter label)</p>'
    sources = render.table(
        ["status", "label source", "pairs"],
        ([r["status"], r["label_source"], r["n"]] for r in data.label_sources),
        numeric=[2],
    )
    bias = ""
    if data.position_bias:
        bias = render.table(
            ["order", "queries", "mean P(option shown first)"],
            (
                ["options swapped" if r["swapped"] else "as sampled", r["n"], r["p_first"]]
                for r in data.position_bias
            ),
            numeric=[1, 2],
        )
    return (
        sources
        + render.figure(plots.label_plot(data.labels), "no soft labels to plot")
        + "<h3>Position bias</h3><p>0.5 means the feedback model does not favour the option it reads first; "
        "labels asked both ways (<code>--swap</code>) cancel what bias there is.</p>"
        + bias
        + render.figure(plots.position_plot(data.position_bias), "no readable feedback queries")
    )


_HIGHLIGHTS = (
    "final_loss",
    "eval_accuracy",
    "eval_ece",
    "mean_reward_before",
    "mean_reward_after",
    "final_kl",
    "final_reward_accuracy",
)


def _training(data: ReportData) -> str:
    if not data.training:
        return '<p class="note">no training runs in this database (charter train)</p>'
    rows = []
    for t in data.training:
        m = t["metrics"]
        rows.append([t["kind"], t["status"], t["train_rows"], *(m.get(k) for k in _HIGHLIGHTS), t["out_dir"]])
    return render.table(
        ["kind", "status", "rows", *_HIGHLIGHTS, "out_dir"], rows, numeric=range(2, 3 + len(_HIGHLIGHTS))
    ) + render.figure(plots.training_plot(data.training), "no training run logged a loss curve")


def _rewards(data: ReportData) -> str:
    if not data.rewards:
        return '<p class="note">no policy samples scored before and after RL (charter train ppo)</p>'
    summary: dict[tuple[str, str], list[float]] = {}
    for r in data.rewards:
        if r["reward"] is not None:
            summary.setdefault((str(r["training_run_id"]), str(r["stage"])), []).append(float(r["reward"]))
    rows = [[run, stage, len(v), sum(v) / len(v)] for (run, stage), v in summary.items()]
    return render.table(
        ["training run", "stage", "samples", "mean reward"], rows, numeric=[2, 3]
    ) + render.figure(plots.reward_plot(data.rewards), "no rewards to plot")


def _evals(data: ReportData) -> str:
    if not data.evals:
        return '<p class="note">no evaluations in this database (charter eval)</p>'
    groups: dict[tuple[str, str], list[bool]] = {}
    for row in data.evals:
        if row.get("correct") is None:
            continue
        key = (str(row.get("method") or "-"), str(row.get("category") or "all"))
        groups.setdefault(key, []).append(bool(row["correct"]))
    rows = [[m, c, len(v), sum(v) / len(v)] for (m, c), v in sorted(groups.items())]
    return render.table(
        ["method", "category", "comparisons", "accuracy"], rows, numeric=[2, 3]
    ) + render.figure(plots.reliability_plot(calibration_bins(data.evals)), "no probabilities to calibrate")


def render_report(data: ReportData, title: str, subtitle: str) -> tuple[str, list[str], list[str]]:
    """The page's HTML, its section anchors and its figure keys."""
    sections = [
        ("overview", "Run overview", _overview(data)),
        ("principles", "Principles drawn", _principles(data)),
        ("revisions", "Revisions, round by round", _revisions(data)),
        ("labels", "Preference labels", _labels(data)),
        ("training", "Training", _training(data)),
        ("rewards", "Reward before and after RL", _rewards(data)),
        ("evals", "Evaluations", _evals(data)),
    ]
    document = render.page(title, subtitle, sections)
    figures = [f.split('"', 1)[0] for f in document.split('<figure id="fig-')[1:]]
    return document, [s[0] for s in sections], figures


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def build_report(
    db: str | Path, out: str | Path, *, runs: Sequence[str] | None = None, max_examples: int = 12
) -> ReportResult:
    """Write the report of `db` to `out` (only the runs named in `runs`, by name or id, when given).

    Raises `ReportError` for a missing or empty database, an unknown run, or an `out` that is the
    database or a directory. The file is written to a temporary name and renamed, so a failure never
    leaves half a report.
    """
    from charter.store.store import StoreError, open_read_only

    db_path, out_path = Path(db), Path(out)
    if not db_path.is_file():
        raise ReportError(f"database {db_path} does not exist")
    if out_path.is_dir():
        raise ReportError(f"--out {out_path}: is a directory; give a file name such as report.html")
    if _same_file(db_path, out_path):
        raise ReportError(f"--out {out_path}: is the database itself; give another file")
    try:
        con = open_read_only(db_path)
    except StoreError as exc:
        raise ReportError(str(exc)) from None
    try:
        run_ids: list[str] | None = None
        if runs:
            run_ids = []
            for name in runs:
                found = con.execute(
                    "SELECT run_id FROM runs WHERE name = ? OR run_id = ? "
                    "UNION SELECT run_id FROM training_runs WHERE run_id = ?",
                    [name, name, name],
                ).fetchall()
                if not found:
                    raise ReportError(f"--run {name!r}: no run with that name or id in {db_path}")
                run_ids.extend(str(r[0]) for r in found)
        data = read_report_data(con, run_ids, max_examples)
    finally:
        con.close()
    if data.empty:
        raise ReportError(f"database {db_path} holds no runs yet: nothing to report")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    from charter import __version__

    document, sections, figures = render_report(
        data,
        f"charter report: {db_path.name}",
        f"{db_path} · runs: {len(data.runs)}, "
        f"training runs: {len(data.training)} · charter {__version__} · {stamp}",
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(document)
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ReportResult(out_path, sections, figures, len(document.encode("utf-8")))
