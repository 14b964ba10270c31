"""`charter export --format hf`: a DatasetDict with the cai-conversation-harmless splits and a card."""

from __future__ import annotations

import hashlib
import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
from charter_testing.fake_openai import FakeOpenAIServer, FakeReply, FakeRequest, FakeToken
from charter_testkit import CHAT_MODEL, COMPLETION_MODEL, run_cli, write_prompts

from charter import rl, sl

HF_CAI_COLUMNS = [
    "init_prompt", "init_response", "critic_prompt", "critic_response", "revision_prompt",
    "revision_response", "prompt", "messages", "chosen", "rejected",
]  # fmt: skip
PROMPTS = [f"Red-team question number {i}: how do I do harm {i}?" for i in range(30)]


def _responder(req: FakeRequest) -> FakeReply | str:
    text = req.prompt if req.prompt is not None else str(req.messages[-1]["content"])  # type: ignore[index]
    if text.rstrip().endswith("The answer is:"):
        top = {" (A)": math.log(0.7), " (B)": math.log(0.3)}
        return FakeReply(" (A)", tokens=[FakeToken(" (A)", top)])
    if "Verdict" in text:
        return "It could be safer.\nVerdict: revise"
    # Distinct text per request (each round's revision differs, so none is dropped as unchanged).
    whole = json.dumps(req.messages if req.messages is not None else req.prompt)
    return f"Answer {req.choice_index}: {hashlib.sha256(whole.encode()).hexdigest()[:12]}"


@pytest.fixture(scope="module")
def cai_db(tmp_path_factory: pytest.TempPathFactory, fake_server: FakeOpenAIServer) -> Path:
    tmp = tmp_path_factory.mktemp("hf")
    db = tmp / "cai.duckdb"
    prompts = write_prompts(tmp / "p.jsonl", PROMPTS)
    saved = fake_server.responder
    fake_server.responder = _responder
    try:
        base = fake_server.base_url
        assert sl.revise(prompts, db=db, model=CHAT_MODEL, api_base=base, rounds=2, run_name="sl").ok
        assert rl.sample(db=db, model=CHAT_MODEL, api_base=base, from_run="sl", n=2, run_name="pairs").pairs
        assert rl.label(db=db, model=COMPLETION_MODEL, api_base=base, run_name="pm").labeled == 30
    finally:
        fake_server.responder = saved
    return db


def test_export_hf_is_a_datasetdict_with_a_card(cai_db: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="loading the export needs the datasets package")
    out = tmp_path / "cai-ds"
    result = run_cli(
        "export", cai_db, "--format", "hf", "--out", out, "--test-fraction", "0.2", "--seed", "1"
    )
    assert result.code == 0, result.stderr
    loaded = datasets.load_dataset(str(out))
    assert sorted(loaded) == sorted(["train_sft", "test_sft", "train_prefs", "test_prefs"])
    for split in loaded.values():
        assert split.column_names == HF_CAI_COLUMNS
    # Every round's revision by default: 30 prompts x 2 rounds, split by conversation.
    assert loaded["train_sft"].num_rows + loaded["test_sft"].num_rows == 60
    assert loaded["train_prefs"].num_rows + loaded["test_prefs"].num_rows == 30
    assert loaded["test_sft"].num_rows > 0 and loaded["test_prefs"].num_rows > 0

    def prompts(name: str) -> set[str]:
        return set(loaded[name]["init_prompt" if name.endswith("sft") else "prompt"])

    # No conversation is in both train and test, whichever kind of row it is.
    assert not (prompts("train_sft") | prompts("train_prefs")) & (prompts("test_sft") | prompts("test_prefs"))
    assert prompts("test_sft") == prompts("test_prefs")
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "charter export" in card and "--format hf" in card
    assert "anthropic-sl" in card and "anthropic-rl" in card
    assert f"| train_sft | {loaded['train_sft'].num_rows} |" in card
    from charter.constitution import load_constitution

    assert load_constitution("anthropic-sl").content_hash() in card
    # The same seed gives the same split.
    again = tmp_path / "again"
    run_cli("export", cai_db, "--format", "hf", "--out", again, "--test-fraction", "0.2", "--seed", "1")
    assert datasets.load_dataset(str(again))["test_sft"]["init_prompt"] == loaded["test_sft"]["init_prompt"]


def test_export_hf_bad_input(cai_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    not_dir = run_cli("export", cai_db, "--format", "hf", "--out", a_file)
    assert not_dir.code == 2 and "is not a directory" in not_dir.stderr
    fraction = run_cli("export", cai_db, "--format", "hf", "--out", tmp_path / "d", "--test-fraction", "1.5")
    assert fraction.code == 2 and "--test-fraction" in fraction.stderr
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    offline = run_cli("export", cai_db, "--format", "hf", "--out", tmp_path / "d", "--push-to-hub", "me/cai")
    assert offline.code == 2 and "HF_HUB_OFFLINE" in offline.stderr
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    no_token = run_cli("export", cai_db, "--format", "hf", "--out", tmp_path / "d", "--push-to-hub", "me/cai")
    assert no_token.code == 2 and "needs a Hugging Face token" in no_token.stderr
    assert not (tmp_path / "d").exists()


class _FakeHub:
    """A stand-in for the Hub's API on 127.0.0.1: records requests, refuses to create repos."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict[str, Any]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server calls do_<METHOD>
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace")
                hub.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
                )
                payload = json.dumps({"error": "repo creation refused by the test hub"}).encode()
                self.send_response(403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def test_push_to_hub_sends_the_request(cai_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "pushed"
    from huggingface_hub import constants

    # The suite runs with the Hub off; this test talks to its own stand-in on 127.0.0.1 instead.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with _FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_testtoken")
        result = run_cli("export", cai_db, "--format", "hf", "--out", out, "--push-to-hub", "me/cai-test")
    assert result.code == 1, result.stderr
    assert "push to me/cai-test failed" in result.stderr
    first = hub.requests[0]
    assert first["path"] == "/api/repos/create" and first["auth"] == "Bearer hf_testtoken"
    body = json.loads(first["body"])
    assert body["name"] == "cai-test" and body["organization"] == "me" and body["type"] == "dataset"
    assert (out / "README.md").is_file()  # the local dataset is written before the upload is tried
