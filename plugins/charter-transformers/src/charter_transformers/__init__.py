"""charter-transformers: local Hugging Face models as a charter backend.

`LocalBackend` (model strings `local/<path-or-hub-id>`) generates through litellm's custom provider
`local` and scores multiple-choice options exactly (`score_options`); `build_tiny_model` writes a
tiny random model for tests and demos. Imports are lazy so `import charter_transformers` is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from charter_transformers.backend import LocalBackend
    from charter_transformers.tiny import build_tiny_model

__all__ = ["LocalBackend", "build_tiny_model"]


def __getattr__(name: str) -> Any:
    if name == "LocalBackend":
        from charter_transformers.backend import LocalBackend

        return LocalBackend
    if name == "build_tiny_model":
        from charter_transformers.tiny import build_tiny_model

        return build_tiny_model
    raise AttributeError(name)
