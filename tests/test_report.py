"""`charter report`: one self-contained HTML file, checked in a real headless Chromium."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from charter_testing.fake_openai import FakeOpenAIServer, FakeReply, FakeRequest, FakeToken
from charter_testkit import CHAT_MODEL, COMPLETION_MODEL, write_prompts

from charter import rl, sl
from charter.store.store import Store

# Model output that would be markup if it were not escaped.
HOSTILE = "<b>bold</b> [red]x[/red] <script>document.title='pwned'</script>"


def _responder(req: FakeRequest) -> FakeReply | str:
    text = req.prompt if req.prompt is not None else str(req.messages[-1]["content"])  # type: ignore[index]
    if text.rstrip().endswith("The answer is:"):
        p = 0.8 if req.choice_index == 0 else 0.3
        return FakeReply(" (A)", tokens=[FakeToken(" (A)", {" (A)": math.log(p), " (B)": math.log(1 - p)})])
    if "Verdict" in text or "CritiqueRequest" in text:
        return "The response could be kinder.\nVerdict: revise"
    if "rewritten response" in text:
        return f"A kinder answer, revised. {HOSTILE}"
    return f"Response {req.choice_index}: an answer. {HOSTILE}"


@pytest.fixture(scope="module")
def report_db(tmp_path_factory: pytest.TempPathFactory, fake_server: FakeOpenAIServer) -> Path:
    """revise -> sample -> label (swapped) through the real code, plus the rows a PPO run writes."""
    tmp = tmp_path_factory.mktemp("report")
    db = tmp / "cai.duckdb"
    prompts = write_prompts(tmp / "p.jsonl", ["How do I pick a lock?", "Insult my neighbour."])
    saved = fake_server.responder
    fake_server.responder = _responder
    try:
        base = fake_server.base_url
        assert sl.revise(prompts, db=db, model=CHAT_MODEL, api_base=base, rounds=2, run_name="sl").ok
        assert rl.sample(prompts, db=db, model=CHAT_MODEL, api_base=base, n=2, run_name="pairs").pairs == 2
        assert rl.label(db=db, model=COMPLETION_MODEL, api_base=base, swap=True, run_name="pm").labeled == 2
    finally:
        fake_server.responder = saved
    with Store(db) as store:  # what charter-trl's TrainingRecord writes for a PPO run
        store.add_rows(
            "training_runs",
            [
                {
                    "run_id": "ppo0001",
                    "kind": "ppo",
                    "base_model": "tiny",
                    "out_dir": str(tmp / "rl"),
                    "train_rows": 2,
                    "status": "done",
                    "metrics": json.dumps({"loss_history": [1.0, 0.7, 0.5], "mean_reward_before": 0.1}),
                }
            ],
        )
        store.add_rows(
            "policy_samples",
            [
                {
                    "training_run_id": "ppo0001",
                    "stage": s,
                    "prompt_id": f"p{i}",
                    "prompt": "q",
                    "response": "r",
                    "reward": r,
                }
                for s, rs in (("before", [0.1, 0.2]), ("after", [0.4, 0.6]))
                for i, r in enumerate(rs)
            ],
        )
    return db


def test_report_sections_and_pictures(report_db: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "report.html"
    result = cli("report", report_db, "--out", out)
    assert result.code == 0, result.stderr
    assert "sections" in result.stderr and str(out) in result.stderr
    page = out.read_text(encoding="utf-8")
    for anchor in ("overview", "principles", "revisions", "labels", "training", "rewards", "evals"):
        assert f'<section id="{anchor}">' in page
    for fig in (
        "latency",
        "principles-revise",
        "principles-label",
        "labels",
        "position",
        "training",
        "rewards",
    ):
        assert f'id="fig-{fig}"' in page, fig
    # Self-contained: no URL the browser would fetch.
    assert not re.search(r"""(src|href)=["'](https?:|//)""", page)
    # Stored text is text: escaped, never markup.
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<script>document.title" not in page
    # Revisions side by side with a diff against the version before.
    assert page.count('class="example"') == 2
    assert "<ins>" in page and "round 2:" in page


def test_report_renders_in_headless_chromium(report_db: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip(
            "headless Chromium is not installed (Debian package 'chromium'; make test installs it as root)"
        )
    from charter.report import build_report

    out = tmp_path / "report.html"
    result = build_report(report_db, out)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", out.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    # The page's load handler counts the pictures that decoded: every one of them did.
    images = re.search(r'data-images="(\d+)"', dom)
    ok = re.search(r'data-images-ok="(\d+)"', dom)
    assert images and ok, dom[:500]
    assert int(images.group(1)) == len(result.figures) >= 7
    assert int(ok.group(1)) == int(images.group(1))
    # What the browser built holds the escaped model output as text, not as elements.
    assert "<b>bold</b>" not in dom and "pwned" not in re.sub(r"&lt;script&gt;.*?&lt;/script&gt;", "", dom)
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,2400", out.as_uri()],
        capture_output=True,
        timeout=180,
        check=True,
    )
    assert shot.stat().st_size > 20_000  # a page with pictures, not a blank one


def test_report_bad_input(tmp_path: Path, report_db: Path, cli) -> None:  # type: ignore[no-untyped-def]
    missing = cli("report", tmp_path / "nope.duckdb", "--out", tmp_path / "r.html")
    assert missing.code == 2 and "does not exist" in missing.stderr
    same = cli("report", report_db, "--out", report_db)
    assert same.code == 2 and "is the database itself" in same.stderr
    unknown = cli("report", report_db, "--out", tmp_path / "r.html", "--run", "nope")
    assert unknown.code == 2 and "--run 'nope'" in unknown.stderr
    empty = tmp_path / "empty.duckdb"
    Store(empty).close()
    nothing = cli("report", empty, "--out", tmp_path / "r.html")
    assert nothing.code == 2 and "no runs yet" in nothing.stderr
    assert not (tmp_path / "r.html").exists()


def test_report_one_run_only(report_db: Path, tmp_path: Path) -> None:
    from charter.report import build_report

    out = tmp_path / "sl.html"
    build_report(report_db, out, runs=["sl"])
    page = out.read_text(encoding="utf-8")
    assert "no labeled pairs in this database" in page  # the label run is not part of this report
    assert page.count('class="example"') == 2
