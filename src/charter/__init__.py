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
