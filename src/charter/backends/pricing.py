"""Call cost from LiteLLM's price table, read as data: no `import litellm` (seconds) on the fast path.

The table is the JSON file LiteLLM ships (`model_prices_and_context_window_backup.json`, the one it
uses itself under LITELLM_LOCAL_MODEL_COST_MAP, which charter sets). It is found through the
installed package's files (importlib.util.find_spec), so nothing of litellm runs. The lookup and the
arithmetic follow `litellm.cost_per_token` for what an OpenAI-compatible call reports (prompt and
completion tokens): the provider-qualified key, then the bare model name, then the name after its
first slash, each only when the entry's provider is the call's; above a `*_above_<N>[k]_tokens` threshold the higher rates apply to every token.
tests/test_pricing.py checks the result against litellm's own for every chat and completion model
of the providers the fast path serves.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

TABLE_FILE = "model_prices_and_context_window_backup.json"
_THRESHOLD = re.compile(r"^input_cost_per_token_above_(\d+)(k?)_tokens$")


@functools.lru_cache(maxsize=1)
def _table_text() -> str:
    spec = importlib.util.find_spec("litellm")  # a top-level name: finds, does not import
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / TABLE_FILE
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return "{}"


@functools.lru_cache(maxsize=1)
def price_table() -> dict[str, Any]:
    """LiteLLM's price table from its package files ({} when litellm or the file is not installed)."""
    table = json.loads(_table_text())
    return table if isinstance(table, dict) else {}


def _plain(name: str) -> bool:
    # A name JSON writes as itself, so its quoted form is a substring of the file when it is a key.
    return name.isascii() and name.isprintable() and '"' not in name and "\\" not in name


@functools.lru_cache(maxsize=256)
def model_prices(provider: str, model: str) -> dict[str, Any] | None:
    """The table's entry for `model` (the name after the provider prefix) served by `provider`."""
    candidates = [f"{provider}/{model}", model]
    if "/" in model:
        candidates.append(model.split("/", 1)[1])
    # A local server's model is named nowhere in the table: say so without parsing its 1.5 MB
    # (30 ms of a run's fixed cost).
    if all(_plain(key) for key in candidates):
        text = _table_text()
        if not any(f'"{key}"' in text for key in candidates):
            return None
    table = price_table()
    for key in candidates:
        entry = table.get(key)
        # As in LiteLLM, an entry of another provider does not price this one's model.
        if isinstance(entry, dict) and entry.get("litellm_provider") in (None, provider):
            return entry
    return None


def _threshold(key: str) -> int | None:
    found = _THRESHOLD.match(key)
    if found is None:
        return None
    return int(found.group(1)) * (1000 if found.group(2) else 1)


def token_cost(entry: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> float:
    """USD for the tokens at `entry`'s per-token rates (the highest threshold the prompt passes)."""
    input_rate = float(entry.get("input_cost_per_token") or 0.0)
    output_rate = float(entry.get("output_cost_per_token") or 0.0)
    passed = [(n, key) for key in entry if (n := _threshold(key)) is not None and prompt_tokens > n]
    if passed:
        _, key = max(passed)
        input_rate = float(entry[key])
        output_key = "output" + key[len("input") :]
        if entry.get(output_key) is not None:
            output_rate = float(entry[output_key])
    return prompt_tokens * input_rate + completion_tokens * output_rate


def cost_usd(provider: str, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """What the call cost, or None when the table does not know the model (a local server's)."""
    entry = model_prices(provider, model)
    if entry is None:
        return None
    return token_cost(entry, prompt_tokens, completion_tokens)


__all__ = ["cost_usd", "model_prices", "price_table", "token_cost"]
