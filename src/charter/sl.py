"""SL-CAI as one call: `revise(prompts, db=..., model=...)`, what `charter revise` runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from charter.backends.base import Backend
from charter.backends.batch import check_batch
from charter.backends.preflight import check_model
from charter.constitution import Constitution, load_constitution
from charter.inputs import PromptSource, iter_prompts, scan_prompts
from charter.records import RevisedExample, messages_to_dicts
from charter.runner import RunnerOptions
from charter.session import Job, RunSummary, run_chain
from charter.shard import Shard
from charter.steps.base import Chain
from charter.steps.sl import CritiqueRevise, Respond, new_example
from charter.store.store import Store
from charter.tasks.revise import REVISE, ReviseConfig

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


def revise(prompts: str | Path, **options: Any) -> RunSummary:
    """SL-CAI: answer each prompt, then `rounds` critique -> revision rounds, all stored in `db`.

    The options are the fields of `charter.tasks.ReviseConfig` (the options of `charter revise`,
    with their help text and checks there), plus `backend` (an object used instead of the one
    `model` picks), `progress` and `options` (RunnerOptions); `db` may be an open Store and
    `constitution` a Constitution.

    Re-running the same call resumes the same run: finished prompts are skipped and finished calls
    come from the request cache, so nothing is asked twice and no row is duplicated.

    `respond_few_shot` puts the few-shot critique/revision transcripts in front of the first answer
    in completion mode (by default it is the plain answer to the conversation, as in the paper);
    `always_revise` asks for a revision every round even when a chat critique's verdict is "no change".

    `shard="i/n"` (or `"auto"`: from the Slurm or Kubernetes environment, see `charter.shard`) keeps
    only the prompts whose id hashes to shard i of n (after `limit`); the run name does not include
    the shard, so `charter merge` joins the shards' files into one run.
    """
    return REVISE.call({"prompts": prompts, **options})  # type: ignore[no-any-return]


revise.__signature__ = REVISE.signature(("prompts",))  # type: ignore[attr-defined]


def run_revise(
    config: ReviseConfig,
    *,
    db: str | Path | Store | None = None,
    constitution: Constitution | str | Path | None = None,
    backend: Backend | None = None,
    progress: bool = False,
    options: RunnerOptions | None = None,
) -> RunSummary:
    """Run a validated `ReviseConfig` (`db` and `constitution` objects override its fields)."""
    shard_obj = Shard.parse(config.shard)
    owned = shard_obj.owns if shard_obj is not None else None
    source = PromptSource.open(config.prompts)
    scan = scan_prompts(source, config.limit, owned)  # validate everything before writing anything
    if backend is None:
        check_model(config.model, api_base=config.api_base, params=config.backend_params())
    check_batch(config.model, config.api_base, config.backend_params(), options or config.runner_options())
    const = constitution if constitution is not None else config.constitution
    constitution_obj = const if isinstance(const, Constitution) else load_constitution(const)
    chain: Chain[RevisedExample] = Respond(
        constitution_obj, few_shot=config.respond_few_shot
    ) >> CritiqueRevise(constitution_obj, rounds=config.rounds, always_revise=config.always_revise)
    recorded = {
        **config.recorded(),
        "prompts": str(config.prompts),
        "prompts_hash": scan.content_hash,
        "constitution": constitution_obj.name,
        "constitution_hash": constitution_obj.content_hash(),
        "rounds": config.rounds,
        "seed": config.seed,
        "mode": config.mode,
        "few_shot": config.few_shot,
        "limit": config.limit,
        "chain": chain.describe(),
    }
    if config.mode == "completion":
        # The first answer's prompt changed (no few-shot, a CritiqueRequest stop): a new run name, so
        # runs made the old way are not resumed into.
        recorded["respond_few_shot"] = config.respond_few_shot
    name = config.run_name or default_run_name("revise", recorded)
    if shard_obj is not None and shard_obj.count > 1:
        recorded["shard"] = str(shard_obj)
    limit = config.limit
    job: Job[RevisedExample] = Job(
        chain,
        command="revise",
        config=recorded,
        run_name=name,
        items=lambda done: (
            new_example(p)
            for p in iter_prompts(source, limit)
            if p.prompt_id not in done and (owned is None or owned(p.prompt_id))
        ),
        total=scan.count,
        done_table="sft_examples",
        rows=example_rows,
    )
    call = config.settings(
        mode=config.mode, few_shot=config.few_shot, backend=backend, progress=progress, options=options
    )
    return run_chain(job, call, db if db is not None else config.db)


def _public(params: dict[str, Any]) -> dict[str, Any]:
    from charter.backends.params import public_params

    return public_params(params)
