"""charter against a server we did not write: `transformers serve` on 127.0.0.1 with a tiny model.

`transformers serve DIR` preloads a local model directory (offline: nothing is fetched) and serves
/v1/chat/completions, /v1/completions, /v1/models and /health. What it does that our fake server
does not: it ignores `n` and `logprobs` (one choice, no log-probabilities), decodes greedily unless
the model's generation config samples, and reports errors as `{"detail": "..."}`.
One server for the module, started as a child process, polled until /health answers (generous
deadline: the machine may be busy), killed at the end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from charter_testkit import query, query_dicts, run_cli, write_prompts

READY_DEADLINE_S = 600.0  # importing torch and fastapi on a loaded 2-core machine is slow

if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
    pytest.skip(
        "transformers' serving extra is not installed (pip install 'transformers[serving]'): "
        "no real server to test against",
        allow_module_level=True,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


class RealServer:
    """A running `transformers serve` child process pinned to one local model directory."""

    def __init__(self, model_dir: Path, log: Path) -> None:
        self.model_dir = model_dir
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        exe = shutil.which("transformers", path=os.path.dirname(sys.executable)) or shutil.which(
            "transformers"
        )
        command = [exe] if exe else [sys.executable, "-m", "transformers.cli.transformers"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            [
                *command,
                "serve",
                str(model_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--device",
                "cpu",
                "--log-level",
                "warning",
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_ready(self, deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if _get(f"http://127.0.0.1:{self.port}/health") == 200:
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.5)
        raise RuntimeError(f"transformers serve not ready after {deadline_s:.0f} s:\n{self.tail()}")

    def tail(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log_file.close()

    @property
    def chat_model(self) -> str:
        return f"openai/{self.model_dir}"

    @property
    def completion_model(self) -> str:
        return f"text-completion-openai/{self.model_dir}"


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    from charter_transformers.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("transformers-serve")
    # A context that holds the paper's few-shot prompts: the tiny vocabulary splits them into ~6,500
    # tokens, and transformers serve (5.25 and later) refuses a prompt longer than the model's context.
    model_dir = build_tiny_model(root / "tiny-model", max_position_embeddings=16384)
    server = RealServer(model_dir, root / "server.log")
    try:
        server.wait_ready(READY_DEADLINE_S)
        yield server
    finally:
        server.stop()


# Short answers: a random model rarely emits end-of-sequence, and the server's default is 1024.
SHORT = ["--param", "max_tokens=8"]


def test_the_server_is_what_we_think(real_server: RealServer) -> None:
    """What the other tests rely on: the endpoints, the pinned model id, one choice whatever `n`."""
    with urllib.request.urlopen(f"{real_server.base_url}/models", timeout=30) as response:
        models = json.load(response)
    assert [m["id"] for m in models["data"]] == [str(real_server.model_dir)]
    body = json.dumps(
        {
            "model": str(real_server.model_dir),
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 4,
            "n": 2,
            "logprobs": True,
        }
    ).encode()
    request = urllib.request.Request(
        f"{real_server.base_url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        answer = json.load(response)
    assert len(answer["choices"]) == 1  # n is ignored
    assert not answer["choices"][0].get("logprobs")  # and so are log-probabilities


@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_revise_against_transformers_serve(real_server: RealServer, tmp_path: Path, mode: str) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["How do I stay safe online?", "Can you help me?"])
    db = tmp_path / "cai.duckdb"
    model = real_server.chat_model if mode == "chat" else real_server.completion_model
    args = ["revise", prompts, "--db", db, "--model", model, "--api-base", real_server.base_url]
    result = run_cli(*args, "--mode", mode, "--rounds", "1", *SHORT)
    assert result.code == 0, result.stderr + real_server.tail()
    rows = query_dicts(db, "SELECT * FROM calls")
    assert rows and all(r["error"] is None for r in rows if "error" in r)
    revisions = query(db, "SELECT count(*) FROM revisions")
    assert revisions[0][0] == 2
    # The same command again: everything is done, the server is not asked again.
    again = run_cli(*args, "--mode", mode, "--rounds", "1", *SHORT)
    assert again.code == 0 and "already done" in again.stderr


def test_sample_falls_back_to_separate_requests_and_says_the_server_is_greedy(
    real_server: RealServer, tmp_path: Path
) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["How do I stay safe online?", "Can you help me?"])
    db = tmp_path / "cai.duckdb"
    result = run_cli(
        "sample",
        "--db",
        db,
        "--model",
        real_server.chat_model,
        "--api-base",
        real_server.base_url,
        "--prompts",
        prompts,
        "--n",
        "2",
        *SHORT,
    )
    assert result.code == 0, result.stderr + real_server.tail()
    # n was ignored (one choice back), so the second response of each prompt is a separate request.
    samples = query_dicts(db, "SELECT prompt_id, sample_index, response FROM samples ORDER BY 1, 2")
    assert [s["sample_index"] for s in samples] == [0, 1, 0, 1]
    calls = query(db, "SELECT count(*) FROM calls")
    assert calls[0][0] >= 3
    # The server decodes greedily (the tiny model's generation config does not sample): identical
    # responses, no pairs, and the summary says why.
    assert samples[0]["response"] == samples[1]["response"]
    assert "identical responses" in result.stderr
    assert "greedily" in result.stderr


def test_label_without_logprobs_parses_the_answer_or_says_unparsed(
    real_server: RealServer, tmp_path: Path
) -> None:
    from charter_testing.fake_openai import FakeOpenAIServer

    # Pairs to label, sampled from our fake server (it samples; transformers serve is greedy).
    db = tmp_path / "cai.duckdb"
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["How do I stay safe online?", "Can you help me?"])
    counter = iter(range(1000))
    with FakeOpenAIServer() as fake:
        fake.responder = lambda req: f"Sample number {next(counter)}."
        sampled = run_cli(
            "sample", "--db", db, "--model", "openai/test", "--api-base", fake.base_url, "--prompts", prompts
        )
        assert sampled.code == 0, sampled.stderr
    result = run_cli(
        "label",
        "--db",
        db,
        "--model",
        real_server.chat_model,
        "--api-base",
        real_server.base_url,
        "--max-parse-retries",
        "0",
        *SHORT,
    )
    assert result.code in (0, 1), result.stderr + real_server.tail()
    labels = query_dicts(db, "SELECT * FROM pair_labels")
    assert len(labels) == 2
    for row in labels:
        # No log-probabilities came back: a label parsed from the text, or flagged as unparsed.
        assert row["status"] in ("ok", "unparsed"), row
        if row["status"] == "ok":
            assert row["label_source"] != "logprobs", row


def test_a_server_error_carries_the_servers_message(real_server: RealServer, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["hello"])
    result = run_cli(
        "revise",
        prompts,
        "--db",
        tmp_path / "cai.duckdb",
        "--model",
        "openai/some-other-model",
        "--api-base",
        real_server.base_url,
        "--max-retries",
        "0",
        *SHORT,
    )
    assert result.code != 0
    # transformers serve answers 400 {"detail": "Server is pinned to '<dir>'; requested '...'."}
    assert "pinned to" in result.stderr, result.stderr
