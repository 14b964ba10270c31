"""Preference exports (`charter export --dataset preferences`): TRL and hf-cai shapes.

Importing this module registers them with `charter.export` (which imports it lazily).

- `--schema trl`: `prompt` (the conversation, a list of `{role, content}`), `chosen` and `rejected`
  (each a one-message assistant list, TRL's conversational preference format with an explicit
  prompt) plus `chosen_prob` (the soft label, >= 0.5).
Which labels count: a pair labeled by several label runs has one row per run in
`preference_pairs`. Exports and trainers keep the rows of one label run, never the union: the one
`--run` names, else the latest label run among the selected rows (`choose_label_run`).

- `--schema hf-cai`: the columns of HuggingFaceH4/cai-conversation-harmless. `prompt`, `messages`,
  `chosen` and `rejected` are filled from the pair (`chosen`/`rejected` are full conversations,
  `messages` the chosen one); `init_*`, `critic_*` and `revision_*` come from the SL-CAI run the
  pair's prompts were taken from (`charter sample --from-run`), and are null otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from charter.export import FINAL_ONLY_SQL, register_exporter

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


register_exporter("preferences", "trl", _PREFERENCES_SQL, preferences_trl)
register_exporter("preferences", "hf-cai", _HF_CAI_SQL, preferences_hf_cai)

__all__ = ["LabelRunChoice", "choose_label_run", "preferences_hf_cai", "preferences_trl"]
