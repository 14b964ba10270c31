"""SL-CAI steps: `Respond` (the initial answer) and `CritiqueRevise` (N critique -> revision rounds)."""

from __future__ import annotations

from typing import Any

from charter.constitution import Constitution, load_constitution
from charter.prompts import RenderedPrompt
from charter.records import (
    Critique,
    Message,
    PromptRecord,
    RevisedExample,
    RevisionRound,
    messages_to_dicts,
)
from charter.steps.base import Step, StepContext

_HUMAN_STOP = "\n\nHuman:"
# Legacy completion endpoints (OpenAI's, vLLM's) stop after 16 tokens unless told otherwise, which
# would cut every answer, critique and revision short; chat endpoints have no such default.
COMPLETION_MAX_TOKENS = 512


def _generation(ctx: StepContext, rendered: RenderedPrompt) -> dict[str, Any]:
    """Request parameters for free-text generation: a max_tokens in completion mode unless the user set one."""
    if rendered.mode != "completion" or {"max_tokens", "max_completion_tokens"} & ctx.params.keys():
        return {}
    return {"max_tokens": COMPLETION_MAX_TOKENS}


def completion_few_shot(constitution: Constitution | None, enabled: bool) -> str:
    """The paper's few-shot transcripts as one prefix (each one's trailing stop text removed)."""
    if not enabled or constitution is None:
        return ""
    parts = [
        t[: -len(_HUMAN_STOP)] if t.endswith(_HUMAN_STOP) else t for t in constitution.few_shot.completion
    ]
    return "".join(parts)


def chat_few_shot(constitution: Constitution | None, enabled: bool) -> list[list[dict[str, str]]] | None:
    """The constitution's few-shot chats (hf-* constitutions carry them), or None."""
    if not enabled or constitution is None or not constitution.few_shot.chat:
        return None
    return [messages_to_dicts(chat) for chat in constitution.few_shot.chat]


def respond_prompt(
    ctx: StepContext,
    prompt: PromptRecord,
    system: str | None,
    constitution: Constitution | None,
    *,
    few_shot: bool = False,
) -> RenderedPrompt:
    """The policy's question for `prompt`: `respond-chat` (with `system`) or `respond-completion`.

    The first answer is the assistant's plain answer to the conversation, as in the paper. Only with
    `few_shot` (and `ctx.few_shot`) does `respond-completion` put the constitution's critique/revision
    transcripts in front, which invites a base model to continue with a critique of its own.
    """
    conversation = messages_to_dicts(prompt.messages)
    if ctx.mode == "chat":
        return ctx.prompt("respond-chat").render(conversation=conversation, system=system)
    return ctx.prompt("respond-completion").render(
        conversation=conversation, few_shot=completion_few_shot(constitution, few_shot and ctx.few_shot)
    )


class Respond(Step[RevisedExample]):
    """The model's initial answer to the prompt (`respond-chat` / `respond-completion`).

    `few_shot=True` puts the constitution's few-shot critique/revision transcripts in front of the
    completion-mode prompt (charter's behaviour before 0.2; `charter revise --respond-few-shot`).
    """

    name = "respond"

    def __init__(
        self,
        constitution: Constitution | str | None = None,
        system: str | None = None,
        *,
        few_shot: bool = False,
    ) -> None:
        # The completion format's few-shot transcripts come from the SL constitution.
        self.constitution = load_constitution(constitution) if isinstance(constitution, str) else constitution
        self.system = system
        self.few_shot = few_shot

    async def run(self, state: RevisedExample, ctx: StepContext) -> RevisedExample:
        rendered = respond_prompt(ctx, state.prompt, self.system, self.constitution, few_shot=self.few_shot)
        result = await ctx.complete(self.name, rendered, **_generation(ctx, rendered))
        state.initial_response = result.completion.text.strip()
        state.response_call_id = result.call_id
        return state

    def templates(self, mode: str) -> list[str]:
        """The prompt templates this step renders in `mode` (loaded up front by `run_chain`)."""
        return [f"respond-{mode}"]

    def describe(self) -> dict[str, Any]:
        # Keys only when set, so the default run names of earlier chat runs (whose requests are
        # unchanged) stay the same and those runs still resume.
        return {"step": self.name, "system": self.system, **({"few_shot": True} if self.few_shot else {})}


class CritiqueRevise(Step[RevisedExample]):
    """`rounds` rounds of critique -> revision, one principle drawn per round (seeded, with replacement).

    Each round critiques the latest revision, continuing the transcript as the paper does. A
    critique whose verdict is "no change" (chat mode asks for one) is recorded with
    `needs_revision=False` and the response carried over unchanged, without a revision call, unless
    `always_revise` is set: then every round asks for a revision, as the paper does.
    """

    name = "critique_revise"

    def __init__(
        self,
        constitution: Constitution | str = "anthropic-sl",
        rounds: int = 4,
        *,
        always_revise: bool = False,
    ) -> None:
        self.constitution = load_constitution(constitution) if isinstance(constitution, str) else constitution
        if not self.constitution.critique_principles:
            raise ValueError(f"constitution {self.constitution.name} has no critique/revision principles")
        if rounds < 0:
            raise ValueError("rounds must be >= 0")
        self.rounds = rounds
        self.always_revise = always_revise

    async def run(self, state: RevisedExample, ctx: StepContext) -> RevisedExample:
        rng = ctx.rng(state.prompt.prompt_id, "principles")
        principles = self.constitution.sample(rng, k=self.rounds, kind="critique")
        conversation = messages_to_dicts(state.prompt.messages)
        few_shot: Any = (
            chat_few_shot(self.constitution, ctx.few_shot)
            if ctx.mode == "chat"
            else completion_few_shot(self.constitution, ctx.few_shot)
        )
        critique_prompt = ctx.prompt(f"critique-{ctx.mode}")
        revise_prompt = ctx.prompt(f"revise-{ctx.mode}")
        state.rounds = []
        for number, principle in enumerate(principles, start=1):
            assert principle.critique is not None and principle.revision is not None
            base = {
                "conversation": conversation,
                "response": state.initial_response,
                "rounds": [_round_inputs(r) for r in state.rounds],
                "critique_request": principle.critique,
                "few_shot": few_shot,
            }
            rendered = critique_prompt.render(**base)
            critique_call = await ctx.complete("critique", rendered, **_generation(ctx, rendered))
            critique = critique_prompt.parse(critique_call.completion.text)
            assert isinstance(critique, Critique)
            latest = state.final_response
            revision_call_id: str | None = None
            if critique.needs_revision or self.always_revise:
                rendered = revise_prompt.render(
                    **base, critique=critique.text, revision_request=principle.revision
                )
                revision_call = await ctx.complete("revision", rendered, **_generation(ctx, rendered))
                revision = revision_call.completion.text.strip() or latest
                revision_call_id = revision_call.call_id
            else:
                revision = latest
            state.rounds.append(
                RevisionRound(
                    round=number,
                    principle=principle.name,
                    critique_request=principle.critique,
                    critique=critique.text,
                    revision_request=principle.revision,
                    revision=revision,
                    needs_revision=critique.needs_revision,
                    critique_call_id=critique_call.call_id,
                    revision_call_id=revision_call_id,
                )
            )
        return state

    def templates(self, mode: str) -> list[str]:
        """The prompt templates this step renders in `mode` (loaded up front by `run_chain`)."""
        return [f"critique-{mode}", f"revise-{mode}"]

    def describe(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "rounds": self.rounds,
            **({"always_revise": True} if self.always_revise else {}),
            "constitution": self.constitution.name,
            "constitution_hash": self.constitution.content_hash(),
        }


def _round_inputs(r: RevisionRound) -> dict[str, str]:
    return {
        "critique_request": r.critique_request,
        "critique": r.critique,
        "revision_request": r.revision_request,
        "revision": r.revision,
    }


def new_example(prompt: Any) -> RevisedExample:
    """The empty SL-CAI state for one prompt."""
    return RevisedExample(prompt=prompt, initial_response="")


__all__ = ["CritiqueRevise", "Message", "Respond", "new_example"]
