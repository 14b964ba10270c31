"""Preference exports (`charter export --dataset preferences`): TRL and hf-cai shapes.

Importing this module registers them with `charter.export` (which imports it lazily).

- `--schema trl`: `prompt` (the conversation, a list of `{role, content}`), `chosen` and `rejected`
  (each a one-message assistant list, TRL's conversational preference format with an explicit
  prompt) plus `chosen_prob` (the soft label, >= 0.5).
- `--schema hf-cai`: the columns of HuggingFaceH4/cai-conversation-harmless. `prompt`, `messages`,
  `chosen` and `rejected` are filled from the pair (`chosen`/`rejected` are full conversations,
  `messages` the chosen one); `init_*`, `critic_*` and `revision_*` come from the SL-CAI run the
  pair's prompts were taken from (`charter sample --from-run`), and are null otherwise.
"""

from __future__ import annotations

import json
from typing import Any

from charter.export import register_exporter

_PREFERENCES_SQL = """
    SELECT pp.run_id, pp.pair_id, pp.prompt_id, pp.prompt, pp.messages, pp.chosen, pp.rejected,
           pp.chosen_prob
    FROM preference_pairs pp
"""

_HF_CAI_SQL = """
    SELECT pp.run_id, pp.pair_id, pp.prompt_id, pp.prompt, pp.messages, pp.chosen, pp.rejected,
           pp.chosen_prob, s.init_prompt, s.init_response, s.critic_prompt, s.critic_response,
           s.revision_prompt, s.revision_response
    FROM preference_pairs pp
    LEFT JOIN sft_examples s ON s.run_id = pp.source_run_id AND s.prompt_id = pp.prompt_id
"""


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

__all__ = ["preferences_hf_cai", "preferences_trl"]
