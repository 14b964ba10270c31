"""`charter export --dataset preferences --schema openai`: rows for OpenAI's preference fine-tuning
(DPO) jobs: `input.messages`, `preferred_output`, `non_preferred_output`."""

from __future__ import annotations

import json
from typing import Any

from charter.exporters import Exporter

# Every preference exporter selects these columns: --run and the one-label-run rule use run_id and
# sample_run_id.
SQL = """
    SELECT run_id, sample_run_id, pair_id, messages, chosen, rejected, chosen_prob
    FROM preference_pairs
"""


def to_openai(row: dict[str, Any]) -> dict[str, Any]:
    messages = row["messages"]
    return {
        "input": {"messages": json.loads(messages) if isinstance(messages, str) else list(messages)},
        "preferred_output": [{"role": "assistant", "content": row["chosen"]}],
        "non_preferred_output": [{"role": "assistant", "content": row["rejected"]}],
    }


EXPORTER = Exporter("preferences", "openai", SQL, to_openai, help="OpenAI preference fine-tuning rows")
