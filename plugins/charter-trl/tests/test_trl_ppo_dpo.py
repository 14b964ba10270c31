"""PPO against the tiny reward model, and DPO."""

from __future__ import annotations

import json
from pathlib import Path

from charter_trl import DPOOptions, PPOOptions, train_dpo, train_ppo
from charter_trl_testdata import make_pairs
from transformers import AutoModelForCausalLM, AutoTokenizer


def _loads_and_generates(path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids["input_ids"].shape[1]


def test_ppo_runs_and_reports_reward_before_and_after(
    tiny_model: Path, reward_model: Path, tmp_path: Path
) -> None:
    prompts = [p["prompt"] for p in make_pairs(10)]
    out = tmp_path / "ppo"
    options = PPOOptions(max_steps=2, batch_size=2, response_length=8, num_ppo_epochs=1, eval_count=2)
    metrics = train_ppo(prompts, tiny_model, reward_model, out, options)
    json.dumps(metrics)

    assert metrics["steps"] == 2 and metrics["episodes"] == 4
    assert metrics["train_rows"] == 8 and metrics["eval_rows"] == 2 and not metrics["eval_on_train_prompts"]
    assert isinstance(metrics["mean_reward_before"], float) and isinstance(
        metrics["mean_reward_after"], float
    )
    assert len(metrics["samples_before"]) == len(metrics["samples_after"]) == 2
    sample = metrics["samples_after"][0]
    assert set(sample) == {"prompt_id", "prompt", "response", "reward"} and isinstance(
        sample["response"], str
    )
    assert isinstance(metrics["final_kl"], float)
    _loads_and_generates(out)
    # The shipped tokenizer pads on its original side, not PPO's left padding.
    assert (
        AutoTokenizer.from_pretrained(out).padding_side
        == AutoTokenizer.from_pretrained(tiny_model).padding_side
    )


def test_ppo_with_explicit_eval_prompts(tiny_model: Path, reward_model: Path, tmp_path: Path) -> None:
    prompts = ["How do I stay safe online?", "Can you help me with my homework?"]
    metrics = train_ppo(
        prompts,
        tiny_model,
        reward_model,
        tmp_path / "ppo",
        PPOOptions(max_steps=1, batch_size=2, response_length=4, num_ppo_epochs=1),
        eval_prompts=[{"prompt_id": "p-1", "prompt": "hello"}],
    )
    assert metrics["train_rows"] == 2 and metrics["eval_rows"] == 1
    before = metrics["samples_before"][0]
    assert before["prompt_id"] == "p-1" and before["prompt"] == [{"role": "user", "content": "hello"}]


def test_dpo_runs_and_writes_a_loadable_model(tiny_model: Path, tmp_path: Path) -> None:
    pairs = make_pairs(12)
    for pair in pairs[:4]:
        pair["chosen_prob"] = 0.55
    out = tmp_path / "dpo"
    metrics = train_dpo(
        pairs, tiny_model, out, DPOOptions(max_steps=3, batch_size=4, logging_steps=1, min_chosen_prob=0.6)
    )
    json.dumps(metrics)
    assert metrics["steps"] == 3 and metrics["train_rows"] == 8 and metrics["dropped_rows"] == 4
    assert len(metrics["loss_history"]) == 3
    _loads_and_generates(out)
