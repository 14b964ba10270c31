"""The database side of training: reading charter's views into trainer rows, and recording runs.

Reads go through a read-only connection that is closed again before training starts, and the
bookkeeping writes (`training_runs`, `policy_samples`) open the file for writing only for the
moment they take, so other processes (`charter sql`, a notebook) can read the database while a
model trains. Nothing here imports torch or TRL.

Every reader takes `run` (a run's name or id, as in `runs`) and `where` (an SQL condition on the
source's columns) and raises `NoRowsError` (a `ValueError`) when nothing matches.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from charter.exporters import LabelRunChoice

from charter.exporters import ALL_ROUNDS_SQL

__all__ = [
    "NoRowsError",
    "Selection",
    "TrainingRecord",
    "parse_hh_transcript",
    "read_hh_file",
    "read_mix_file",
    "read_preference_rows",
    "read_preferences",
    "read_prompt_rows",
    "read_sft",
    "read_sft_rows",
]

T = TypeVar("T")

# What each reader selects from; `--where` conditions apply to these columns.
SFT_SOURCE = "SELECT * FROM sft_examples"
# Every critique -> revision round's revision, as its own example (the paper trains on all of them):
# the same source `charter export --dataset sft` reads.
ALL_ROUNDS_SOURCE = ALL_ROUNDS_SQL
PREFERENCE_SOURCE = "SELECT * FROM preference_pairs"
PROMPT_SOURCE = "SELECT * FROM prompts"


class NoRowsError(ValueError):
    """The selection matched no rows (bad input: the CLI exits 2 and writes nothing)."""


@dataclass
class Selection:
    """Which rows of a source to read: one run (name or id) and/or an SQL condition."""

    run: str | None = None
    where: str | None = None

    def describe(self) -> str:
        parts = [f"--run {self.run!r}" if self.run else "", f"--where {self.where!r}" if self.where else ""]
        text = " and ".join(p for p in parts if p)
        return f" matching {text}" if text else ""


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _connect(db: str | Path) -> Any:
    from charter.store.store import open_read_only

    return open_read_only(db)


def _run_ids(con: Any, db: str | Path, run: str) -> list[str]:
    rows = con.execute("SELECT run_id FROM runs WHERE name = ? OR run_id = ?", [run, run]).fetchall()
    if not rows:
        raise NoRowsError(f"--run {run!r}: no run with that name or id in {db}")
    return [str(r[0]) for r in rows]


def _select(
    db: str | Path,
    source: str,
    what: str,
    selection: Selection,
    *,
    run_columns: Sequence[str] = ("run_id",),
    order_by: str = "ALL",
    distinct_on: str | None = None,
) -> list[dict[str, Any]]:
    """Rows of `source` for `selection` as dicts; a bad `--where` or a missing view is a ValueError."""
    import duckdb

    con = _connect(db)
    try:
        params: list[Any] = []
        query = f"SELECT * FROM ({source}) AS d WHERE true"
        if selection.run is not None:
            ids = _run_ids(con, db, selection.run)
            marks = ", ".join("?" for _ in ids)
            query += " AND (" + " OR ".join(f"{c} IN ({marks})" for c in run_columns) + ")"
            params += ids * len(run_columns)
        if selection.where:
            from charter.store.where import where_sql

            query += f" AND {where_sql(selection.where)}"  # one expression, or a ValueError
        if distinct_on is not None:
            query = f"SELECT DISTINCT ON ({distinct_on}) * FROM ({query}) AS s ORDER BY {distinct_on}"
        else:
            query += f" ORDER BY {order_by}"
        try:
            cur = con.execute(query, params)
        except duckdb.Error as exc:
            message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if selection.where and not isinstance(exc, duckdb.CatalogException):
                raise ValueError(f"--where {selection.where!r}: {message}") from None
            raise ValueError(f"cannot read {what} from {db}: {message}") from None
        columns = [d[0] for d in cur.description or []]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


def _messages(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        value = json.loads(value)
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def read_sft_rows(
    db: str | Path, selection: Selection | None = None, *, all_rounds: bool = True
) -> list[dict[str, Any]]:
    """SFT rows `{"messages", "run_id", "prompt_id"}`: every round's revision, or (`all_rounds=False`)
    each prompt's final revision from `sft_examples`. See `read_sft`."""
    return read_sft(db, selection, all_rounds=all_rounds)[0]


def read_sft(
    db: str | Path, selection: Selection | None = None, *, all_rounds: bool = True
) -> tuple[list[dict[str, Any]], int]:
    """SFT rows and how many rounds were dropped as duplicates.

    By default every critique -> revision round's revision becomes an example (as Bai et al. do),
    from `revisions` joined with `prompts`; `where` then sees the columns of `sft_examples` plus
    `round, principle, critique, revision, needs_revision, prompt_messages`. A round that kept the
    previous text (`needs_revision = false`) repeats it, so exact duplicates of the same prompt and
    text are dropped (and counted). With `all_rounds=False`, `sft_examples` (final revisions) only.
    """
    selection = selection or Selection()
    dropped = 0
    if not all_rounds:
        rows = _select(db, SFT_SOURCE, "sft_examples", selection, order_by="run_id, prompt_id")
        out = [
            {"messages": _messages(r["messages"]), "run_id": r["run_id"], "prompt_id": r["prompt_id"]}
            for r in rows
        ]
        source = "sft_examples"
    else:
        rows = _select(db, ALL_ROUNDS_SOURCE, "revisions", selection, order_by="run_id, prompt_id, round")
        seen: set[tuple[str, str, str]] = set()
        out = []
        for r in rows:
            key = (r["run_id"], r["prompt_id"], r["revision"])
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            messages = [*_messages(r["prompt_messages"]), {"role": "assistant", "content": r["revision"]}]
            out.append(
                {
                    "messages": messages,
                    "run_id": r["run_id"],
                    "prompt_id": r["prompt_id"],
                    "round": r["round"],
                }
            )
        source = "revisions"
    if not out:
        raise NoRowsError(f"no rows in {source}{selection.describe()} in {db}; run `charter revise` first")
    return out, dropped


def read_preference_rows(db: str | Path, selection: Selection | None = None) -> list[dict[str, Any]]:
    """Pairs `{"prompt": messages, "chosen", "rejected": [assistant turn], "chosen_prob", ...}`.

    From the `preference_pairs` view (one row per labeled comparison). `run` matches the label run
    or the run that sampled the pair; of the label runs left, only one counts (`read_preferences`).
    """
    return read_preferences(db, selection)[0]


def read_preferences(
    db: str | Path, selection: Selection | None = None
) -> tuple[list[dict[str, Any]], LabelRunChoice]:
    """`read_preference_rows` and the label run they come from.

    A pair labeled by several label runs would otherwise count once per run: the rows of one label
    run are kept, the one `run` names or else the latest (`charter.exporters.choose_label_run`, the
    rule `charter export --dataset preferences` follows too).
    """
    from charter.exporters import choose_label_run

    selection = selection or Selection()
    rows = _select(
        db,
        PREFERENCE_SOURCE,
        "preference_pairs",
        selection,
        run_columns=("run_id", "sample_run_id"),
        order_by="run_id, pair_id",
    )
    if not rows:
        raise NoRowsError(
            f"no rows in preference_pairs{selection.describe()} in {db}; "
            "run `charter sample` and `charter label` first"
        )
    con = _connect(db)
    try:
        choice = choose_label_run(con, sorted({str(r["run_id"]) for r in rows}), selection.run)
    finally:
        con.close()
    return [
        {
            "prompt": _messages(r["messages"]),
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
            "chosen_prob": float(r["chosen_prob"]),
            "prompt_id": r["prompt_id"],
            "pair_id": r["pair_id"],
        }
        for r in rows
        if str(r["run_id"]) == choice.run_id
    ], choice


def read_prompt_rows(db: str | Path, selection: Selection | None = None) -> list[dict[str, Any]]:
    """Distinct prompts `{"prompt_id", "messages", "prompt"}` from the `prompts` table (any run).

    The same prompt stored by several runs (revise, sample) counts once.
    """
    selection = selection or Selection()
    rows = _select(db, PROMPT_SOURCE, "prompts", selection, distinct_on="prompt_id")
    if not rows:
        raise NoRowsError(f"no rows in prompts{selection.describe()} in {db}")
    return [
        {"prompt_id": str(r["prompt_id"]), "messages": _messages(r["messages"]), "prompt": r["prompt"]}
        for r in rows
    ]


def _mix_lines(path: str | os.PathLike[str]) -> Iterator[tuple[str, Any]]:
    """`(where, object)` for each non-blank line of a `--mix` .jsonl file; `where` names file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--mix {path}: no such file")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"--mix {path}, line {number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not JSON ({exc.msg})") from None


def read_mix_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A user's own chat data to mix into SFT: `.jsonl`, one `{"messages": [{role, content}, ...]}` a line."""
    rows: list[dict[str, Any]] = []
    for where, obj in _mix_lines(path):
        messages = obj.get("messages") if isinstance(obj, Mapping) else None
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{where}: expected a non-empty 'messages' list")
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
                raise ValueError(f"{where}: messages[{i}] is not a {{role, content}} object")
            if m.get("role") not in ("system", "user", "assistant"):
                raise ValueError(f"{where}: messages[{i}] has role {m.get('role')!r}")
        rows.append({"messages": [{"role": m["role"], "content": m["content"]} for m in messages]})
    if not rows:
        raise ValueError(f"--mix {path}: no rows")
    return rows


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """An HH-RLHF transcript `"\\n\\nHuman: ...\\n\\nAssistant: ..."` as `{role, content}` turns."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise ValueError("does not start with a Human turn ('\\n\\nHuman:')")
    turns = [
        {"role": "user" if role == "Human" else "assistant", "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if not turns or turns[0]["role"] != "user":
        raise ValueError("does not start with a Human turn ('\\n\\nHuman:')")
    return turns


def read_hh_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Human comparisons to mix into the preference model (`charter train reward --mix FILE`).

    `.jsonl` in the HH-RLHF layout, one `{"chosen": transcript, "rejected": transcript}` a line,
    each transcript `"\\n\\nHuman: ...\\n\\nAssistant: ..."`. Both must share the conversation before
    their final assistant turn: it becomes the `prompt`, the two final turns `chosen`/`rejected`,
    with a hard label (`chosen_prob` 1.0). A bad line is a ValueError naming the file and line.
    """
    rows: list[dict[str, Any]] = []
    for where, obj in _mix_lines(path):
        if not isinstance(obj, Mapping):
            raise ValueError(f"{where}: expected an object with 'chosen' and 'rejected' transcripts")
        turns: dict[str, list[dict[str, str]]] = {}
        for key in ("chosen", "rejected"):
            value = obj.get(key)
            if not isinstance(value, str):
                raise ValueError(f"{where}: '{key}' must be a transcript string (HH-RLHF layout)")
            try:
                turns[key] = parse_hh_transcript(value)
            except ValueError as exc:
                raise ValueError(f"{where}: '{key}' {exc}") from None
            if turns[key][-1]["role"] != "assistant":
                raise ValueError(f"{where}: '{key}' does not end with an Assistant turn")
        prompt = turns["chosen"][:-1]
        if turns["rejected"][:-1] != prompt:
            raise ValueError(f"{where}: 'chosen' and 'rejected' differ before their final Assistant turn")
        rows.append(
            {
                "prompt": prompt,
                "chosen": turns["chosen"][-1:],
                "rejected": turns["rejected"][-1:],
                "chosen_prob": 1.0,
            }
        )
    if not rows:
        raise ValueError(f"--mix {path}: no rows")
    return rows


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The last user turn of a conversation (what `prompts.prompt` holds)."""
    return next((str(m["content"]) for m in reversed(messages) if m.get("role") == "user"), "")


# --------------------------------------------------------------------------------------------------
# Writing: short transactions, retried while another process has the file open
# --------------------------------------------------------------------------------------------------


def _retry(action: Callable[[], T], *, seconds: float = 60.0) -> T:
    from charter.store.store import StoreInUseError

    deadline = time.monotonic() + seconds
    delay = 0.1
    while True:
        try:
            return action()
        except StoreInUseError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


@contextmanager
def _store(db: str | Path) -> Iterator[Any]:
    from charter.store.store import Store

    store = Store(db)
    try:
        yield store
    finally:
        store.close()


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass
class TrainingRecord:
    """One `training_runs` row, written as 'running' when training starts and finished once at the end."""

    db: str | Path
    kind: str
    base_model: str
    out_dir: str
    train_rows: int
    config: dict[str, Any]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    started: bool = False

    def start(self) -> None:
        """Insert the row with status 'running' (idempotent)."""
        if self.started:
            return

        def write() -> None:
            with _store(self.db) as store:
                store.add_rows(
                    "training_runs",
                    [
                        {
                            "run_id": self.run_id,
                            "kind": self.kind,
                            "base_model": self.base_model,
                            "out_dir": self.out_dir,
                            "train_rows": self.train_rows,
                            "config": _dumps(self.config),
                            "status": "running",
                        }
                    ],
                )

        _retry(write)
        self.started = True

    def finish(
        self,
        status: str,
        metrics: Mapping[str, Any],
        *,
        train_rows: int | None = None,
        policy_samples: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Add `policy_samples`, then set the final status, metrics and config.

        The samples are committed first, so a row that says 'done' always has its samples.
        """
        if train_rows is not None:
            self.train_rows = train_rows

        def write() -> None:
            with _store(self.db) as store:
                store.add_rows(
                    "policy_samples", [{"training_run_id": self.run_id, **row} for row in policy_samples]
                )
                store.flush()
                store.con.execute(
                    "UPDATE training_runs SET status = ?, metrics = ?, config = ?, train_rows = ?, "
                    "finished_at = current_timestamp WHERE run_id = ?",
                    [status, _dumps(metrics), _dumps(self.config), self.train_rows, self.run_id],
                )

        _retry(write, seconds=600.0)
