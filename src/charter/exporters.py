"""Every dataset shape `charter export` can write: an `Exporter` per (dataset, schema).

The core's shapes (`CORE_EXPORTERS`) register through the core's default plugin, exactly as a third
party's `register_exporters` hook adds its own; `charter.plugins.get_exporters()` is the one reader.
An exporter is a SQL query over the contract's views and a transform of each row it returns.

`--dataset sft`: every round's revision (unchanged rounds once each), or with `--final-only` each
prompt's final revision; `--schema trl` is `messages`, `--schema hf-cai` the columns of
HuggingFaceH4/cai-conversation-harmless.

`--dataset preferences`:
- `--schema trl`: `prompt` (the conversation, a list of `{role, content}`), `chosen` and `rejected`
  (each a one-message assistant list, TRL's conversational preference format with an explicit
  prompt) plus `chosen_prob` (the soft label, >= 0.5).
- `--schema hf-cai`: the columns of HuggingFaceH4/cai-conversation-harmless. `prompt`, `messages`,
  `chosen` and `rejected` are filled from the pair (`chosen`/`rejected` are full conversations,
  `messages` the chosen one); `init_*`, `critic_*` and `revision_*` come from the SL-CAI run the
  pair's prompts were taken from (`charter sample --from-run`), and are null otherwise.

Which labels count: a pair labeled by several label runs has one row per run in
`preference_pairs`. Exports and trainers keep the rows of one label run, never the union: the one
`--run` names, else the latest label run among the selected rows (`choose_label_run`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Transform = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Exporter:
    """One export shape: `sql` over the store's views, `transform` applied to each row.

    `dataset` is what `--dataset` names (`sft`, `preferences`, or a plugin's own), `schema` what
    `--schema` names. A `preferences` exporter's rows must carry `run_id` (the label run) and
    `sample_run_id`: `--run` and the one-label-run rule select on them. `all_rounds` (for `sft`) is
    the (sql, transform) used without `--final-only`, one row per (run_id, prompt_id, revision).
    """

    dataset: str
    schema: str
    sql: str
    transform: Transform
    all_rounds: tuple[str, Transform] | None = None
    help: str = ""


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _sft_trl(row: dict[str, Any]) -> dict[str, Any]:
    return {"messages": _json(row["messages"])}


def _sft_hf_cai(row: dict[str, Any]) -> dict[str, Any]:
    messages = _json(row["messages"])
    conversation = messages[:-1]
    return {
        "init_prompt": row["init_prompt"],
        "init_response": row["init_response"],
        "critic_prompt": row["critic_prompt"],
        "critic_response": row["critic_response"],
        "revision_prompt": row["revision_prompt"],
        "revision_response": row["revision_response"],
        "prompt": row["prompt"],
        "messages": messages,
        "chosen": messages,
        "rejected": [*conversation, {"role": "assistant", "content": row["init_response"]}],
    }


# The round whose revision is a prompt's final response: the last one that asked for a revision
# (later "no change" rounds carry it over), else the last round.
_FINAL_ROUND = """
    SELECT * FROM revisions
    QUALIFY row_number() OVER (
        PARTITION BY run_id, prompt_id
        ORDER BY (needs_revision OR revision_call_id IS NOT NULL) DESC, round DESC
    ) = 1
"""
# Final revisions, with critique and revision taken from the round that produced the final response
# (rows stored before that was so held round 1's critique next to the final revision).
FINAL_ONLY_SQL = f"""
    SELECT s.run_id, s.prompt_id, s.prompt, s.completion, s.messages, s.init_prompt, s.init_response,
           coalesce(f.critique_request, s.critic_prompt) AS critic_prompt,
           coalesce(f.critique, s.critic_response) AS critic_response,
           coalesce(f.revision_request, s.revision_prompt) AS revision_prompt,
           coalesce(f.revision, s.revision_response) AS revision_response
    FROM sft_examples s
    LEFT JOIN ({_FINAL_ROUND}) f ON f.run_id = s.run_id AND f.prompt_id = s.prompt_id
"""
# Every round's revision as its own example (the paper trains on all of them), with the columns of
# `sft_examples` (critic_* and revision_* from that round) plus round, principle, needs_revision,
# critique, revision and prompt_messages (the conversation before the answer).
ALL_ROUNDS_SQL = """
    SELECT r.run_id, r.prompt_id, r.round, r.principle, r.needs_revision, r.critique, r.revision,
           p.prompt, p.messages AS prompt_messages, r.revision AS completion,
           p.prompt AS init_prompt, coalesce(a.response, '') AS init_response,
           r.critique_request AS critic_prompt, r.critique AS critic_response,
           r.revision_request AS revision_prompt, r.revision AS revision_response
    FROM revisions r
    JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id
    LEFT JOIN responses a ON a.run_id = r.run_id AND a.prompt_id = r.prompt_id
"""
# A round that kept the previous text (a "no change" verdict) repeats an example: keep its first round.
ALL_ROUNDS_DISTINCT = ("run_id", "prompt_id", "revision")


def _all_rounds_messages(row: dict[str, Any]) -> dict[str, Any]:
    messages = [*_json(row["prompt_messages"]), {"role": "assistant", "content": row["revision"]}]
    return {**row, "messages": messages}


def _sft_trl_all_rounds(row: dict[str, Any]) -> dict[str, Any]:
    return _sft_trl(_all_rounds_messages(row))


def _sft_hf_cai_all_rounds(row: dict[str, Any]) -> dict[str, Any]:
    return _sft_hf_cai(_all_rounds_messages(row))


_PREFERENCES_SQL = """
    SELECT pp.run_id, pp.pair_id, pp.prompt_id, pp.prompt, pp.messages, pp.chosen, pp.rejected,
           pp.chosen_prob, pp.sample_run_id
    FROM preference_pairs pp
"""

# critic_* and revision_* from the round that produced the SL-CAI run's final response.
_HF_CAI_SQL = f"""
    SELECT pp.run_id, pp.pair_id, pp.prompt_id, pp.prompt, pp.messages, pp.chosen, pp.rejected,
           pp.chosen_prob, pp.sample_run_id, s.init_prompt, s.init_response, s.critic_prompt, s.critic_response,
           s.revision_prompt, s.revision_response
    FROM preference_pairs pp
    LEFT JOIN ({FINAL_ONLY_SQL}) s ON s.run_id = pp.source_run_id AND s.prompt_id = pp.prompt_id
"""


@dataclass(frozen=True)
class LabelRunChoice:
    """The label run whose labels a preference export or trainer uses, and why."""

    run_id: str
    name: str
    candidates: int  # label runs among the selected rows
    named: bool  # `--run` named this label run

    def note(self) -> str:
        """The rule as one line for stderr."""
        if self.named:
            return f"preferences: labels of label run {self.name} (named by --run)"
        others = self.candidates - 1
        more = f", not the {others} older label run{'s' if others != 1 else ''}" if others else ""
        return f"preferences: labels of the latest label run, {self.name}{more}; --run NAME picks another"


def choose_label_run(
    con: Any, label_run_ids: list[str], run: str | None, what: str = "preferences"
) -> LabelRunChoice:
    """The label run to use among `label_run_ids` (those of the selected rows): the one `run` names
    (a label run's name or id), else the one started last. No candidates is a ValueError."""
    if not label_run_ids:
        selected = f" for --run {run!r}" if run is not None else ""
        raise ValueError(
            f"no labeled pairs{selected}: nothing to export as {what}; run `charter label` first"
        )
    marks = ", ".join("?" for _ in label_run_ids)
    rows = con.execute(
        f"SELECT run_id, name FROM runs WHERE run_id IN ({marks}) ORDER BY started_at DESC, name DESC",
        label_run_ids,
    ).fetchall()
    if not rows:  # labels whose run row is gone (a hand-edited file): fall back to the ids
        rows = [(r, r) for r in sorted(label_run_ids, reverse=True)]
    named = next((r for r in rows if run is not None and run in (r[0], r[1])), None)
    run_id, name = named or rows[0]
    return LabelRunChoice(str(run_id), str(name), len(rows), named is not None)


def _conversation(row: dict[str, Any]) -> list[dict[str, str]]:
    messages = row["messages"]
    return json.loads(messages) if isinstance(messages, str) else list(messages)


def preferences_trl(row: dict[str, Any]) -> dict[str, Any]:
    """TRL's conversational preference row with an explicit prompt, plus the soft label."""
    return {
        "prompt": _conversation(row),
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
        "chosen_prob": float(row["chosen_prob"]),
    }


def preferences_hf_cai(row: dict[str, Any]) -> dict[str, Any]:
    """The columns of HuggingFaceH4/cai-conversation-harmless, filled where the data exists."""
    conversation = _conversation(row)
    chosen = [*conversation, {"role": "assistant", "content": row["chosen"]}]
    rejected = [*conversation, {"role": "assistant", "content": row["rejected"]}]
    return {
        "init_prompt": row.get("init_prompt"),
        "init_response": row.get("init_response"),
        "critic_prompt": row.get("critic_prompt"),
        "critic_response": row.get("critic_response"),
        "revision_prompt": row.get("revision_prompt"),
        "revision_response": row.get("revision_response"),
        "prompt": row["prompt"],
        "messages": chosen,
        "chosen": chosen,
        "rejected": rejected,
    }


CORE_EXPORTERS: tuple[Exporter, ...] = (
    Exporter(
        "sft",
        "trl",
        FINAL_ONLY_SQL,
        _sft_trl,
        (ALL_ROUNDS_SQL, _sft_trl_all_rounds),
        "TRL conversational SFT rows: messages",
    ),
    Exporter(
        "sft",
        "hf-cai",
        FINAL_ONLY_SQL,
        _sft_hf_cai,
        (ALL_ROUNDS_SQL, _sft_hf_cai_all_rounds),
        "the columns of HuggingFaceH4/cai-conversation-harmless",
    ),
    Exporter(
        "preferences", "trl", _PREFERENCES_SQL, preferences_trl, help="prompt, chosen, rejected, chosen_prob"
    ),
    Exporter(
        "preferences",
        "hf-cai",
        _HF_CAI_SQL,
        preferences_hf_cai,
        help="the columns of HuggingFaceH4/cai-conversation-harmless",
    ),
)
