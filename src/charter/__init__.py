"""charter: a toolkit for Constitutional AI (Bai et al. 2022).

Typed Jinja prompt chains for critique -> revision (SL-CAI) and AI-feedback preference labeling
(RL-CAI), run against any LiteLLM backend, with every call and artifact stored in DuckDB.
"""

from __future__ import annotations

import os

# litellm fetches a model cost map over the network at import time unless told not to; charter
# imports it lazily, but set the switch as early as possible so a user's own import is safe too.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

__version__ = "0.1.0"

# The public API, imported lazily so `import charter` stays fast (no litellm, no duckdb until used).
_LAZY = {
    "revise": "charter.sl",
    "sample": "charter.rl",
    "label": "charter.rl",
    "run_pipeline": "charter.pipeline",
    "Respond": "charter.steps",
    "CritiqueRevise": "charter.steps",
    "Chain": "charter.steps",
    "Step": "charter.steps",
    "StepContext": "charter.steps",
    "Constitution": "charter.constitution",
    "Principle": "charter.constitution",
    "load_constitution": "charter.constitution",
    "list_constitutions": "charter.constitution",
    "PromptTemplate": "charter.prompts",
    "load_prompt": "charter.prompts",
    "Store": "charter.store",
    "get_backend": "charter.backends.registry",
    "RunnerOptions": "charter.runner",
    "run_chain": "charter.session",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'charter' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
