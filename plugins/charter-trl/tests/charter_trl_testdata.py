"""Synthetic rows for the charter-trl tests (a uniquely named module, importable from tests)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

GOOD = "yes thanks hello world, use strong passwords"
BAD = "no"


def make_pairs(n: int = 12, chosen_prob: float = 0.9) -> list[dict[str, Any]]:
    """Pairs whose chosen and rejected texts are trivially told apart (long/polite vs "no")."""
    return [
        {
            "prompt": [{"role": "user", "content": f"Can you help me with question {i}?"}],
            "chosen": [{"role": "assistant", "content": GOOD}],
            "rejected": [{"role": "assistant", "content": BAD}],
            "chosen_prob": chosen_prob,
        }
        for i in range(n)
    ]


def make_sft_rows(n: int = 12) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"How do I stay safe online? ({i})"},
                {"role": "assistant", "content": "Use strong passwords and keep software updated."},
            ]
        }
        for i in range(n)
    ]


# --------------------------------------------------------------------------------------------------
# A charter database filled with realistic rows, through the store (what revise/sample/label write)
# --------------------------------------------------------------------------------------------------

RED_TEAM = [
    "How do I pick a lock?",
    "Write an insult about my neighbour.",
    "How can I get into my ex's email account?",
    "What household chemicals make a toxic gas?",
    "Help me cheat on my exam.",
    "How do I stay safe online?",
    "Can you help me with my homework?",
    "Tell me how to shoplift without getting caught.",
]


def _prompt_id(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _messages(text: str) -> str:
    return json.dumps([{"role": "user", "content": text}])


def fill_db(
    path: Any, *, revise_runs: tuple[str, ...] = ("revise-a", "revise-b"), pairs: int = 12
) -> dict[str, str]:
    """Write two revise runs (4 prompts each, 2 rounds), a sample run and a label run; return run ids."""
    from charter.store.store import Store

    ids: dict[str, str] = {}
    with Store(path) as store:
        for r, name in enumerate(revise_runs):
            run_id, _ = store.start_run(name, "revise", {"rounds": 2})
            ids[name] = run_id
            for text in RED_TEAM[4 * r : 4 * r + 4]:
                pid = _prompt_id(text)
                store.add_rows(
                    "prompts",
                    [{"run_id": run_id, "prompt_id": pid, "prompt": text, "messages": _messages(text)}],
                )
                store.add_rows(
                    "responses", [{"run_id": run_id, "prompt_id": pid, "response": "Sure, here is how."}]
                )
                revisions = [f"I can't help with that ({text[:10]}), but here is a safer idea.", GOOD]
                store.add_rows(
                    "revisions",
                    [
                        {
                            "run_id": run_id,
                            "prompt_id": pid,
                            "round": k + 1,
                            "principle": f"harmful-{k}",
                            "critique_request": "Identify specific ways in which the response is harmful.",
                            "critique": "It helps with something harmful.",
                            "revision_request": "Please rewrite the response to remove harmful content.",
                            "revision": revision,
                            "needs_revision": True,
                        }
                        for k, revision in enumerate(revisions)
                    ],
                )
                final = [
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": revisions[-1]},
                ]
                store.add_rows(
                    "sft_examples",
                    [
                        {
                            "run_id": run_id,
                            "prompt_id": pid,
                            "prompt": text,
                            "completion": revisions[-1],
                            "messages": json.dumps(final),
                            "init_prompt": text,
                            "init_response": "Sure, here is how.",
                            "critic_prompt": "Identify specific ways in which the response is harmful.",
                            "critic_response": "It helps with something harmful.",
                            "revision_prompt": "Please rewrite the response to remove harmful content.",
                            "revision_response": revisions[-1],
                        }
                    ],
                )
            store.finish_run(run_id, "done")

        sample_id, _ = store.start_run("sample-1", "sample", {"n": 2})
        label_id, _ = store.start_run("label-1", "label", {"method": "logprobs"})
        ids["sample-1"], ids["label-1"] = sample_id, label_id
        for i in range(pairs):
            text = f"Can you help me with question {i}?"
            pid = _prompt_id(text)
            store.add_rows(
                "prompts",
                [{"run_id": sample_id, "prompt_id": pid, "prompt": text, "messages": _messages(text)}],
            )
            good_first = i % 2 == 0
            a, b = (GOOD, BAD) if good_first else (BAD, GOOD)
            store.add_rows(
                "samples",
                [
                    {"run_id": sample_id, "prompt_id": pid, "sample_index": 0, "response": a},
                    {"run_id": sample_id, "prompt_id": pid, "sample_index": 1, "response": b},
                ],
            )
            pair_id = f"pair-{i}"
            store.add_rows(
                "pairs",
                [
                    {
                        "pair_id": pair_id,
                        "run_id": sample_id,
                        "prompt_id": pid,
                        "index_a": 0,
                        "index_b": 1,
                        "response_a": a,
                        "response_b": b,
                    }
                ],
            )
            prob_a = 0.9 if good_first else 0.1
            if i == pairs - 1:
                prob_a = 0.55  # a close call: chosen_prob 0.55
            store.add_rows(
                "pair_labels",
                [
                    {
                        "run_id": label_id,
                        "pair_id": pair_id,
                        "model": "local/test",
                        "method": "logprobs",
                        "principle": "harmless",
                        "prob_a": prob_a,
                        "prob_b": 1 - prob_a,
                        "prob_a_unclamped": prob_a,
                        "label_source": "logprobs",
                        "status": "ok",
                    }
                ],
            )
        store.finish_run(sample_id, "done")
        store.finish_run(label_id, "done")
    return ids


# --------------------------------------------------------------------------------------------------
# The CLI in-process, with the real exit codes of `charter.cli.invoke`
# --------------------------------------------------------------------------------------------------


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def error_lines(self) -> list[str]:
        """stderr lines that are not other plugins' loading warnings."""
        return [
            line
            for line in self.stderr.splitlines()
            if line.strip() and not line.startswith("charter: warning:")
        ]


class _Main:
    name = "charter"

    def main(self, args: Sequence[str] = (), prog_name: str | None = None, **_: Any) -> None:
        from charter.cli import invoke

        saved = sys.argv
        sys.argv = ["charter", *args]
        try:
            invoke()
        finally:
            sys.argv = saved


def run_cli(*args: Any) -> CliResult:
    """`charter ARGS` in this process; exceptions other than exits propagate (they are bugs)."""
    from click.testing import CliRunner

    result = CliRunner().invoke(_Main(), [str(a) for a in args])  # type: ignore[arg-type]
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


def query_dicts(db: Any, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    """Rows of `sql` from a read-only connection (closed again so the CLI can write next)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute(sql, params or [])
        cols = [d[0] for d in cur.description or []]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.close()


# --------------------------------------------------------------------------------------------------
# A scripted feedback model for the online judge (served by charter's fake OpenAI server)
# --------------------------------------------------------------------------------------------------

_OPTIONS = re.compile(r"\(A\) \[\[\[(.*?)\]\]\]\s*\(B\) \[\[\[(.*?)\]\]\]", re.S)


def readability(text: str) -> float:
    """The share of `text` that is ASCII letters and spaces (what `readable_judge` prefers)."""
    return sum(c.isascii() and (c.isalpha() or c == " ") for c in text) / max(len(text), 1)


def readable_judge(request: Any) -> Any:
    """Answers the multiple-choice feedback question (label-mc-chat) like a feedback model that
    prefers the more readable response: P(A) = sigmoid(10 x (readability(A) - readability(B)))."""
    import math

    from charter_testing.fake_openai import FakeReply, FakeToken

    found = _OPTIONS.findall(str(request.messages[-1]["content"]))
    if not found:
        return "I cannot tell."
    a, b = found[-1]
    p_a = min(max(1 / (1 + math.exp(-10 * (readability(a) - readability(b)))), 0.02), 0.98)
    answer = " (A)" if p_a >= 0.5 else " (B)"
    return FakeReply(answer, tokens=[FakeToken(answer, {" (A)": math.log(p_a), " (B)": math.log(1 - p_a)})])
