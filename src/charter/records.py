"""The typed records that flow through charter's steps and into the store."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, Field

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    """One chat message, the `{role, content}` shape OpenAI, TRL and Hugging Face share."""

    role: Role
    content: str


def messages_to_dicts(messages: list[Message]) -> list[dict[str, str]]:
    """Plain `{role, content}` dicts, the form backends and exports take."""
    return [{"role": m.role, "content": m.content} for m in messages]


class PromptRecord(BaseModel):
    """One input prompt: a conversation that ends with a user turn, and a stable id."""

    prompt_id: str
    messages: list[Message]
    source_line: int | None = None

    @property
    def prompt(self) -> str:
        """The last user turn: what the hf-cai schema calls `init_prompt`."""
        return next(m.content for m in reversed(self.messages) if m.role == "user")

    @staticmethod
    def stable_id(messages: list[Message]) -> str:
        """A content hash, so the same prompt gets the same id in every run and on every shard."""
        blob = json.dumps(messages_to_dicts(messages), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Critique(BaseModel):
    """A parsed critique. `needs_revision=False` is the typed "no change needed" outcome."""

    text: str
    needs_revision: bool = True


class RevisionRound(BaseModel):
    """One critique -> revision round of SL-CAI."""

    round: int
    principle: str
    critique_request: str
    critique: str
    revision_request: str
    revision: str
    needs_revision: bool = True
    critique_call_id: str | None = None
    revision_call_id: str | None = None


class RevisedExample(BaseModel):
    """A prompt after SL-CAI: the initial response and every round."""

    prompt: PromptRecord
    initial_response: str
    response_call_id: str | None = None
    rounds: list[RevisionRound] = Field(default_factory=list)

    @property
    def final_response(self) -> str:
        """The latest revision (or the initial response when there were no rounds)."""
        return self.rounds[-1].revision if self.rounds else self.initial_response


JsonDict = dict[str, Any]
