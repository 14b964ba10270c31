"""SL-CAI as one call: `revise(prompts, db=..., model=...)`, what `charter revise` runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from charter.backends.base import Backend
from charter.backends.params import redact
from charter.backends.preflight import check_model
from charter.constitution import Constitution, load_constitution
from charter.inputs import PromptSource, iter_prompts, scan_prompts
from charter.records import RevisedExample, messages_to_dicts
from charter.runner import RunnerOptions
from charter.session import RunSummary, run_chain
from charter.shard import Shard, resolve_shard
from charter.steps.base import Chain
from charter.steps.sl import CritiqueRevise, Respond, new_example
from charter.store.store import Store

# Config keys that say where or how a run's calls were made, not what it computes: they stay out
# of the default run name, so shards on machines with different endpoints are one run to merge.
_NOT_IN_RUN_NAME = frozenset({"api_base", "shard"})


def default_run_name(command: str, config: dict[str, Any]) -> str:
    """A name derived from everything that shapes the output, so the same command resumes its run."""
    identity = {k: v for k, v in config.items() if k not in _NOT_IN_RUN_NAME}
    blob = json.dumps(identity, sort_keys=True, default=str)
    return f"{command}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def example_rows(run_id: str, example: RevisedExample) -> dict[str, list[dict[str, Any]]]:
    """The rows one finished prompt adds: prompts, responses, revisions and sft_examples."""
    prompt = example.prompt
    conversation = messages_to_dicts(prompt.messages)
    # critic_* and revision_* come from one round: the one that produced the final response (the last
    # that asked for a revision; later "no change" rounds carry it over), as charter export reads them.
    revised = [r for r in example.rounds if r.needs_revision or r.revision_call_id is not None]
    rounds = revised or example.rounds
    source = rounds[-1] if rounds else None
    final = example.final_response
    return {
        "prompts": [
            {
                "run_id": run_id,
                "prompt_id": prompt.prompt_id,
                "prompt": prompt.prompt,
                "messages": json.dumps(conversation, ensure_ascii=False),
            }
        ],
        "responses": [
            {
                "run_id": run_id,
                "prompt_id": prompt.prompt_id,
                "response": example.initial_response,
                "call_id": example.response_call_id,
            }
        ],
        "revisions": [
            {"run_id": run_id, "prompt_id": prompt.prompt_id, **r.model_dump()} for r in example.rounds
        ],
        "sft_examples": [
            {
                "run_id": run_id,
                "prompt_id": prompt.prompt_id,
                "prompt": prompt.prompt,
                "completion": final,
                "messages": json.dumps(
                    [*conversation, {"role": "assistant", "content": final}], ensure_ascii=False
                ),
                "init_prompt": prompt.prompt,
                "init_response": example.initial_response,
                "critic_prompt": source.critique_request if source else None,
                "critic_response": source.critique if source else None,
                "revision_prompt": source.revision_request if source else None,
                "revision_response": final if source else None,
            }
        ],
    }


def revise(
    prompts: str | Path,
    *,
    db: str | Path | Store,
    model: str,
    constitution: str | Path | Constitution = "anthropic-sl",
    rounds: int = 4,
    seed: int = 0,
    mode: Literal["chat", "completion"] = "chat",
    few_shot: bool = True,
    respond_few_shot: bool = False,
    always_revise: bool = False,
    limit: int | None = None,
    run_name: str | None = None,
    api_base: str | list[str] | None = None,
    params: dict[str, Any] | None = None,
    options: RunnerOptions | None = None,
    prompts_dir: str | None = None,
    backend: Backend | None = None,
    progress: bool = False,
    shard: str | Shard | None = None,
) -> RunSummary:
    """SL-CAI: answer each prompt, then `rounds` critique -> revision rounds, all stored in `db`.

    Re-running the same call resumes the same run: finished prompts are skipped and finished calls
    come from the request cache, so nothing is asked twice and no row is duplicated.

    `respond_few_shot` puts the few-shot critique/revision transcripts in front of the first answer
    in completion mode (by default it is the plain answer to the conversation, as in the paper);
    `always_revise` asks for a revision every round even when a chat critique's verdict is "no change".

    `shard="i/n"` (or `"auto"`: from the Slurm or Kubernetes environment, see `charter.shard`) keeps
    only the prompts whose id hashes to shard i of n (after `limit`); the run name does not include
    the shard, so `charter merge` joins the shards' files into one run.
    """
    shard_obj = resolve_shard(shard)
    owned = shard_obj.owns if shard_obj is not None else None
    source = PromptSource.open(prompts)
    scan = scan_prompts(source, limit, owned)  # validate everything before writing anything
    if backend is None:
        check_model(model, api_base=api_base, params=params)
    constitution_obj = (
        constitution if isinstance(constitution, Constitution) else load_constitution(constitution)
    )
    chain: Chain[RevisedExample] = Respond(constitution_obj, few_shot=respond_few_shot) >> CritiqueRevise(
        constitution_obj, rounds=rounds, always_revise=always_revise
    )
    config = {
        "model": model,
        "api_base": redact(api_base),
        "params": _public(params or {}),
        "prompts": str(prompts),
        "prompts_hash": scan.content_hash,
        "constitution": constitution_obj.name,
        "constitution_hash": constitution_obj.content_hash(),
        "rounds": rounds,
        "seed": seed,
        "mode": mode,
        "few_shot": few_shot,
        "limit": limit,
        "chain": chain.describe(),
    }
    if mode == "completion":
        # The first answer's prompt changed (no few-shot, a CritiqueRequest stop): a new run name, so
        # runs made the old way are not resumed into.
        config["respond_few_shot"] = respond_few_shot
    name = run_name or default_run_name("revise", config)
    if shard_obj is not None and shard_obj.count > 1:
        config["shard"] = str(shard_obj)
    return run_chain(
        chain,
        command="revise",
        config=config,
        run_name=name,
        items=lambda done: (
            new_example(p)
            for p in iter_prompts(source, limit)
            if p.prompt_id not in done and (owned is None or owned(p.prompt_id))
        ),
        total=scan.count,
        done_table="sft_examples",
        rows=example_rows,
        db=db,
        model=model,
        api_base=api_base,
        params=params,
        options=options,
        mode=mode,
        seed=seed,
        few_shot=few_shot,
        prompts_dir=prompts_dir,
        backend=backend,
        progress=progress,
    )


def _public(params: dict[str, Any]) -> dict[str, Any]:
    from charter.backends.params import public_params

    return public_params(params)
