"""Backends: where model calls go. `get_backend(model)` resolves a model string via the plugins."""

from charter.backends.base import (
    Backend,
    BackendError,
    Completion,
    CompletionRequest,
    TokenLogprob,
)

__all__ = ["Backend", "BackendError", "Completion", "CompletionRequest", "TokenLogprob"]
