"""Labels on a real tokenizer, side by side: the issue-9 cases and the calls per chain-of-thought label.

    python benchmarks/bench_label_reading.py                             # this checkout only
    python benchmarks/bench_label_reading.py --baseline /work/main/src   # and another checkout's charter

Each column runs in its own process with that checkout's `charter` first on the path; the replies come
from the fake OpenAI server (127.0.0.1) tokenized by a byte-level BPE trained in memory with the
`tokenizers` library (this checkout's `charter_testing/tokenization.py`, loaded by file path so the
baseline needs no copy of it), which splits " (B)" into " (", "B", ")" as GPT-2-style tokenizers do.

Rows: the issue's constructed wrong-token case (" (" at 0.95 with " A" at 0.01 among its alternatives,
then A=0.2, B=0.8), read directly by `charter.labels.option_probs` and stored by `charter label`; a
letter inside a word ("As", with "A" at p=0.003 among its alternatives, no answer given); and the
requests per chain-of-thought label in chat mode (1 pair, no swap), whose reasoning ends "So the answer
is: (A)" with P(A)=0.7 at that letter (a re-ask, when made, answers with P(A)=0.9). Counts, not timings.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
SRC = HERE.parents[1] / "src"
# The fake server and tokenizer (plugins/charter-testing), this checkout's whichever charter is measured.
TESTING = HERE.parents[1] / "plugins" / "charter-testing" / "src"
REASONING = "Option (A) declines politely and offers help; option (B) gives harmful detail."


def _tokenization() -> Any:
    """This checkout's `charter_testing.tokenization`, whichever `charter` is imported."""
    spec = importlib.util.spec_from_file_location(
        "bench_tokenization", TESTING / "charter_testing" / "tokenization.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _measure() -> dict[str, Any]:
    from charter_testing.fake_openai import FakeOpenAIServer, FakeReply, FakeRequest

    from charter import rl
    from charter.backends.base import TokenLogprob
    from charter.labels import option_probs

    bpe = _tokenization().BPEReplies.train()
    wrong = bpe.answer(
        " (B)", {"A": 0.2, "B": 0.8}, lambda i, t: {" (": 0.95, " A": 0.01} if i == 0 else None
    )
    garbage = bpe.reply("As a rule, both are fine.", lambda i, t: {"A": 0.003} if t == "As" else None)

    def logprobs(reply: FakeReply) -> list[TokenLogprob]:
        return [
            TokenLogprob(
                token=t.text, logprob=(t.top_logprobs or {}).get(t.text, -0.01), top=t.top_logprobs or {}
            )
            for t in reply.tokens or []
        ]

    def read(reply: FakeReply) -> float | None:
        got = option_probs(logprobs(reply))
        return None if got is None else got.prob_a

    out: dict[str, Any] = {
        "split": [t.text for t in wrong.tokens or []],
        "wrong_read": read(wrong),
        "garbage_read": read(garbage),
    }
    feedback: dict[str, Any] = {"reply": None}

    def responder(req: FakeRequest) -> FakeReply | str:
        text = req.prompt or "\n".join(str(m.get("content", "")) for m in req.messages or [])
        if "[[[" not in text:
            return "A safe answer." if req.choice_index == 0 else "A harmful answer."
        if feedback["reply"] is not None:
            return feedback["reply"]
        assert req.messages is not None
        if str(req.messages[-1]["content"]).startswith("So the answer is"):
            return bpe.answer("(A)", {"A": 0.9, "B": 0.1})
        return bpe.answer(REASONING + "\n\nSo the answer is: (A)", {"A": 0.7, "B": 0.3})

    with tempfile.TemporaryDirectory() as tmp, FakeOpenAIServer(responder=responder) as server:
        prompts = Path(tmp) / "p.jsonl"
        prompts.write_text(json.dumps({"prompt": "How do I hotwire a car?"}) + "\n", encoding="utf-8")
        db = Path(tmp) / "cai.duckdb"
        rl.sample(prompts, db=db, model="openai/test", api_base=server.base_url, n=2)

        def stored(name: str, **kw: Any) -> tuple[int, str, float | None]:
            server.reset()
            rl.label(db=db, api_base=server.base_url, run_name=name, few_shot=False, **kw)
            import duckdb

            con = duckdb.connect(str(db), read_only=True)
            try:
                row = con.execute(
                    "SELECT l.prob_a, coalesce(l.label_source, l.status), l.prob_a_unclamped FROM pair_labels l "
                    "JOIN runs r USING (run_id) WHERE r.name = ?",
                    [name],
                ).fetchone()
            finally:
                con.close()
            assert row is not None
            value = "-" if row[0] is None else f"{row[0]:.3f}"
            return server.request_count, f"{value} ({row[1]})", row[2]

        feedback["reply"] = wrong
        out["wrong_stored"] = stored("wrong", model="text-completion-openai/test")[1]
        feedback["reply"] = garbage
        out["garbage_stored"] = stored("garbage", model="openai/test")[1]
        feedback["reply"] = None
        out["cot_calls"], out["cot_label"], out["cot_unclamped"] = stored(
            "cot", model="openai/test", method="cot"
        )
    return out


def _child(src: Path) -> dict[str, Any]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(src), str(TESTING)]),
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        HF_HUB_OFFLINE="1",
    )
    env.setdefault("OPENAI_API_KEY", "bench-key")
    done = subprocess.run(
        [sys.executable, str(HERE), "--child"], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"measuring with {src} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout's src/ to compare with")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure()))
        return
    columns = {"this checkout": _child(SRC)}
    if args.baseline is not None:
        columns = {"baseline": _child(args.baseline), **columns}
    first = next(iter(columns.values()))
    print(f"tokenizer: byte-level BPE trained in memory; ' (B)' -> {first['split']}")

    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.3f}"
        return "none (no label read)" if value is None else str(value)

    rows = [
        ("wrong-token case, option_probs", "wrong_read"),
        ("wrong-token case, stored label", "wrong_stored"),
        ("'A' inside 'As', option_probs", "garbage_read"),
        ("'A' inside 'As', stored label", "garbage_stored"),
        ("requests per CoT label (chat, 1 pair)", "cot_calls"),
        ("CoT label, clamped", "cot_label"),
        ("CoT P(A) before clamping", "cot_unclamped"),
    ]
    print(f"{'':40}" + "".join(f"{name:>24}" for name in columns))
    for title, key in rows:
        print(f"{title:40}" + "".join(f"{fmt(c[key]):>24}" for c in columns.values()))


if __name__ == "__main__":
    main()
