"""The online constitutional judge: completions to one prompt compared by a feedback model.

For each group of completions to the same prompt (GRPO's and RLOO's `num_generations`), every pair
is asked the paper's multiple-choice (or chain-of-thought) question under a principle drawn per
comparison, through charter's own labeler (`charter.rl.label`: runner, request cache, retries).
The soft label P(this completion wins) is averaged over its comparisons and becomes its reward.

Everything lands in the database like an offline `charter sample` + `charter label`: the groups
as `prompts` and `pairs` rows of the run `<run_name>-rollouts`, the answers as `calls`,
`pair_labels` and `feedback_queries` rows of the label run `<run_name>`. A pair is named by its
content, so a repeated comparison (a rerun of the same command, the same two texts again) is
answered from what is stored instead of asking again.

Rewards are relative: with every comparison readable, a group's rewards average exactly 0.5. A
completion none of whose comparisons could be read (the pair is stored `status='unparsed'`) gets
0.5 too, the neutral value (no advantage either way), and is counted in `stats["unreadable"]`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ConstitutionalJudge", "JudgeFailed", "JudgeSettings", "as_settings"]

METHODS = ("logprobs", "cot")


class JudgeFailed(RuntimeError):
    """Some comparisons could not be made (the calls failed after retries); what finished is stored."""


@dataclass
class JudgeSettings:
    """Which feedback model judges, and how (the options of `charter label` that apply online).

    `run_name` names the label run (default `judge-<hash of these settings>`), so the same
    settings on the same database reuse one run and its stored answers.
    """

    model: str
    api_base: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    constitution: str = "anthropic-rl"
    method: str = "logprobs"
    swap: bool = False
    ensemble: int = 1
    few_shot: bool = True
    mode: str | None = None
    seed: int = 0
    run_name: str | None = None
    concurrency: int = 16
    max_retries: int = 6

    def check(self) -> None:
        """Raise a one-line ValueError for settings that cannot work (before anything is written)."""
        if self.method not in METHODS:
            raise ValueError(f"--judge-method {self.method!r}: expected logprobs or cot")
        if self.ensemble < 1:
            raise ValueError(f"--judge-ensemble {self.ensemble}: expected at least 1")
        if self.concurrency < 1:
            raise ValueError(f"--concurrency {self.concurrency}: expected at least 1")
        if self.mode is not None and self.mode not in ("chat", "completion"):
            raise ValueError(f"--judge-mode {self.mode!r}: expected chat or completion")
        from charter.backends.preflight import check_model
        from charter.constitution import load_constitution

        check_model(self.model, api_base=self.api_base, params=self.params)
        try:
            load_constitution(self.constitution)
        except Exception as exc:  # a missing file or a broken YAML: the constitution's own message
            raise ValueError(f"--constitution {self.constitution}: {exc}") from None

    def public(self) -> dict[str, Any]:
        """The settings without secrets (what the training run records)."""
        from charter.backends.params import public_params, redact

        return {**asdict(self), "api_base": redact(self.api_base), "params": public_params(self.params)}

    def label_run(self) -> str:
        """The label run's name (the rollouts' run is this plus `-rollouts`)."""
        if self.run_name:
            return self.run_name
        blob = json.dumps({k: v for k, v in self.public().items() if k != "run_name"}, sort_keys=True)
        return f"judge-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def as_settings(value: JudgeSettings | Mapping[str, Any]) -> JudgeSettings:
    """`value` as JudgeSettings (the Python API also takes a dict of its fields)."""
    if isinstance(value, JudgeSettings):
        return value
    try:
        return JudgeSettings(**dict(value))
    except TypeError as exc:
        raise ValueError(f"judge settings: {exc}") from None


def _key(messages: Sequence[Mapping[str, Any]]) -> str:
    blob = json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _pair_id(run_id: str, prompt_id: str, a: str, b: str) -> str:
    blob = json.dumps([run_id, prompt_id, a, b], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ConstitutionalJudge:
    """Scores completions by comparing those to the same prompt (see the module docstring)."""

    relative = True  # rewards mean something only within a group of completions to one prompt

    def __init__(self, db: str | os.PathLike[str], settings: JudgeSettings) -> None:
        self.db = Path(db)
        self.settings = settings
        self.label_run = settings.label_run()
        self.rollout_run = f"{self.label_run}-rollouts"
        self.stats = {"comparisons": 0, "ties": 0, "unreadable": 0, "calls": 0, "cache_hits": 0}

    def describe(self) -> dict[str, Any]:
        """What the training run records about its reward."""
        return {"judge": self.settings.public(), "label_run": self.label_run, "rollout_run": self.rollout_run}

    def rewards(
        self, prompts: Sequence[Sequence[Mapping[str, Any]]], responses: Sequence[str]
    ) -> list[float]:
        """One reward per (prompt, response): its mean P(win) against the other responses to that prompt.

        Raises ValueError when a prompt has a single response (nothing to compare it with) and
        `JudgeFailed` when comparisons could not be made.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        groups: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(_key(prompt), []).append(i)
        for members in groups.values():
            if len(members) < 2:
                raise ValueError(
                    f"item {members[0]}: the judge compares responses to the same prompt, and this prompt "
                    "has only one response in the batch"
                )
        comparisons: list[tuple[int, int, str]] = []  # (i, j, pair_id): P(response_a) is P(i wins)
        prompt_rows: dict[str, dict[str, Any]] = {}
        pair_rows: dict[str, dict[str, Any]] = {}
        ties: list[tuple[int, int]] = []
        labels: dict[str, float | None] = {}
        from charter.store.store import Store

        from .data import _retry

        def write_groups() -> None:
            # Retried whole when the file is busy: start from nothing each time.
            for collected in (comparisons, prompt_rows, pair_rows, ties, labels):
                collected.clear()
            with Store(self.db) as store:
                run_id, _ = store.start_run(
                    self.rollout_run, "judge-rollouts", {"judge_run": self.label_run}, done_table="pairs"
                )
                for prompt_id, members in groups.items():
                    messages = [
                        {"role": str(m["role"]), "content": str(m["content"])} for m in prompts[members[0]]
                    ]
                    prompt_rows[prompt_id] = {
                        "run_id": run_id,
                        "prompt_id": prompt_id,
                        "prompt": next((m["content"] for m in reversed(messages) if m["role"] == "user"), ""),
                        "messages": json.dumps(messages, ensure_ascii=False),
                    }
                    for x, i in enumerate(members):
                        for y, j in enumerate(members[x + 1 :], start=x + 1):
                            if responses[i] == responses[j]:
                                ties.append((i, j))  # the same text: a tie, no question to ask
                                continue
                            pid = _pair_id(run_id, prompt_id, responses[i], responses[j])
                            comparisons.append((i, j, pid))
                            pair_rows[pid] = {
                                "pair_id": pid,
                                "run_id": run_id,
                                "prompt_id": prompt_id,
                                "index_a": x,
                                "index_b": y,
                                "response_a": responses[i],
                                "response_b": responses[j],
                                "source_run_id": None,
                            }
                store.add_rows("prompts", prompt_rows.values())
                store.add_rows("pairs", pair_rows.values())
                store.flush()
                store.finish_run(run_id, "done")
                if comparisons:
                    self._label(store)
                    found = store.query(
                        "SELECT pair_id, prob_a FROM pair_labels WHERE run_id = ? AND pair_id IN "
                        f"({', '.join('?' for _ in pair_rows)})",
                        [store.run_id_for(self.label_run), *pair_rows],
                    )
                    labels.update({str(pid): None if p is None else float(p) for pid, p in found})

        _retry(write_groups)
        missing = [pid for _, _, pid in comparisons if pid not in labels]
        if missing:
            raise JudgeFailed(
                f"the judge could not compare {len(missing)} of {len(comparisons)} pairs (their calls failed "
                f"after retries; see `calls` in {self.db}); run the same command again to resume"
            )
        wins: list[list[float]] = [[] for _ in responses]
        for i, j in ties:
            wins[i].append(0.5)
            wins[j].append(0.5)
        for i, j, pid in comparisons:
            p = labels[pid]
            if p is not None:
                wins[i].append(p)
                wins[j].append(1.0 - p)
        out: list[float] = []
        for w in wins:
            if w:
                out.append(sum(w) / len(w))
            else:
                self.stats["unreadable"] += 1
                out.append(0.5)
        self.stats["comparisons"] += len(comparisons)
        self.stats["ties"] += len(ties)
        return out

    def _label(self, store: Any) -> None:
        """Label the rollouts run's new pairs (`charter label --from-run <run>-rollouts`, resumed)."""
        from charter.rl import label
        from charter.runner import RunnerOptions

        s = self.settings
        summary = label(
            db=store,
            model=s.model,
            constitution=s.constitution,
            method=s.method,  # type: ignore[arg-type]
            ensemble=s.ensemble,
            swap=s.swap,
            few_shot=s.few_shot,
            mode=s.mode,  # type: ignore[arg-type]
            from_run=self.rollout_run,
            seed=s.seed,
            run_name=self.label_run,
            api_base=s.api_base,
            params=dict(s.params),
            options=RunnerOptions(concurrency=s.concurrency, max_retries=s.max_retries),
            max_flagged=1.0,  # an unreadable pair is neutral here, not a failed run
        )
        self.stats["calls"] += summary.calls
        self.stats["cache_hits"] += summary.cache_hits
