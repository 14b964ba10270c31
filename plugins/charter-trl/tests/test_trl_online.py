"""`charter train grpo|rloo`, the online constitutional judge and `charter serve-reward`.

The judge runs against charter's fake OpenAI server answering as a feedback model that prefers the
more readable response (`readable_judge`); the trainers are TRL's own GRPOTrainer and RLOOTrainer
on the tiny model (its tokenizer trained in memory), a step or two each.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from charter_testing.fake_openai import FakeOpenAIServer
from charter_trl_testdata import fill_db, query_dicts, readability, readable_judge, run_cli

from charter.store.store import Store

HELLO = [{"role": "user", "content": "How do I stay safe online?"}]
OTHER = [{"role": "user", "content": "Write an insult about my neighbour."}]


@pytest.fixture
def judge_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(responder=readable_judge) as server:
        yield server


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "cai.duckdb"
    fill_db(path)
    return path


def _settings(server: FakeOpenAIServer, **kwargs: Any) -> Any:
    from charter_trl.judge import JudgeSettings

    return JudgeSettings(model="openai/judge", api_base=server.base_url, params={"api_key": "x"}, **kwargs)


# --------------------------------------------------------------------------------------------------
# The judge
# --------------------------------------------------------------------------------------------------


def test_judge_rewards_are_soft_labels_stored_like_charter_label(
    judge_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    from charter_trl.judge import ConstitutionalJudge

    db = tmp_path / "judge.duckdb"
    judge = ConstitutionalJudge(db, _settings(judge_server))
    responses = ["Use strong passwords.", "Us3 $tr0ng p4ss!!", "#@!? ..", "Be kind.", "K1nd?!"]
    prompts = [HELLO, HELLO, HELLO, OTHER, OTHER]
    rewards = judge.rewards(prompts, responses)

    # Each completion's reward is its mean P(win) in its group, so a group's rewards average 0.5,
    # and the more readable completion wins.
    assert sum(rewards[:3]) / 3 == pytest.approx(0.5) and sum(rewards[3:]) / 2 == pytest.approx(0.5)
    assert rewards[0] > rewards[1] > rewards[2] and rewards[3] > rewards[4]
    assert judge_server.request_count == 4  # 3 pairs + 1 pair, one question each
    assert judge.stats["comparisons"] == 4 and judge.stats["unreadable"] == 0

    runs = {r["name"]: r for r in query_dicts(db, "SELECT run_id, name, command, status FROM runs")}
    label_run, rollouts = runs[judge.label_run], runs[judge.rollout_run]
    assert label_run["command"] == "label" and rollouts["command"] == "judge-rollouts"
    labels = query_dicts(
        db,
        "SELECT pl.prob_a, pl.principle, pl.label_source, p.response_a, p.response_b FROM pair_labels pl "
        "JOIN pairs p USING (pair_id) WHERE pl.run_id = ?",
        [label_run["run_id"]],
    )
    assert len(labels) == 4 and all(row["label_source"] == "logprobs" and row["principle"] for row in labels)
    for row in labels:  # the stored soft label is the scripted feedback model's probability
        assert (row["prob_a"] > 0.5) == (readability(row["response_a"]) > readability(row["response_b"]))
    calls = query_dicts(db, "SELECT run_id, step FROM calls")
    assert len(calls) == 4 and {c["run_id"] for c in calls} == {label_run["run_id"]}
    queries = query_dicts(
        db, "SELECT count(*) AS n FROM feedback_queries WHERE run_id = ?", [label_run["run_id"]]
    )
    assert queries[0]["n"] == 4

    # The same comparisons again (a rerun of the same command) ask nothing new.
    again = ConstitutionalJudge(db, _settings(judge_server))
    assert again.rewards(prompts, responses) == pytest.approx(rewards)
    assert judge_server.request_count == 4


def test_judge_ties_unreadable_answers_and_single_responses(tmp_path: Path) -> None:
    from charter_trl.judge import ConstitutionalJudge

    with FakeOpenAIServer(responder=lambda request: "I would rather not say.", logprobs=False) as server:
        judge = ConstitutionalJudge(tmp_path / "judge.duckdb", _settings(server))
        # The same text twice is a tie without a question; an answer naming no option is neutral.
        assert judge.rewards([HELLO, HELLO], ["same", "same"]) == [0.5, 0.5]
        assert server.request_count == 0
        assert judge.rewards([HELLO, HELLO], ["one", "two"]) == [0.5, 0.5]
        assert judge.stats["unreadable"] == 2 and judge.stats["ties"] == 1
        assert server.request_count == 3  # asked, then re-asked twice (--max-parse-retries 2)
        statuses = query_dicts(tmp_path / "judge.duckdb", "SELECT status FROM pair_labels")
        assert statuses == [{"status": "unparsed"}]
        with pytest.raises(ValueError, match="only one response"):
            judge.rewards([HELLO, OTHER], ["a", "b"])


def test_judge_call_failures_raise_and_the_rerun_resumes(
    judge_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    from charter_trl.judge import ConstitutionalJudge, JudgeFailed

    db = tmp_path / "judge.duckdb"
    judge = ConstitutionalJudge(db, _settings(judge_server, max_retries=0))
    judge_server.inject("500", count=1)
    with pytest.raises(JudgeFailed, match="could not compare 1 of 3 pairs"):
        judge.rewards([HELLO] * 3, ["Fine words.", "0k?", "##"])
    asked = judge_server.request_count
    rewards = judge.rewards([HELLO] * 3, ["Fine words.", "0k?", "##"])
    assert judge_server.request_count == asked + 1  # only the failed comparison is asked again
    assert rewards[0] > rewards[1] > rewards[2]


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def test_train_grpo_with_the_judge_records_the_run_and_every_call(
    db: Path, tiny_model: Path, judge_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    out = tmp_path / "grpo"
    result = run_cli(
        "train", "grpo", "--db", db, "--model", tiny_model, "--out", out,
        "--judge-model", "openai/judge", "--api-base", judge_server.base_url, "--judge-param", "api_key=x",
        "--judge-run", "judge-1", "--run", "sample-1", "--max-steps", 1, "--batch-size", 2,
        "--num-generations", 2, "--param", "max_completion_length=4", "--param", "eval_count=2",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert "trained grpo" in result.stderr and "mean_reward_before" in result.stderr
    assert (out / "config.json").exists()

    [run] = query_dicts(db, "SELECT * FROM training_runs")
    config, metrics = json.loads(run["config"]), json.loads(run["metrics"])
    assert run["kind"] == "grpo" and run["status"] == "done" and run["train_rows"] == 10
    assert config["judge"]["model"] == "openai/judge" and config["judge"]["params"] == {}  # no key stored
    assert metrics["steps"] == 1 and metrics["relative_reward"] is True and metrics["eval_rows"] == 2
    # Before vs after, head to head: the two means are P(before wins) and P(after wins).
    assert metrics["mean_reward_before"] + metrics["mean_reward_after"] == pytest.approx(1.0)
    assert metrics["reward_history"] == [pytest.approx(0.5)]  # a group's rewards average 0.5
    samples = query_dicts(
        db, "SELECT stage, prompt_id, response FROM policy_samples WHERE training_run_id = ?", [run["run_id"]]
    )
    assert sorted(s["stage"] for s in samples) == ["after", "after", "before", "before"]
    answers: dict[str, set[str]] = {}
    for s in samples:
        answers.setdefault(s["prompt_id"], set()).add(s["response"])
    changed = sum(len(texts) == 2 for texts in answers.values())  # the same answer before and after: a tie

    [label_run] = query_dicts(db, "SELECT run_id FROM runs WHERE name = 'judge-1'")
    calls = query_dicts(db, "SELECT count(*) AS n FROM calls WHERE run_id = ?", [label_run["run_id"]])
    labels = query_dicts(db, "SELECT count(*) AS n FROM pair_labels WHERE run_id = ?", [label_run["run_id"]])
    # One step compared 1 prompt's 2 completions, then each changed eval answer met its old self.
    assert labels[0]["n"] == calls[0]["n"] == judge_server.request_count == 1 + changed


def test_train_rloo_with_the_reward_model(tiny_model: Path, reward_model: Path, tmp_path: Path) -> None:
    from charter_trl import RewardModelScorer, RLOOOptions, train_rloo

    scorer = RewardModelScorer(reward_model)
    options = RLOOOptions(max_steps=1, batch_size=2, num_generations=2, max_completion_length=4, eval_count=2)
    prompts = [f"Can you help me with question {i}?" for i in range(10)]
    metrics = train_rloo(prompts, tiny_model, scorer, tmp_path / "rloo", options)
    assert metrics["kind"] == "rloo" and metrics["steps"] == 1 and metrics["relative_reward"] is False
    after = metrics["samples_after"]
    assert len(after) == 2 and metrics["mean_reward_after"] == pytest.approx(
        sum(s["reward"] for s in after) / 2
    )
    # The scorer reads the reward model exactly as charter_trl.score does.
    from charter_trl import score

    conversation = [*after[0]["prompt"], {"role": "assistant", "content": after[0]["response"]}]
    assert score(reward_model, [conversation])[0] == pytest.approx(after[0]["reward"], abs=1e-5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "needs --reward-model DIR (from charter train reward) or --judge-model MODEL"),
        (("--judge-model", "openai/judge", "--reward-model", "x"), "one of them"),
        (("--judge-model", "openai/judge", "--api-base", "localhost:1"), "--api-base 'localhost:1'"),
        (("--judge-model", "openai/j", "--judge-param", "api_key=x", "--batch-size", 3), "multiple of"),
        (
            ("--judge-model", "openai/j", "--judge-param", "api_key=x", "--judge-method", "x"),
            "--judge-method",
        ),
    ],
)
def test_bad_online_input_exits_2_and_writes_nothing(
    db: Path, tiny_model: Path, tmp_path: Path, args: tuple[Any, ...], message: str
) -> None:
    out = tmp_path / "out"
    result = run_cli("train", "grpo", "--db", db, "--model", tiny_model, "--out", out, *args)
    assert result.code == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and query_dicts(db, "SELECT * FROM training_runs") == []


# --------------------------------------------------------------------------------------------------
# serve-reward
# --------------------------------------------------------------------------------------------------


def _post(url: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serve_reward_with_the_reward_model_answers_openrlhf(reward_model: Path) -> None:
    from charter_trl.serve_reward import RewardServer, load_scorer

    scorer = load_scorer(reward_model=reward_model, judge=None, db=None)
    with RewardServer(scorer) as server:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/get_reward")
        queries = [
            "<|user|>hi<|end|><|assistant|>yes thanks hello world<|end|>",
            "<|user|>hi<|end|><|assistant|>no",
        ]
        # What OpenRLHF's remote_rm_fn posts: query, prompts and labels; it reads "rewards".
        status, answer = _post(server.url, {"query": queries, "prompts": ["p", "p"], "labels": ["", ""]})
        assert status == 200 and answer["rewards"] == answer["scores"]
        assert answer["rewards"] == pytest.approx(scorer.score_texts(queries))
        assert _post(server.url, {"query": []}) == (200, {"rewards": [], "scores": []})

        for body, message in [
            (b"{not json", "the request body is not JSON"),
            ({"prompts": ["p"]}, 'missing "query"'),
            ({"query": "one string"}, '"query" must be a list of strings'),
            ({"query": ["a", "b"], "prompts": ["a"]}, '"prompts" has 1 items but "query" has 2'),
        ]:
            status, answer = _post(server.url, body)
            assert status == 400 and message in answer["error"], answer


def test_serve_reward_with_the_judge(judge_server: FakeOpenAIServer, tmp_path: Path) -> None:
    from charter_trl.serve_reward import RewardServer, load_scorer

    db = tmp_path / "serve.duckdb"
    scorer = load_scorer(reward_model=None, judge=_settings(judge_server), db=db)
    with RewardServer(scorer) as server:
        prompts = ["Human: hi\n\nAssistant:"] * 2
        status, answer = _post(
            server.url, {"query": [prompts[0] + " Hello there.", prompts[1] + " #@!"], "prompts": prompts}
        )
        assert status == 200 and answer["rewards"][0] > 0.5 > answer["rewards"][1]
        status, answer = _post(server.url, {"query": ["Human: hi x"], "prompts": ["Human: hi"]})
        assert status == 400 and "only one response" in answer["error"]
        status, answer = _post(server.url, {"query": ["abc", "abd"], "prompts": ["x", "x"]})
        assert status == 400 and answer["error"] == "query 0 does not start with prompts[0]"
    with Store(db) as store:
        assert store.query("SELECT count(*) FROM pair_labels")[0][0] == 1


def test_serve_reward_bad_input_exits_2(tmp_path: Path, judge_server: FakeOpenAIServer) -> None:
    result = run_cli("serve-reward")
    assert result.code == 2 and "--reward-model DIR or --judge-model MODEL" in result.stderr
    result = run_cli("serve-reward", "--judge-model", "openai/j", "--api-base", judge_server.base_url)
    assert result.code == 2 and "give --db FILE" in result.stderr
    result = run_cli("serve-reward", "--reward-model", tmp_path / "missing")
    assert result.code == 2 and "--reward-model" in result.stderr
