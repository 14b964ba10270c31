"""`LocalBackend`: a LiteLLM backend for `local/<path-or-hub-id>` plus exact option scoring.

Generation calls the provider behind litellm's `local/` model strings (`charter_transformers.provider`)
directly and parses its litellm-shaped answer like every other backend's; `litellm.acompletion(
model="local/...")` reaches the same code. `score_options` talks to the batching engine directly.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from charter.backends.base import BackendError, Completion, CompletionRequest
from charter.backends.litellm_backend import LiteLLMBackend, import_litellm

PREFIX = "local/"


class LocalBackend(LiteLLMBackend):
    """An in-process Hugging Face causal LM, shared by every backend that names the same model.

    `device`/`dtype` choose how the model is loaded (default: cuda, else mps, else cpu; bfloat16 on
    CUDA, else float32); requests may override them with the `device`/`dtype` parameters.
    `batch_window_ms`, `max_batch_size` and `max_batch_tokens` tune dynamic batching (defaults
    5 ms, 16 rows, 16384 padded tokens, or the `CHARTER_LOCAL_*` environment variables).
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        client_options: dict[str, Any] | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_window_ms: float | None = None,
        max_batch_size: int | None = None,
        max_batch_tokens: int | None = None,
    ) -> None:
        if not model.startswith(PREFIX):
            model = PREFIX + model
        super().__init__(model, api_base=api_base, client_options=client_options)
        self.model_id = model.removeprefix(PREFIX)
        if not self.model_id:
            raise BackendError("a local model string needs a path or hub id: local/<path-or-hub-id>")
        # Settings every request carries unless it sets its own.
        self.defaults: dict[str, Any] = {
            k: v
            for k, v in {
                "device": device,
                "dtype": dtype,
                "batch_window_ms": batch_window_ms,
                "max_batch_size": max_batch_size,
                "max_batch_tokens": max_batch_tokens,
            }.items()
            if v is not None
        }
        from charter_transformers.provider import register_provider

        # Normally done by the plugin's litellm_setup hook; repeated here (idempotent) so a backend
        # built in a process where litellm was imported before the plugin still works.
        register_provider(import_litellm())

    async def complete(self, request: CompletionRequest) -> Completion:
        """Generate with the in-process model; errors come back as the `BackendError` raised.

        The request goes straight to the provider's `respond` (what litellm's `acompletion` would
        call) and its answer through the same parsing as every litellm response: litellm's own
        per-call work (logging, a price-table lookup per response) costs more than a forward
        pass of a small model, and every request of a batch waits for it.
        """
        from charter_transformers.engine import arriving
        from charter_transformers.provider import respond

        params = {**self.defaults, **request.params}
        # Later score_options calls follow the device/dtype the requests asked for.
        self.defaults.update({k: params[k] for k in ("device", "dtype") if params.get(k) is not None})
        if request.n != 1:
            params["n"] = request.n
        text_mode = request.mode != "chat"
        messages = (
            [{"role": "user", "content": request.prompt}] if text_mode else list(request.messages or [])
        )
        started = time.perf_counter()
        with arriving():  # a batch forming now waits for this request (see engine._collect)
            response = await respond(self.model_id, messages, params, text_mode)
        return self._parse(request, response, (time.perf_counter() - started) * 1000)

    async def score_options(self, prompt: str, options: list[str]) -> list[float]:
        """log p(option | prompt) for each option (summed over the option's tokens), exactly.

        All options go through one batched forward pass (concurrent calls batch together). See
        `charter_transformers.tokens.option_rows` for how the prompt/option boundary is tokenized.
        """
        from charter_transformers.provider import engine_for
        from charter_transformers.tokens import option_rows

        if not options:
            return []

        def prepare() -> tuple[Any, list[tuple[list[int], int]]]:
            loaded, engine = engine_for(self.model_id, self.defaults)
            with loaded.tokenizer_lock:
                return engine, option_rows(loaded.tokenizer, prompt, options, loaded.eos_token_ids)

        from charter_transformers.engine import arriving

        try:
            with arriving():
                engine, rows = await asyncio.to_thread(prepare)
                return await engine.score(rows)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(
                f"local model {self.model_id!r} failed: {type(exc).__name__}: {exc}"[:500]
            ) from exc

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        # An in-process model has no per-token price.
        return 0.0


def make_backend(
    model: str, *, api_base: str | None = None, client_options: dict[str, Any] | None = None
) -> LocalBackend:
    """The factory registered for the `local/` prefix."""
    return LocalBackend(model, api_base=api_base, client_options=client_options)
